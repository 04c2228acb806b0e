"""A search over nets and recipes with Optuna: a TPE sampler, successive halving on the per-epoch validation accuracy,
and a storage that any number of worker processes share.

Every trial trains on the training set minus a validation split and is scored on that split (with the recipe's TTA
views): the test set is never evaluated. The score is the final validation accuracy under the parameter budget (the
study's question) and, with a time limit per trial, within that time on this machine (the fast-recipe question: a trial
whose run would end past the limit, at the pace of its last epoch, is stopped after that epoch).

Storage: an SQLite file in the search folder by default; any SQLAlchemy URL (``postgresql+psycopg://...`` for workers
on several machines). Each worker beats a heartbeat into the storage while it trains; a trial whose worker died is
marked failed by the next worker that starts a trial, and run again from the start (at most twice). A trial cut short
by Ctrl-C is run again when the search resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import socket
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._rdb import models as _rdb_models
from optuna.storages._rdb.storage import _create_scoped_session as _rdb_session
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import selectinload

from .._defaults import HEARTBEAT_SECONDS
from ..data import Dataset, load_dataset
from ..models import DEFAULT_BUDGET
from ..models.budget import MAX_PARAMS
from ..train import Config, ConfigError, DivergedError, config_to_dict, train_run
from ..train.config import LIMITS, MAX_SEED
from ..train.deadline import TimeLimit
from ..train.setup import fit_to_data
from .space import Rejected, Space, check_trial, fill_budget, load_space, trial_config

PRUNE_FIRST_AT = 25  # % of a trial's epochs: successive halving's first rung, then 50%, then 100%
MAX_RETRIES = 2  # runs of a trial whose worker died, after the first
MAX_REJECTED_IN_A_ROW = 200


class SearchError(ValueError):
    """A search that cannot start or go on (its storage, its settings)."""


@dataclass(frozen=True)
class SearchSettings:
    """What every worker of one search shares, stored with the search so later workers need only its name."""

    space: Space
    budget: int = DEFAULT_BUDGET
    macs_budget: int | None = None
    trial_seconds: float | None = None  # None: no time limit (the parameter-budget objective)
    val_size: int = 5000
    seed: int = 0
    fill: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.budget <= MAX_PARAMS:
            raise SearchError(f"the parameter budget must be between 1 and {MAX_PARAMS:,}, got {self.budget}")
        if self.macs_budget is not None and self.macs_budget < 1:
            raise SearchError(f"the MACs budget must be positive, got {self.macs_budget}")
        if self.trial_seconds is not None and not (self.trial_seconds > 0 and math.isfinite(self.trial_seconds)):
            raise SearchError(f"the time per trial must be a positive number of seconds, got {self.trial_seconds}")
        high = LIMITS["data.val_size"].high
        if not 100 <= self.val_size <= high:
            raise SearchError(f"a search needs a validation split of 100 to {high:,} images, got {self.val_size}")
        if not 0 <= self.seed <= MAX_SEED:
            raise SearchError(f"the search's seed must be between 0 and {MAX_SEED:,}, got {self.seed}")

    def to_dict(self) -> dict[str, Any]:
        return {"space": self.space.to_dict(), "budget": self.budget, "macs_budget": self.macs_budget,
                "trial_seconds": self.trial_seconds, "val_size": self.val_size, "seed": self.seed, "fill": self.fill}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSettings:
        return cls(**{**data, "space": Space.from_dict(data["space"])})

    def describe(self) -> str:
        time_limit = f", at most {self.trial_seconds / 60:g} min per trial" if self.trial_seconds else ""
        macs = f", {self.macs_budget:,} MACs" if self.macs_budget else ""
        return (f"validation accuracy ({self.val_size:,} held-out training images) under {self.budget:,} "
                f"parameters{macs}{time_limit}")


def default_storage(out_dir: str | os.PathLike, file: str = "search.db") -> str:
    """The SQLite storage in a folder: a search's ``search.db``, a study's ``queue.db`` (with ``--jobs``)."""
    return f"sqlite:///{Path(out_dir).resolve() / file}"


def open_storage(url: str, heartbeat: float = HEARTBEAT_SECONDS) -> RDBStorage:
    """The shared storage: heartbeats every ``heartbeat`` s; a trial silent for 3 beats is failed and retried."""
    try:
        for attempt in range(5):
            try:
                with _quiet():
                    return _Storage(url, heartbeat_interval=max(1, round(heartbeat)),
                                      grace_period=max(3, round(3 * heartbeat)),
                                      heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                                          max_retry=MAX_RETRIES),
                                      engine_kwargs={"pool_pre_ping": True})
            except (IntegrityError, OperationalError) as e:
                # workers started together on a new database both create its tables: one wins, the other retries
                if attempt == 4 or (isinstance(e, OperationalError) and "already exists" not in str(e)):
                    raise
                time.sleep(0.5 * (attempt + 1))
    except (SQLAlchemyError, ImportError, ValueError) as e:  # a bad URL, a missing driver, a server not there
        raise SearchError(f"cannot open the search storage {_hide_password(url)}: "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


class _Storage(RDBStorage):
    """Optuna's storage, with one more kind of stale trial: one opened by a worker that died before its first
    heartbeat (optuna opens a trial an instant before it starts the trial's heartbeat). Optuna never fails such a
    trial, so the other workers would wait on it forever. Here it is stale once this process has seen it running and
    silent for the grace period, timed on this process's own clock (the workers' clocks may differ). Made by
    :func:`open_storage`, which always sets the grace period."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._silent_since: dict[int, float] = {}

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = super()._get_stale_trial_ids(study_id)
        with _rdb_session(self.scoped_session) as session:
            running = (session.query(_rdb_models.TrialModel)
                       .options(selectinload(_rdb_models.TrialModel.heartbeats))
                       .filter(_rdb_models.TrialModel.state == TrialState.RUNNING)
                       .filter(_rdb_models.TrialModel.study_id == study_id).all())
            silent = [t.trial_id for t in running if not t.heartbeats]
        now = time.monotonic()
        self._silent_since = {i: self._silent_since.get(i, now) for i in silent}
        return stale + [i for i, since in self._silent_since.items() if now - since > self.grace_period]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Optuna marks heartbeats, retries and grouped TPE as experimental: used on purpose here, so not warned of."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield


def _hide_password(url: str) -> str:
    head, sep, tail = url.partition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, user = head.rpartition("//")
    return f"{scheme}//{user.split(':', 1)[0]}:***@{tail}"


def open_search(name: str, storage: RDBStorage, settings: SearchSettings | None, create: bool = True) -> tuple[
        optuna.Study, SearchSettings]:
    """The search ``name`` in ``storage``: created with ``settings`` (if ``create``), or loaded, when its stored
    settings must equal any given ones (a worker that joins needs none)."""
    if not name or any(c in name for c in "/\\\n"):
        raise SearchError(f"a search name must be a non-empty word without slashes, got {name!r}")
    existing = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if name not in existing and not create:
        have = ", ".join(sorted(existing)) or "none"
        raise SearchError(f"no search {name!r} in its storage (searches there: {have}); pass --storage URL if it "
                          "runs elsewhere")
    if name in existing:
        study = optuna.load_study(study_name=name, storage=storage)
        for _ in range(100):  # a search another worker is creating gets its settings right after it exists
            if "settings" in study.user_attrs:
                break
            time.sleep(0.1)
        else:
            raise SearchError(f"search {name!r} in this storage has no settings: it was not made by resbudget search")
        stored = SearchSettings.from_dict(json.loads(study.user_attrs["settings"]))
        if settings is not None and settings.to_dict() != stored.to_dict():
            changed = sorted(k for k, v in settings.to_dict().items() if stored.to_dict()[k] != v)
            raise SearchError(f"search {name!r} already exists with other settings ({', '.join(changed)} differ); "
                              "join it without those options, or name a new search")
        return study, stored
    if settings is None:
        settings = SearchSettings(space=load_space())
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:  # another worker created it a moment ago
        return open_search(name, storage, settings)
    study.set_user_attr("settings", json.dumps(settings.to_dict()))
    base = settings.space.base_params()
    if base is not None:  # the base recipe's draw is the first trial: every search measures what it has to beat
        study.enqueue_trial(base, user_attrs={"base_recipe": True})
    return study, settings


def sampler_for(study: optuna.Study, settings: SearchSettings) -> optuna.samplers.TPESampler:
    """TPE seeded with the search seed and the number of trials so far: one worker started on the same storage
    draws the same trials; a worker joining others mid-trial draws afresh (seeded from the OS), so that two workers
    never draw in step."""
    trials = study.get_trials(deepcopy=False)
    running = any(t.state == TrialState.RUNNING for t in trials)
    seed = None if running else settings.seed + len(trials)
    with _quiet():
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5, multivariate=True, group=True,
                                          constant_liar=True)


def trained(trial: FrozenTrial) -> bool:
    """Trials that count towards the search's number: finished or pruned, not rejected from the spec (nor left
    untrained because enough trials were already done or running)."""
    return (trial.state in (TrialState.COMPLETE, TrialState.PRUNED) and "rejected" not in trial.user_attrs
            and "surplus" not in trial.user_attrs)


def under_way(trials: list[FrozenTrial], before: int | None = None) -> int:
    """The trials that count or will count unless they fail: trained, or running now (all workers); with
    ``before``, only those numbered below it (created earlier: the storage numbers trials in creation order)."""
    return sum(1 for t in trials if (before is None or t.number < before)
               and (trained(t) or (t.state == TrialState.RUNNING and "surplus" not in t.user_attrs)))


def _requeue_interrupted(study: optuna.Study) -> int:
    """Run again the trials a Ctrl-C cut short (marked ``interrupted``) that were not yet run again."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials} | {t.system_attrs.get("failed_trial") for t in trials}
    count = 0
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get("interrupted") and t.number not in retried:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            count += 1
    return count


class Objective:
    """One trial: draw, check from the spec, train on the training set minus the validation split, score."""

    def __init__(self, name: str, settings: SearchSettings, out_dir: Path, data: Dataset, trials: int):
        self.name, self.settings, self.out_dir, self.data, self.trials = name, settings, out_dir, data, trials

    def __call__(self, trial: optuna.Trial) -> float:
        s = self.settings
        # Two workers can both see one trial missing and both start one: the later-numbered one gives way, so the
        # search ends with exactly the number of trials asked for.
        if under_way(trial.study.get_trials(deepcopy=False), before=trial.number) >= self.trials:
            trial.set_user_attr("surplus", True)
            raise optuna.TrialPruned("enough trials are done or running on other workers")
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        try:
            values = s.space.suggest(trial)
            config = trial_config(s.space, values, val_size=s.val_size, seed=s.seed, budget=s.budget)
            config = dataclasses.replace(config, experiment=dataclasses.replace(
                config.experiment, name=f"{self.name}-trial-{trial.number:04d}"))
            config = fit_to_data(config, self.data)  # the head the data's classes need counts in the budget
            if s.fill:
                config = dataclasses.replace(config, model=fill_budget(config.model, s.budget, s.macs_budget))
            params, macs = check_trial(config, s.macs_budget)
            if s.trial_seconds is not None:
                check_first_epoch(trial.study, macs, trained_images(config, len(self.data.train)), s.trial_seconds)
        except Rejected as e:
            trial.set_user_attr("rejected", str(e))
            raise optuna.TrialPruned(str(e)) from None
        run_dir = self.out_dir / "trials" / f"trial-{trial.number:04d}"
        trial.set_user_attr("params", params)
        trial.set_user_attr("macs", macs)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("config", config_to_dict(config))
        epochs, start = config.train.epochs, time.perf_counter()
        ends = [start]

        def on_epoch_end(epoch: int, row: dict[str, Any]) -> None:
            now = time.perf_counter()
            elapsed, last = now - start, now - ends[-1]
            ends.append(now)
            trial.set_user_attr("seconds", round(elapsed, 2))
            trial.set_user_attr("epochs_done", epoch)
            if epoch == 1:  # this machine's speed, for the next trials' first-epoch check
                trial.set_user_attr("mac_images_per_s", macs * row["images_per_s"])
            if epoch == epochs or row["stopped"]:  # the last epoch, or stopped at the time limit: the run ends
                return
            trial.report(row["val_acc"], round(100 * epoch / epochs))
            if trial.should_prune():
                trial.set_user_attr("stopped", f"pruned after epoch {epoch} of {epochs} (validation "
                                               f"{100 * row['val_acc']:.2f}%)")
                raise optuna.TrialPruned()
            # the end of the run, from the last epoch's time (after the first, drop_easy skips part of the images)
            per_epoch = last * (1 - config.train.drop_easy) if epoch == 1 else last
            expected = elapsed + (epochs - epoch) * per_epoch
            if s.trial_seconds is not None and expected > s.trial_seconds:
                trial.set_user_attr("stopped", f"over time: stopped after epoch {epoch} of {epochs}, the run would "
                                               f"end after about {expected:.0f} s")
                raise optuna.TrialPruned()

        try:
            limit = TimeLimit(s.trial_seconds, start) if s.trial_seconds is not None else None
            summary = train_run(config, run_dir, data=self.data.without_test(), progress=False,
                                on_epoch_end=on_epoch_end, time_limit=limit)
        except DivergedError as e:  # a result of the drawn recipe, and as bad as results go
            trial.set_user_attr("stopped", f"diverged: {e}")
            raise optuna.TrialPruned(str(e)) from None
        except ConfigError as e:  # what only the data's size shows (a batch larger than what drop_easy keeps)
            trial.set_user_attr("rejected", str(e))
            raise optuna.TrialPruned(str(e)) from None
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        except Exception as e:  # recorded, then optuna fails the trial (or the search, if not caught)
            trial.set_user_attr("error", " ".join(f"{type(e).__name__}: {e}".split()))
            raise
        trial.set_user_attr("seconds", summary.wall_seconds)
        trial.set_user_attr("val_accuracy", summary.val_accuracy)
        if summary.temperature is not None:  # fitted on the trial's validation split: its confirm runs use it
            trial.set_user_attr("temperature", summary.temperature)
        if summary.stopped:
            trial.set_user_attr("stopped", f"over time: {summary.stopped}")
            raise optuna.TrialPruned()
        if s.trial_seconds is not None and summary.wall_seconds > s.trial_seconds:
            trial.set_user_attr("stopped", f"over time: {summary.wall_seconds:.0f} s")
            raise optuna.TrialPruned()
        return summary.finished_accuracy


def trained_images(config: Config, available: int) -> int:
    """The images a trial's first epoch trains on, of the ``available`` training images: those left beside its
    validation split, at most ``data.train_limit`` of them (as the run's own splits are carved)."""
    left = available - config.data.val_size
    return min(left, config.data.train_limit) if config.data.train_limit else left


def check_first_epoch(study: optuna.Study, macs: int, train_images: int, limit: float) -> None:
    """:class:`Rejected` if a net of ``macs`` per image could not train one epoch on ``train_images`` within
    ``limit`` seconds, at the best speed (multiply-accumulates times training images per second) any trial of this
    search reached on this machine in its first epoch. The optimistic speed rejects only what surely does not fit;
    the time limit inside the run stops the rest. Before any trial has run here, nothing is rejected."""
    host = socket.gethostname()
    rates = [t.user_attrs["mac_images_per_s"] for t in study.get_trials(deepcopy=False)
             if t.user_attrs.get("host") == host and "mac_images_per_s" in t.user_attrs]
    if rates and (seconds := macs * train_images / max(rates)) > limit:
        raise Rejected(f"its first epoch alone would take about {seconds:.0f} s on this machine ({macs / 1e6:.1f}M "
                       f"MACs per image at the best speed a trial reached here), over the {limit:.0f} s a trial may "
                       "take")


def trial_line(trial: FrozenTrial, best: FrozenTrial | None) -> str:
    """One line per finished trial: its value, size, time, and the best so far."""
    u = trial.user_attrs
    head = f"trial {trial.number:>3}"
    if "rejected" in u:
        return f"{head} rejected: {u['rejected']}"
    size = f"{u['params']:,} params" if "params" in u else ""
    took = f"{u['seconds']:.0f} s" if "seconds" in u else ""
    if trial.state == TrialState.COMPLETE:
        what = f"val {100 * trial.value:.2f}%"
    elif trial.state == TrialState.PRUNED:
        what = u.get("stopped", "pruned")
    else:  # failed: the error, in one line (optuna's own log of it is silenced)
        what = f"failed: {u['error']}" if "error" in u else trial.state.name.lower()
    best_text = f"best {100 * best.value:.2f}% (trial {best.number})" if best is not None else "best -"
    return "  ".join(x for x in (head, what, size, took, "|", best_text) if x)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return max(done, key=lambda t: t.value) if done else None


def run_search(name: str, *, trials: int, out_dir: str | os.PathLike, storage: str | None = None,
               settings: SearchSettings | None = None, data: Dataset | str | os.PathLike | None = None,
               heartbeat: float = HEARTBEAT_SECONDS, stream: TextIO | None = None) -> optuna.Study:
    """Work on the search ``name`` until it holds ``trials`` trained trials (all workers together), then return.

    ``settings`` create the search (or must equal the stored ones); ``storage`` is an SQLAlchemy URL, by default an
    SQLite file in ``out_dir``. Trial run folders go to ``out_dir/trials/``."""
    if trials < 1:
        raise SearchError(f"--trials must be >= 1, got {trials}")
    out_dir = Path(out_dir)
    if storage is None:
        out_dir.mkdir(parents=True, exist_ok=True)
        storage = default_storage(out_dir)
    optuna.logging.set_verbosity(logging.ERROR)  # a trial's end is one line of ours; a Ctrl-C, one line of the CLI
    study, settings = open_search(name, open_storage(storage, heartbeat), settings)
    requeued = _requeue_interrupted(study)

    def say(text: str) -> None:
        print(text, file=stream, flush=True)

    done = sum(trained(t) for t in study.get_trials(deepcopy=False))
    say(f"search {name!r}: {settings.describe()}; {done} of {trials} trials done"
        + (f", {requeued} interrupted trial(s) queued again" if requeued else ""))
    if done >= trials:
        return study
    data = load_dataset(data, int(settings.space.base["model"].get("image_size", 32)))
    rejected_in_a_row = 0

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        nonlocal rejected_in_a_row
        if "surplus" in trial.user_attrs:
            study.stop()
            return
        say(trial_line(trial, best_trial(study)))
        rejected_in_a_row = rejected_in_a_row + 1 if "rejected" in trial.user_attrs else 0
        if rejected_in_a_row >= MAX_REJECTED_IN_A_ROW:
            study.stop()
            raise SearchError(f"{rejected_in_a_row} drawn configs in a row were rejected from their specs: narrow "
                              "the space (--space) or raise the budget"
                              + (" or the time per trial" if settings.trial_seconds is not None else ""))
        if under_way(study.get_trials(deepcopy=False)) >= trials:  # done, or the rest running on other workers
            study.stop()

    study.sampler = sampler_for(study, settings)
    study.pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=PRUNE_FIRST_AT, reduction_factor=2)
    objective = Objective(name, settings, out_dir, data, trials)
    with contextlib.redirect_stderr(stream) if stream is not None else contextlib.nullcontext():
        # Trials until enough are done or running; then wait for the running ones. One that fails, or whose worker
        # dies (its heartbeat silent for the grace period: this worker fails it and runs the retry), leaves a trial
        # missing, and this worker starts it: no search ends short, none with a trial left running and never retried.
        while True:
            trials_now = study.get_trials(deepcopy=False)
            if any(t.state == TrialState.WAITING for t in trials_now):
                study.optimize(objective, n_trials=1, callbacks=[after_trial], catch=(RuntimeError,),
                               gc_after_trial=True)
            elif under_way(trials_now) < trials:
                study.optimize(objective, callbacks=[after_trial], catch=(RuntimeError,), gc_after_trial=True)
            elif any(t.state == TrialState.RUNNING for t in trials_now):
                optuna.storages.fail_stale_trials(study)
                time.sleep(max(0.2, heartbeat / 4))
            else:
                break
    return study
