"""A training run's story: start or resume it in its folder (train/folder.py), build and prepare the net, load the
data, :func:`fit`, the final evaluation and temperature (train/temperature.py), and the summary. ``train_run`` is
what ``resbudget train`` calls.

A run folder holds ``config.toml`` (the complete resolved config), ``metrics.jsonl`` / ``metrics.csv``,
``model.safetensors`` (after every epoch), ``state.safetensors`` while unfinished (what ``--resume`` needs) and, at
the end, ``summary.json``. Every file is written atomically.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import torch

from .._io import write_text
from ..data import CIFAR10, Split, load_cifar10, normalize, stratified_split
from ..models import ResNet, build_model, check_spec, summarize
from ..models.prepare import prepare_, whiten_stem_
from ..version import __version__
from .calibration import calibration_metrics
from .checkpoint import CheckpointError, load_state, read_summary, save_state, save_weights
from .config import STUDY_MODE_NOTE, Config, ConfigError, config_to_dict, config_to_toml
from .deadline import RESERVE_SECONDS, Evaluations, first_step_seconds, seconds_per_view, tta_that_fits
from .evaluate import eval_options, evaluate, select_device, view_logits
from .fit import DivergedError, TrainingState, fit, images_kept
from .folder import RunFolderError, check_folder, hold_run_folder, open_run_folder
from .metrics import MetricsLog, Progress
from .provenance import git_state, host_cpu
from .temperature import run_calibration
from .tta import VIEWS

WHITEN_IMAGES = 5000  # training images whose patches set the whitening filters


def prepare_splits(config: Config, data: CIFAR10, device: torch.device) -> tuple[Split, Split | None, Split]:
    """(train, validation or None, test) on ``device``: the validation split carved from the training set, and the
    smoke-test limits applied."""
    d = config.data
    train, test, val = data.train, data.test, None
    if d.val_size:
        train_idx, val_idx = stratified_split(train.labels, d.val_size, d.val_seed)
        train, val = train.subset(train_idx), train.subset(val_idx)
    if d.train_limit:
        train = train.subset(torch.arange(min(d.train_limit, len(train))))
    if d.test_limit:
        test = test.subset(torch.arange(min(d.test_limit, len(test))))
    if len(train) < config.train.batch_size:
        raise ConfigError(
            f"train.batch_size ({config.train.batch_size}) is larger than the training set ({len(train)} images)"
        )
    kept = images_kept(len(train), config.train.drop_easy)
    if kept < config.train.batch_size:
        raise ConfigError(f"train.drop_easy = {config.train.drop_easy} leaves {kept} training images per epoch, "
                          f"fewer than one batch of {config.train.batch_size}")
    return train.to(device), (val.to(device) if val is not None else None), test.to(device)


def initial_model(config: Config) -> ResNet:
    """The net before training and before its data-dependent start (whitening): built after
    ``torch.manual_seed(train.seed)``, with the recipe's identity init and frozen tensors."""
    torch.manual_seed(config.train.seed)
    model = build_model(config.model)
    t = config.train
    prepare_(model, dirac=t.dirac_init, freeze_bn_weight=t.freeze_bn_weight, freeze_stem=t.freeze_stem)
    return model


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


@dataclasses.dataclass
class Prepared:
    """What a run has before its first step: the net (built, initialised, on its device), its summary, the data and
    its splits on the device (``test`` None where the run may not see it), and what the whitening took."""

    model: ResNet
    model_summary: Any
    data: CIFAR10
    train: Split
    val: Split | None
    test: Split | None
    whiten_seconds: float


def prepare_run(config: Config, data: CIFAR10 | str | os.PathLike | None, device: torch.device,
                use_test: bool) -> Prepared:
    t = config.train
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed batch shapes (the partial batch is dropped): tune once
    model = initial_model(config)
    model_summary = summarize(config.model, model)
    data = data if isinstance(data, CIFAR10) else load_cifar10(data)
    train, val, test = prepare_splits(config, data, device)
    whiten_start = time.perf_counter()
    if t.whiten_init:  # needs the data, so after the budget check; it draws no random numbers
        whiten_stem_(model, normalize(train.images[:WHITEN_IMAGES]), t.whiten_eps)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    whiten_seconds = time.perf_counter() - whiten_start
    model = model.to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return Prepared(model, model_summary, data, train, val, test if use_test else None, whiten_seconds)


def final_evaluation(model: ResNet, config: Config, held_out: Split, which: str, tta: str | None = None
                     ) -> dict[str, Any]:
    """The finished net on its held-out split (``which``: "test", or "validation" for a search trial), with the
    recipe's TTA (or ``tta``, where a time limit cut it) from the same pass, and the seconds it took (counted in GPU
    speed records' time). ``logits``: the mean logits over the TTA views, what every command's probabilities come
    from; ``labels``: the split's."""
    tta = tta or config.train.tta
    start = time.perf_counter()
    views = view_logits(model, held_out, tta=tta, **eval_options(config.train))
    if held_out.images.device.type == "cuda":
        torch.cuda.synchronize(held_out.images.device)
    seconds = time.perf_counter() - start
    alone, logits = calibration_metrics(views[0], held_out.labels), views.mean(0)
    with_tta = float((logits.argmax(1) == held_out.labels).double().mean()) if tta != "none" else None
    return {"split": which, "loss": alone["nll"], "accuracy": alone["accuracy"], "accuracy_tta": with_tta,
            "tta": tta, "seconds": seconds, "logits": logits, "labels": held_out.labels}


def train_run(
    config: Config | None,
    out_dir: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    data: CIFAR10 | None = None,
    resume: bool = False,
    allow_over_budget: bool = False,
    progress: bool = True,
    stream: TextIO | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    use_test: bool = True,
    time_limit: float | None = None,
    started: float | None = None,
    time_plan: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``config`` into the run folder ``out_dir`` and return the summary (also written as summary.json).

    The data: ``data`` if given (already loaded), else CIFAR-10 from ``data_dir`` (else $RESBUDGET_DATA_DIR, else the
    cache folder), verified. ``resume``: continue the run in ``out_dir`` from its last finished epoch.
    ``use_test = False`` (a search trial): the test set is never evaluated; the run needs a validation split, whose
    final accuracy (with TTA) is the result.

    ``time_limit``: the seconds the whole run may take, counted from ``started`` (a ``time.perf_counter()`` value;
    default: this call) and over all processes of a resumed run. Training stops between two steps when what is left
    would no longer cover the evaluations still to come (estimated from the speed so far); the run then ends as any
    other, its summary saying where it stopped (``stopped``). ``time_plan``: how the recipe was chosen for the time
    (train/timed.py), recorded in the summary beside the time the run took."""
    wall_start = time.perf_counter() if started is None else started
    if time_limit is not None and not (time_limit > 0 and math.isfinite(time_limit)):
        raise ConfigError(f"the time limit must be a positive number of seconds, got {time_limit}")
    out_dir = Path(out_dir)
    config = open_run_folder(out_dir, config, resume)
    git_state()  # read now, not when the run ends
    show = Progress(config.train.epochs, stream=stream, enabled=progress)
    device = select_device(config.train.device)
    params = check_spec(config.model, config.train.budget, allow_over_budget)  # from the spec alone, before building
    if not use_test and (not config.data.val_size or config.watches_test):
        raise ConfigError("a run that may not see the test set needs a validation split (data.val_size > 0) and "
                          "a schedule that does not watch the test set")
    with hold_run_folder(out_dir, resume):
        state_path = out_dir / "state.safetensors"
        if resume and (out_dir / "summary.json").is_file():  # written last: the run has ended
            summary = read_summary(out_dir / "summary.json")
            if summary.get("diverged"):
                where = summary["diverged"] if isinstance(summary["diverged"], dict) else {}
                raise DivergedError(str(where.get("reason", f"{out_dir}: the run diverged")), where.get("epoch", 0),
                                    where.get("step", 0), summary)
            show.message(f"{out_dir} is already finished ({config.train.epochs} epochs); nothing to resume")
            return summary
        saved = load_state(state_path) if resume and state_path.is_file() else None
        run = prepare_run(config, data if data is not None else data_dir, device, use_test)
        return _train_in_folder(config, out_dir, run, saved, show, on_epoch_end, wall_start, params, time_limit,
                                time_plan)


def evaluations_after(config: Config, run: Prepared, per_view: float) -> Evaluations:
    """What a run scores after its current epoch's last step: that epoch's held-out numbers, the final evaluation
    with the TTA views, and the temperature's fit on the validation split (which reuses the final evaluation where
    that is on the validation split), at ``per_view`` seconds an image and view."""
    per_epoch = len(run.val) if run.val is not None else 0
    if run.test is not None and (config.train.eval_test_every_epoch or config.watches_test):
        per_epoch += len(run.test)
    final = len(run.test) if run.test is not None else len(run.val)
    fit = len(run.val) if run.val is not None and run.test is not None else 0
    return Evaluations(per_view, per_epoch, final, fit)


def _train_in_folder(config: Config, out_dir: Path, run: Prepared, saved: dict[str, Any] | None, show: Progress,
                     on_epoch_end: Callable[[int, dict[str, Any]], None] | None, wall_start: float,
                     params: int, time_limit: float | None = None,
                     time_plan: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run itself, in a folder held by :func:`hold_run_folder`: train (or go on training) the prepared net,
    then evaluate it, calibrate it where it has a validation split, and write its weights and summary once."""
    tta = config.train.tta
    if time_limit:  # the evaluations are timed on the net, and their views cut (or the run refused, writing nothing)
        held_out = run.test if run.test is not None else run.val
        per_view = seconds_per_view(run.model, held_out, config.train)
        evaluations = evaluations_after(config, run, per_view)
        spent = (float(saved["wall_seconds"]) if saved is not None else 0.0) + time.perf_counter() - wall_start
        tta = tta_that_fits(evaluations, tta, time_limit - spent - RESERVE_SECONDS, time_limit,
                            first_step_seconds(per_view, config.train.batch_size))
        if tta != config.train.tta:
            show.message(f"note: the time limit holds the final evaluation to {tta} TTA ({VIEWS[tta]} view(s) "
                         f"of {VIEWS[config.train.tta]})")
    if saved is None and not (out_dir / "config.toml").is_file():
        write_text(out_dir / "config.toml", config_to_toml(config))
    for note in [f"warning: {w}" for w in run.model_summary.warnings] + [f"note: {n}" for n in run_notes(config)]:
        show.message(note)
    state = TrainingState.start(config, run.model, len(run.train))
    if saved is not None:
        state.load_state_dict(saved)
        show.message(f"resuming {out_dir} after epoch {state.epoch}")
    log = MetricsLog(out_dir, keep_until_epoch=state.epoch)

    def wall() -> float:  # the run's time so far, over all its processes
        return state.wall_before + time.perf_counter() - wall_start

    def end_epoch(state: TrainingState, row: dict[str, Any]) -> None:
        check_folder(out_dir)
        try:
            log.append(row)
            with state.evaluated():  # the weights the epoch's numbers are of: what --allow-unfinished reads
                save_weights(run.model, config.model, out_dir / "model.safetensors",
                             extra={"epoch": str(state.epoch)})
            save_state(state.state_dict(wall_seconds=wall()), out_dir / "state.safetensors")
        except (CheckpointError, OSError) as e:
            raise RunFolderError(f"{e}; the run stops, its folder holding the last epoch it saved: make room, then "
                                 f"continue it with resbudget train --resume --out {out_dir}") from None
        show.epoch(row)
        if on_epoch_end is not None:
            on_epoch_end(state.epoch, row)

    def over_time(images_per_s: float) -> str | None:  # after a step: is there room for the next one?
        next_step = config.train.batch_size / images_per_s
        if wall() + next_step + RESERVE_SECONDS + evaluations.seconds(VIEWS[tta]) < time_limit:
            return None
        return (f"time limit of {time_limit:.0f} s: training stopped in epoch {state.epoch + 1} of "
                f"{config.train.epochs}, leaving time for the final evaluation")

    try:
        fit(config, run.train, state, evaluate_epoch=lambda epoch: evaluate_epoch(run.model, config, run.val,
                                                                                 run.test),
            monitor=config.monitored, end_epoch=end_epoch, show=show, stop=over_time if time_limit else None)
    except DivergedError as e:  # a result: recorded as the run's end, the last finite epoch's files kept
        check_folder(out_dir)
        e.summary = run_summary(config, run, log.rows, None, None, state, params, round(wall(), 2), time_limit,
                                diverged={"epoch": e.epoch, "step": e.step, "reason": str(e)})
        write_text(out_dir / "summary.json", json.dumps(e.summary, indent=2) + "\n")
        raise
    if state.stopped:
        show.message(f"note: {state.stopped}")
    model = state.finished_model()
    final = final_evaluation(model, config, *((run.test, "test") if run.test is not None else (run.val, "validation")),
                             tta=tta)
    log.finish({"test_loss": final["loss"], "test_acc": final["accuracy"]} if final["split"] == "test" else {})
    calibration = run_calibration(model, config.train, run.val, final)
    check_folder(out_dir)
    extra = {"epoch": str(state.epoch)} | ({"temperature": repr(calibration["temperature"])} if calibration else {})
    save_weights(model, config.model, out_dir / "model.safetensors", extra=extra)
    summary = run_summary(config, run, log.rows, final, calibration, state, params, round(wall(), 2), time_limit)
    if time_plan is not None:
        summary["time_plan"] = time_plan
    write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    (out_dir / "state.safetensors").unlink(missing_ok=True)  # finished: model.safetensors is the result
    show.message(final_message(config, final, summary["wall_seconds"], out_dir, state.epoch))
    return summary


def run_notes(config: Config) -> list[str]:
    """What every output of the run must say about how far its numbers can be trusted."""
    return [STUDY_MODE_NOTE] if config.watches_test else []


def final_message(config: Config, final: dict[str, Any], wall_seconds: float, out_dir: Path, epochs: int) -> str:
    """The run's last line: its accuracy, after how many epochs (``epochs``, fewer where a time limit stopped it)."""
    tta = final["accuracy_tta"]
    with_tta = f" ({100 * tta:.2f}% with {final['tta']} TTA)" if tta is not None else ""
    of = f"{epochs} of {config.train.epochs} epochs" if epochs != config.train.epochs else (
        f"{epochs} epoch{'s' if epochs != 1 else ''}")
    return (f"final {final['split']} accuracy {100 * final['accuracy']:.2f}%{with_tta} after {of} "
            f"({wall_seconds:.0f} s) -> {out_dir}")


def run_summary(config: Config, run: Prepared, rows: list[dict[str, Any]], final: dict[str, Any] | None,
                calibration: dict[str, Any] | None, state: TrainingState, params: int,
                wall_seconds: float, time_limit: float | None = None,
                diverged: dict[str, Any] | None = None) -> dict[str, Any]:
    """summary.json: what the run reached (the finished net on its held-out split), what it cost, and everything
    needed to trace it (code, machine, data, config). A run that diverged (``diverged``: epoch, step and reason)
    reached nothing: no ``final`` evaluation, its accuracies None."""
    t, last, device = config.train, (rows[-1] if rows else {}), run.train.images.device
    final = final or {"split": "test" if run.test is not None else "validation", "loss": None, "accuracy": None,
                      "accuracy_tta": None, "tta": t.tta, "seconds": 0.0}
    on_test = final["split"] == "test"
    commit, dirty = git_state()
    return {
        "resbudget_version": __version__,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "preset": config.preset,
        "params": params,
        "macs": run.model_summary.macs,
        "budget": t.budget,
        "over_budget": params > t.budget,
        "epochs": t.epochs,
        "test_accuracy": final["accuracy"] if on_test else None,
        "test_loss": final["loss"] if on_test else None,
        "test_accuracy_tta": final["accuracy_tta"] if on_test else None,  # with the views of "tta"
        "tta": final["tta"],  # the recipe's TTA mode, or one of fewer views where a time limit cut it
        "val_accuracy": last.get("val_acc"),
        **({} if on_test else {"val_accuracy_tta": final["accuracy_tta"], "test_set_used": False}),
        "train_accuracy": last.get("train_acc"),
        "diverged": diverged,  # where training stopped being finite (epoch, step, reason), or None
        "calibration": calibration,
        "wall_seconds": wall_seconds,
        "time_limit": time_limit,  # seconds the whole run was given (train --minutes, search --trial-minutes)
        "stopped": state.stopped,  # why training ended early (the time limit), or None: it ran every epoch
        "train_seconds": round(sum(r.get("train_seconds") or 0.0 for r in rows), 3),  # the steps alone
        # The time as GPU speed records count it (airbench): whitening + training steps + the final evaluation with
        # its TTA, with the data already on the device; build, checkpoints and per-epoch evaluations are left out.
        "whiten_seconds": round(run.whiten_seconds, 4),
        "final_eval_seconds": round(final["seconds"], 4),
        "mean_images_per_s": sum(r["images_per_s"] for r in rows) / len(rows) if rows else None,
        # the training step recorded as a CUDA graph (train/step.py): whether, how often, at what cost
        "step_graph": state.step.graphed,  # fit makes the step, even when no epoch was left to run
        "graph_captures": state.step.captures,
        "capture_seconds": round(state.step.capture_seconds, 4),
        "graph_fallback": state.step.fallback,  # why recording failed and the run went on eagerly, if it did
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "host_cpu": host_cpu(),
        "torch_version": torch.__version__,
        "seed": t.seed,
        "git_commit": commit,
        "git_dirty": dirty,  # the tree had uncommitted changes: git_commit alone does not name the code that ran
        "data_source": run.data.source,
        "data_checksums": run.data.checksums,
        "plateau_watched_test": config.watches_test,
        "notes": run_notes(config),
        "warnings": run.model_summary.warnings,
        "config": config_to_dict(config),
    }


