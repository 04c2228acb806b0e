"""A training run in a folder: resolve and record the config, build and prepare the net, load the data, call
:func:`fit`, and write metrics, checkpoints and the summary. ``train_run`` is what ``resbudget train`` calls.

A run folder holds ``config.toml`` (the complete resolved config), ``metrics.jsonl`` / ``metrics.csv``,
``model.safetensors`` (after every epoch), ``state.safetensors`` while unfinished (what ``--resume`` needs) and, at
the end, ``summary.json``. Every file is written atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import json
import math
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import torch

from .._io import read_toml, write_text
from ..data import CIFAR10, Split, load_cifar10, normalize, stratified_split
from ..models import ResNet, build_model, check_spec, summarize
from ..models.prepare import prepare_, whiten_stem_
from ..version import __version__
from .calibration import TEMPERATURE_RANGE, before_and_after, calibration_metrics, fit_temperature, temperature_in_range
from .checkpoint import (
    CheckpointError,
    load_state,
    model_from_weights,
    read_summary,
    read_weights,
    save_state,
    save_weights,
    weights_path,
)
from .config import (
    STUDY_MODE_NOTE,
    Config,
    ConfigError,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    config_to_toml,
)
from .deadline import RESERVE_SECONDS, Evaluations, first_step_seconds, seconds_per_view, tta_that_fits
from .evaluate import eval_options, evaluate, select_device, view_logits
from .fit import DivergedError, TrainingState, fit, images_kept
from .metrics import MetricsLog, Progress
from .tta import VIEWS

try:
    import fcntl
except ImportError:  # not on POSIX (Windows): run folders are not locked there
    fcntl = None

WHITEN_IMAGES = 5000  # training images whose patches set the whitening filters


class RunFolderError(RuntimeError):
    pass


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.cache
def git_state() -> tuple[str | None, bool | None]:
    """(commit, whether tracked files had uncommitted changes) of the checkout this process imported its code from,
    as it was when first asked (the start of the first run), even if the checkout moves on during a long run. None
    outside a git checkout."""
    commit = _git("rev-parse", "HEAD") or None
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return commit, (bool(status) if status is not None else None)


def host_cpu() -> str:
    """The host CPU's model name (CPU runs repeat bit for bit on one kind of CPU only, and a GPU loop bound by launches
    runs at the speed of the CPU that drives it), and its core count."""
    name, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not name:
                    name = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    # the widest bf16 path oneDNN can take: runs on CPUs with different ones do not repeat bit for bit
    isa = next((label for flag, label in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512 BF16"),
                                          ("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in flags), "")
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    return f"{name} ({os.cpu_count()} cores{', ' + isa if isa else ''})"


def open_run_folder(out_dir: Path, config: Config | None, resume: bool) -> Config:
    """The run's config. A new run needs an empty or absent folder; ``resume`` reads the folder's own config (a given
    ``config`` must equal it). Nothing is written: :func:`hold_run_folder` takes the folder."""
    if resume:
        cfg_path = out_dir / "config.toml"
        if not cfg_path.is_file():
            raise RunFolderError(f"--resume: {out_dir} holds no run (no config.toml)")
        try:
            stored = config_from_dict(read_toml(cfg_path, RunFolderError), stored=True)
        except ConfigError as e:
            raise RunFolderError(f"{cfg_path}: {e}") from None
        if config is not None and config_to_dict(config) != config_to_dict(stored):
            raise RunFolderError(
                f"--resume: the given config differs from the one stored in {cfg_path}; resume without a config "
                "argument, or start a new run in another --out folder"
            )
        return stored
    if config is None:
        raise ConfigError("a config is needed to start a run")
    check_new_run_folder(out_dir)
    return config


def check_new_run_folder(out_dir: Path) -> None:
    """A new run needs ``out_dir`` absent or an empty folder (``RunFolderError`` otherwise)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise RunFolderError(f"{out_dir} is not a folder; choose another --out")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise RunFolderError(
            f"{out_dir} is not empty; pass --resume to continue the run in it, or choose another --out folder "
            "(nothing in it is overwritten)"
        )


@contextlib.contextmanager
def hold_run_folder(out_dir: Path, resume: bool) -> Iterator[None]:
    """Create ``out_dir`` if needed and hold it for the whole run: an exclusive lock on the folder (``flock``, which
    the kernel releases when the process ends, however it ends), taken before any data is loaded. A second run into
    the folder, or a ``--resume`` while it runs, is refused; so is a folder that cannot be written. Under the lock a
    new run checks again that the folder is empty, and a resumed one removes the temporary files a killed run left.
    If the run fails before writing anything, a folder it created is removed again."""
    try:
        out_dir.mkdir(parents=True)
        created = True
    except FileExistsError:
        created = False
    except OSError as e:
        raise RunFolderError(f"{out_dir}: cannot create the run folder ({e.strerror or e})") from None
    if not out_dir.is_dir():
        raise RunFolderError(f"{out_dir} is not a folder")
    with lock_run_folder(out_dir, "or choose another --out folder"):
        try:
            with tempfile.TemporaryFile(dir=out_dir):
                pass
        except OSError as e:
            raise RunFolderError(f"{out_dir}: cannot write to the run folder ({e.strerror or e})") from None
        if not resume and any(out_dir.iterdir()):
            raise RunFolderError(f"{out_dir} is not empty; pass --resume to continue the run in it, or choose "
                                 "another --out folder (nothing in it is overwritten)")
        for leftover in out_dir.glob(".*.tmp"):  # atomic writes cut short by a killed run
            leftover.unlink(missing_ok=True)
        try:
            yield
        except BaseException:
            if created and out_dir.is_dir() and not any(out_dir.iterdir()):
                out_dir.rmdir()
            raise


@contextlib.contextmanager
def lock_run_folder(out_dir: Path, advice: str = "") -> Iterator[None]:
    """Hold the exclusive lock of a run folder (``flock`` on the folder, which the kernel releases when the process
    ends, however it ends): every command that writes into a run folder holds it, so none writes while a run trains
    there or another command writes. Taken without waiting: a folder in use is refused."""
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunFolderError(f"{out_dir} is in use by another resbudget run or command; wait for it to end"
                                     + (f", {advice}" if advice else "")) from None
        yield
    finally:
        os.close(fd)  # releases the lock


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

    tta = config.train.tta
    if time_limit:  # the evaluations are timed on the net, and their views cut where the limit cannot hold them
        held_out = run.test if run.test is not None else run.val
        per_view = seconds_per_view(run.model, held_out, config.train)
        evaluations = evaluations_after(config, run, per_view)
        tta = tta_that_fits(evaluations, tta, time_limit - wall() - RESERVE_SECONDS, time_limit,
                            first_step_seconds(per_view, config.train.batch_size))
        if tta != config.train.tta:
            show.message(f"note: the time limit holds the final evaluation to {tta} TTA ({VIEWS[tta]} view(s) "
                         f"of {VIEWS[config.train.tta]})")

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


def check_folder(out_dir: Path) -> None:
    """A run stops, writing nothing more, where its folder (or the config.toml in it) has gone while it trained:
    what it would write would otherwise make a folder that looks like a run but cannot be read as one."""
    if not (out_dir / "config.toml").is_file():
        raise RunFolderError(f"{out_dir} (or its config.toml) was removed while the run trained in it; the run stops "
                             "here and writes nothing more")


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


# --- calibration of a run (train/calibration.py) ---------------------------------------------------------------------
RECIPE_SOURCE = "the recipe's (train.temperature: fitted on validation splits of runs of this recipe)"


def run_calibration(model: ResNet, t: TrainConfig, val: Split | None, final: dict[str, Any]) -> dict[str, Any] | None:
    """The finished run's temperature: fitted on its own validation split where it has one, else the recipe's
    (``train.temperature``, from where ``train.temperature_source`` says; None where the recipe has none). Where the
    run was scored on the test set, the test NLL and ECE of its probabilities, with and without the temperature, are
    reported beside it (never fitted on)."""
    if val is not None:
        calibration = fit_and_report(model, val, t, final["logits"] if final["split"] == "validation" else None,
                                     final["tta"])
    elif t.temperature:
        calibration = {"temperature": t.temperature, "source": t.temperature_source or RECIPE_SOURCE}
    else:
        return None
    if final["split"] == "test":  # what the temperature is worth on the test set, reported only
        calibration |= before_and_after(final["logits"], final["labels"], calibration["temperature"], "test")
    return calibration


def fit_and_report(model: ResNet, val: Split, t: TrainConfig, logits: torch.Tensor | None = None,
                   tta: str | None = None) -> dict[str, Any]:
    """The temperature fitted on the validation images ``val`` and their NLL / ECE before and after, for the
    probabilities every command gives: the mean logits over the run's TTA views (``tta``, default the recipe's),
    scored as the run scores, or ``logits`` where the run has them already."""
    tta = tta or t.tta
    if logits is None:
        logits = view_logits(model, val, tta=tta, **eval_options(t)).mean(0)
    temperature = fit_temperature(logits, val.labels)
    return {"temperature": temperature, "source": f"validation split ({len(val):,} images, {tta} TTA)",
            "val_images": len(val), **before_and_after(logits, val.labels, temperature, "val")}


def calibrate_run(run_dir: str | os.PathLike, *, data_dir: str | os.PathLike | None = None,
                  data: CIFAR10 | None = None, device: str = "auto", allow_unfinished: bool = False,
                  temperature: float | None = None) -> dict[str, Any]:
    """Fit the temperature of a finished run on its own validation split (``data.val_size`` images carved from the
    training set with ``data.val_seed``, as :func:`prepare_splits` carved them), or store the given ``temperature``
    (e.g. its recipe's, for a run trained before recipes carried one), in its ``model.safetensors`` and
    ``summary.json``. Without ``temperature``, a run that trained on every training image has no held-out images:
    refused, rather than calibrated on the test set. The run folder's lock is held throughout (a run still training
    there, or another command writing, is refused); an unfinished run is refused unless ``allow_unfinished``. Every
    file is read and checked before either is written."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is not a run folder")
    if temperature is not None and not temperature_in_range(temperature):
        raise CheckpointError("--temperature must be between {:g} and {:g}, got {:g}".format(*TEMPERATURE_RANGE,
                                                                                              temperature))
    with lock_run_folder(run_dir):
        weights = weights_path(run_dir, allow_unfinished)
        config = config_from_dict(read_toml(run_dir / "config.toml", CheckpointError), stored=True)
        if temperature is None and not config.data.val_size:
            raise CheckpointError(f"{run_dir}: this run trained on every training image, so no held-out images are "
                                  "left to fit a temperature on (the test set is never used); give its recipe's "
                                  f"temperature with --temperature T (the default recipe's is "
                                  f"{TrainConfig().temperature:g}), or train with data.val_size=N to fit one")
        summary_path = run_dir / "summary.json"
        summary = read_summary(summary_path) if summary_path.exists() else None
        spec, tensors, metadata = read_weights(weights)
        model = model_from_weights(spec, tensors, weights, allow_over_budget=True)
        if temperature is None:
            data = data if data is not None else load_cifar10(data_dir)
            _, val_idx = stratified_split(data.train.labels, config.data.val_size, config.data.val_seed)
            dev = select_device(device)
            result = fit_and_report(model.to(dev), data.train.subset(val_idx).to(dev), config.train)
        else:
            result = {"temperature": temperature, "source": "given (resbudget calibrate --temperature)"}
        extra = {k: v for k, v in metadata.items() if k not in ("format", "spec")}
        save_weights(model, spec, weights, extra={**extra, "temperature": repr(result["temperature"])})
        if summary is not None:
            write_text(summary_path, json.dumps({**summary, "calibration": result}, indent=2) + "\n")
    return result
