"""A training run's story: start or resume it in its folder (train/folder.py), prepare the net and the data
(train/setup.py), :func:`fit`, the final evaluation and temperature (train/temperature.py), and the summary
(train/summary.py). ``train_run`` is what ``resbudget train`` calls.

A run folder holds ``config.toml`` (the complete resolved config), ``metrics.jsonl`` / ``metrics.csv``,
``model.safetensors`` (after every epoch), ``state.safetensors`` while unfinished (what ``--resume`` needs) and, at
the end, ``summary.json``. Every file is written atomically.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import torch

from .._io import write_text
from ..data import Dataset, Split, load_dataset
from ..models import ResNet, check_spec
from .calibration import calibration_metrics
from .checkpoint import CheckpointError, input_metadata, load_state, save_state, save_weights
from .config import Config, ConfigError, TrainConfig, config_to_toml
from .deadline import RESERVE_SECONDS, Evaluations, TimeLimit, first_step_seconds, seconds_per_view, tta_that_fits
from .evaluate import eval_options, evaluate, select_device, view_logits
from .fit import DivergedError, TrainingState, fit
from .folder import RunFolderError, check_folder, hold_run_folder, open_run_folder
from .metrics import MetricsLog, Progress
from .provenance import git_state
from .setup import Prepared, fit_to_data, prepare_run
from .summary import Divergence, RunSummary, read_summary, run_notes, summarize_run, write_summary
from .temperature import run_calibration
from .tta import VIEWS

EpochHook = Callable[[int, dict[str, Any]], None]


def evaluate_epoch(model: ResNet, config: Config, val: Split | None, test: Split | None) -> dict[str, Any]:
    """The held-out numbers of an epoch's row: validation every epoch (if there is a split), test every epoch only
    where asked (curves) or watched (the study's schedule). The result is the finished net's, after the last epoch."""
    row: dict[str, Any] = {"val_loss": None, "val_acc": None, "test_loss": None, "test_acc": None}
    if val is not None:
        r = evaluate(model, val, **eval_options(config.train))
        row.update(val_loss=r["loss"], val_acc=r["accuracy"])
    if test is not None and (config.train.eval_test_every_epoch or config.watches_test):
        r = evaluate(model, test, **eval_options(config.train))
        row.update(test_loss=r["loss"], test_acc=r["accuracy"])
    return row


def final_evaluation(model: ResNet, train: TrainConfig, held_out: Split, which: str, tta: str | None = None
                     ) -> dict[str, Any]:
    """The finished net on its held-out split (``which``: "test", or "validation" for a search trial), with the
    recipe's TTA (or ``tta``, where a time limit cut it) from the same pass, and the seconds it took (counted in GPU
    speed records' time). ``logits``: the mean logits over the TTA views, what every command's probabilities come
    from; ``labels``: the split's."""
    tta = tta or train.tta
    start = time.perf_counter()
    views = view_logits(model, held_out, tta=tta, **eval_options(train))
    if held_out.images.device.type == "cuda":
        torch.cuda.synchronize(held_out.images.device)
    seconds = time.perf_counter() - start
    alone, logits = calibration_metrics(views[0], held_out.labels), views.mean(0)
    with_tta = float((logits.argmax(1) == held_out.labels).double().mean()) if tta != "none" else None
    return {"split": which, "loss": alone["nll"], "accuracy": alone["accuracy"], "accuracy_tta": with_tta,
            "tta": tta, "seconds": seconds, "logits": logits, "labels": held_out.labels}


def train_run(config: Config | None, out_dir: str | os.PathLike, *, data: Dataset | str | os.PathLike | None = None,
              resume: bool = False, allow_over_budget: bool = False, progress: bool | TextIO = True,
              on_epoch_end: EpochHook | None = None, time_limit: TimeLimit | None = None) -> RunSummary:
    """Train ``config`` into the run folder ``out_dir`` and return its summary (also written as summary.json).

    ``data``: the data set, loaded, or the folder it is in (None: $RESBUDGET_DATA_DIR, else the cache folder),
    verified. Data without a test split (:meth:`Dataset.without_test`, a search trial) is never scored on one: the
    run needs a validation split, whose final accuracy (with TTA) is the result. ``resume``: continue the run in
    ``out_dir`` from its last finished epoch. ``progress``: a line per epoch (True: on stderr; a stream: there; False:
    only warnings). ``on_epoch_end(epoch, row)`` after each epoch's files are written.

    ``time_limit``: training stops between two steps when what is left would no longer cover the evaluations still
    to come (estimated from the speed so far); the run then ends as any other, its summary saying where it stopped
    (``stopped``) and how its recipe was chosen (``time_plan``)."""
    wall_start = time_limit.started if time_limit is not None else time.perf_counter()
    out_dir = Path(out_dir)
    if config is not None:  # the head sized for the data's classes before the config meets a stored one
        config = fit_to_data(config, data)
    config = open_run_folder(out_dir, config, resume)
    git_state()  # read now, not when the run ends
    show = Progress(config.train.epochs, stream=None if isinstance(progress, bool) else progress,
                    enabled=progress is not False)
    device = select_device(config.train.device)
    params = check_spec(config.model, config.train.budget, allow_over_budget)  # from the spec alone, before building
    if isinstance(data, Dataset) and data.test is None and (not config.data.val_size or config.watches_test):
        raise ConfigError("a run that may not see the test set needs a validation split (data.val_size > 0) and "
                          "a schedule that does not watch the test set")
    with hold_run_folder(out_dir, resume):
        if resume and (out_dir / "summary.json").is_file():  # written last: the run has ended
            return _ended(out_dir, config, show)
        data = load_dataset(data, config.model.image_size)
        if len(data.classes) != config.model.num_classes:
            raise ConfigError(f"{out_dir} holds a run of a net for {config.model.num_classes} classes; this data "
                              f"set has {len(data.classes)}: resume it on the data it was started on")
        state_path = out_dir / "state.safetensors"
        saved = load_state(state_path) if resume and state_path.is_file() else None
        run = prepare_run(config, params, data, device)
        return _RunInFolder(run, out_dir, show, wall_start, time_limit).train(saved, on_epoch_end)


def _ended(out_dir: Path, config: Config, show: Progress) -> RunSummary:
    """A run resumed after its end: its summary, or the divergence it ended in, again."""
    summary = read_summary(out_dir / "summary.json")
    if summary.diverged is not None:
        where = summary.diverged
        raise DivergedError(where.reason, where.epoch, where.step, summary)
    show.message(f"{out_dir} is already finished ({config.train.epochs} epochs); nothing to resume")
    return summary


def evaluations_after(run: Prepared, per_view: float) -> Evaluations:
    """What a run scores after its current epoch's last step: that epoch's held-out numbers, the final evaluation
    with the TTA views, and the temperature's fit on the validation split (which reuses the final evaluation where
    that is on the validation split), at ``per_view`` seconds an image and view."""
    t = run.config.train
    per_epoch = len(run.val) if run.val is not None else 0
    if run.test is not None and (t.eval_test_every_epoch or run.config.watches_test):
        per_epoch += len(run.test)
    fit_images = len(run.val) if run.val is not None and run.test is not None else 0
    return Evaluations(per_view, per_epoch, len(run.held_out[0]), fit_images)


class _RunInFolder:
    """The run itself, in a folder held by :func:`hold_run_folder`: train (or go on training) the prepared net, then
    evaluate it, calibrate it where it has a validation split, and write its weights and summary once."""

    def __init__(self, run: Prepared, out_dir: Path, show: Progress, wall_start: float,
                 time_limit: TimeLimit | None) -> None:
        self.run, self.out_dir, self.show = run, out_dir, show
        self.config = run.config
        self.wall_start, self.time_limit = wall_start, time_limit
        self.tta = self.config.train.tta
        self.input = input_metadata(run.data.classes, run.data.norm)  # recorded with the weights
        self.evaluations: Evaluations | None = None
        self.state: TrainingState | None = None
        self.log: MetricsLog | None = None

    def wall(self) -> float:
        """The run's time so far, over all its processes."""
        return self.state.wall_before + time.perf_counter() - self.wall_start

    def train(self, saved: dict[str, Any] | None, on_epoch_end: EpochHook | None) -> RunSummary:
        run, config, out_dir = self.run, self.config, self.out_dir
        if self.time_limit is not None:
            self.fit_evaluations_in_time(saved)  # may refuse the run, before anything is written
        if saved is None and not (out_dir / "config.toml").is_file():
            write_text(out_dir / "config.toml", config_to_toml(config))
        for note in [f"warning: {w}" for w in run.model_summary.warnings] + [f"note: {n}" for n in run_notes(config)]:
            self.show.message(note)
        self.state = state = TrainingState.start(config, run.model, len(run.train))
        if saved is not None:
            state.load_state_dict(saved)
            self.show.message(f"resuming {out_dir} after epoch {state.epoch}")
        self.log = MetricsLog(out_dir, keep_until_epoch=state.epoch)
        try:
            fit(config, run.train, state,
                evaluate_epoch=lambda epoch: evaluate_epoch(run.model, config, run.val, run.test),
                monitor=config.monitored, end_epoch=lambda state, row: self.end_epoch(row, on_epoch_end),
                show=self.show, stop=self.over_time if self.time_limit is not None else None)
        except DivergedError as e:  # a result: recorded as the run's end, the last finite epoch's files kept
            check_folder(out_dir)
            e.summary = self.summary(None, None, Divergence(e.epoch, e.step, str(e)))
            write_summary(out_dir / "summary.json", e.summary)
            raise
        return self.finish()

    def fit_evaluations_in_time(self, saved: dict[str, Any] | None) -> None:
        """Time the evaluations on the net, and cut their TTA views to what the limit holds (or refuse the run)."""
        run, limit = self.run, self.time_limit
        per_view = seconds_per_view(run.model, run.held_out[0], self.config.train)
        self.evaluations = evaluations_after(run, per_view)
        spent = (float(saved["wall_seconds"]) if saved is not None else 0.0) + time.perf_counter() - self.wall_start
        self.tta = tta_that_fits(self.evaluations, self.tta, limit.seconds - spent - RESERVE_SECONDS, limit.seconds,
                                 first_step_seconds(per_view, self.config.train.batch_size))
        if self.tta != self.config.train.tta:
            self.show.message(f"note: the time limit holds the final evaluation to {self.tta} TTA "
                              f"({VIEWS[self.tta]} view(s) of {VIEWS[self.config.train.tta]})")

    def end_epoch(self, row: dict[str, Any], on_epoch_end: EpochHook | None) -> None:
        state, out_dir = self.state, self.out_dir
        check_folder(out_dir)
        try:
            self.log.append(row)
            with state.evaluated():  # the weights the epoch's numbers are of: what --allow-unfinished reads
                save_weights(self.run.model, self.config.model, out_dir / "model.safetensors",
                             extra={"epoch": str(state.epoch), **self.input})
            save_state(state.state_dict(wall_seconds=self.wall()), out_dir / "state.safetensors")
        except (CheckpointError, OSError) as e:
            raise RunFolderError(f"{e}; the run stops, its folder holding the last epoch it saved: make room, then "
                                 f"continue it with resbudget train --resume --out {out_dir}") from None
        self.show.epoch(row)
        if on_epoch_end is not None:
            on_epoch_end(state.epoch, row)

    def over_time(self, images_per_s: float) -> str | None:
        """After a step: None while there is room for the next one and the evaluations, else why training stops."""
        next_step = self.config.train.batch_size / images_per_s
        limit = self.time_limit.seconds
        if self.wall() + next_step + RESERVE_SECONDS + self.evaluations.seconds(VIEWS[self.tta]) < limit:
            return None
        return (f"time limit of {limit:.0f} s: training stopped in epoch {self.state.epoch + 1} of "
                f"{self.config.train.epochs}, leaving time for the final evaluation")

    def finish(self) -> RunSummary:
        """Score the finished net, calibrate it, and write its weights and summary."""
        run, state, out_dir = self.run, self.state, self.out_dir
        if state.stopped:
            self.show.message(f"note: {state.stopped}")
        model = state.finished_model()
        final = final_evaluation(model, self.config.train, *run.held_out, tta=self.tta)
        self.log.finish({"test_loss": final["loss"], "test_acc": final["accuracy"]} if final["split"] == "test"
                        else {})
        calibration = run_calibration(model, self.config.train, run.val, final)
        check_folder(out_dir)
        extra = {"epoch": str(state.epoch), **self.input} | (
            {"temperature": repr(calibration["temperature"])} if calibration else {})
        save_weights(model, self.config.model, out_dir / "model.safetensors", extra=extra)
        summary = self.summary(final, calibration)
        write_summary(out_dir / "summary.json", summary)
        (out_dir / "state.safetensors").unlink(missing_ok=True)  # finished: model.safetensors is the result
        self.show.message(final_message(self.config, final, summary.wall_seconds, out_dir, state.epoch))
        return summary

    def summary(self, final: dict[str, Any] | None, calibration: dict[str, Any] | None,
                diverged: Divergence | None = None) -> RunSummary:
        limit = self.time_limit
        summary = summarize_run(self.run, self.state, self.log.rows, final, calibration, round(self.wall(), 2),
                                limit.seconds if limit is not None else None, diverged)
        return summary.replace(time_plan=limit.plan) if limit is not None and limit.plan is not None else summary


def final_message(config: Config, final: dict[str, Any], wall_seconds: float, out_dir: Path, epochs: int) -> str:
    """The run's last line: its accuracy, after how many epochs (``epochs``, fewer where a time limit stopped it)."""
    tta = final["accuracy_tta"]
    with_tta = f" ({100 * tta:.2f}% with {final['tta']} TTA)" if tta is not None else ""
    of = f"{epochs} of {config.train.epochs} epochs" if epochs != config.train.epochs else (
        f"{epochs} epoch{'s' if epochs != 1 else ''}")
    return (f"final {final['split']} accuracy {100 * final['accuracy']:.2f}%{with_tta} after {of} "
            f"({wall_seconds:.0f} s) -> {out_dir}")
