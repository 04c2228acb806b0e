"""A fixed list of jobs shared by worker processes through an Optuna storage: each job runs once, on whichever worker
takes it; a job whose worker died (silent heartbeat) is run again by another. ``resbudget study --storage`` spreads a
study's experiment x seed runs this way."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState

from .._defaults import HEARTBEAT_SECONDS
from .engine import SearchError, _quiet, open_storage


def _open_queue(name: str, storage: optuna.storages.RDBStorage, keys: list[str]) -> optuna.Study:
    try:
        study = optuna.create_study(study_name=name, storage=storage)
    except optuna.exceptions.DuplicatedStudyError:  # made by an earlier or another worker
        study = optuna.load_study(study_name=name, storage=storage)
        for _ in range(100):
            if "jobs" in study.user_attrs:
                break
            time.sleep(0.1)
        if study.user_attrs.get("jobs") != keys:
            raise SearchError(f"the storage holds a queue {name!r} of other jobs (another --only, --seeds or "
                              "--epochs?); give the same options to every worker") from None
        return study
    for key in keys:
        study.enqueue_trial({"job": key}, user_attrs={"queued": True, "job": key})
    study.set_user_attr("jobs", keys)
    return study


def run_queue(name: str, storage_url: str, jobs: list[dict[str, Any]], work: Callable[[dict[str, Any]], dict],
              *, heartbeat: float = HEARTBEAT_SECONDS, say: Callable[[str], None] = print) -> dict[str, dict]:
    """Run ``work(job)`` for the jobs of the queue ``name`` that no worker has done, until none is left (waiting, or
    running on a live worker); return every finished job's result by its JSON key. Results must be JSON data."""
    optuna.logging.set_verbosity(logging.WARNING)
    keys = [json.dumps(j, sort_keys=True) for j in jobs]
    if len(set(keys)) != len(keys):
        raise SearchError("the jobs of a queue must differ")
    study = _open_queue(name, open_storage(storage_url, heartbeat), keys)
    taken = {t.user_attrs.get("job") for t in study.get_trials(deepcopy=False) if t.state in (
        TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)}
    for key in keys:  # a job that failed, or was cut short by Ctrl-C, goes back in the queue
        if key not in taken:
            study.enqueue_trial({"job": key}, user_attrs={"queued": True, "job": key})

    def objective(trial: optuna.Trial) -> float:
        key = trial.suggest_categorical("job", keys)
        if not trial.user_attrs.get("queued"):  # the queue ran dry between the look and the take
            trial.set_user_attr("empty", True)
            raise optuna.TrialPruned()
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        trial.set_user_attr("result", work(json.loads(key)))
        return 0.0

    while True:
        with _quiet():
            fail_stale_trials(study)  # a dead worker's job goes back in the queue (the retry callback)
        trials = study.get_trials(deepcopy=False)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        if not waiting:
            if not running:
                break
            time.sleep(max(1.0, heartbeat / 2))  # another worker's job: it finishes, or its heartbeat stops
            continue
        with _quiet():
            study.optimize(objective, n_trials=1, catch=(RuntimeError,))
    results = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        results[t.params["job"]] = t.user_attrs["result"]
    missing = [k for k in keys if k not in results]
    if missing:
        say(f"{len(missing)} job(s) of {name!r} failed (e.g. {missing[0]}); run the command again to retry them")
    return results
