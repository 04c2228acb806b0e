"""A training run in a folder: resolve and record the config, build and prepare the net, load the data, call
:func:`fit`, and write metrics, checkpoints and the summary. ``train_run`` is what ``resbudget train`` calls.

A run folder holds ``config.toml`` (the complete resolved config), ``metrics.jsonl`` / ``metrics.csv``,
``model.safetensors`` (after every epoch), ``state.safetensors`` while unfinished (what ``--resume`` needs) and, at
the end, ``summary.json``. Every file is written atomically.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
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
from .checkpoint import CheckpointError, load_state, model_from_weights, read_weights, save_state, save_weights
from .config import STUDY_MODE_NOTE, Config, ConfigError, config_from_dict, config_to_dict, config_to_toml
from .calibration import calibration_metrics, fit_temperature
from .evaluate import evaluate, model_logits, select_device
from .fit import TrainingState, fit, images_kept
from .metrics import MetricsLog, Progress

try:
    import fcntl
except ImportError:  # not on POSIX (Windows): run folders are not locked there
    fcntl = None

WHITEN_IMAGES = 5000  # training images whose patches set the whitening filters


class RunFolderError(RuntimeError):
    pass


@functools.cache
def git_commit() -> str | None:
    """The commit checked out when this process first asked: the code it imported then is the code that runs, even if
    the checkout moves on during a long run (read once, at the start of the first run)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


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
    if out_dir.exists() and not out_dir.is_dir():
        raise RunFolderError(f"{out_dir} is not a folder; choose another --out")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise RunFolderError(
            f"{out_dir} is not empty; pass --resume to continue the run in it, or choose another --out folder "
            "(nothing in it is overwritten)"
        )
    return config


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
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunFolderError(f"{out_dir} is in use by another resbudget run; wait for it to end, or choose "
                                     "another --out folder") from None
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
            if created and not any(out_dir.iterdir()):
                out_dir.rmdir()
            raise
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


def evaluate_epoch(model: ResNet, config: Config, val: Split | None, test: Split | None,
                   epoch: int) -> dict[str, Any]:
    """The held-out numbers of an epoch's row: validation every epoch (if there is a split), test after the last
    epoch (with its TTA accuracy from the same pass) or every epoch where asked or watched. Without ``test`` (a
    search trial, which may not see the test set) the last epoch's validation pass gives the TTA accuracy instead."""
    t, last = config.train, epoch == config.train.epochs
    opts = dict(batch_size=t.eval_batch_size, precision=t.precision, channels_last=t.channels_last)
    row: dict[str, Any] = {"val_loss": None, "val_acc": None, "test_loss": None, "test_acc": None}
    if val is not None:
        r = evaluate(model, val, tta=t.tta if last and test is None else "none", **opts)
        row.update(val_loss=r["loss"], val_acc=r["accuracy"])
        if "accuracy_tta" in r:
            row["val_acc_tta"] = r["accuracy_tta"]
    if test is not None and (last or t.eval_test_every_epoch or config.watches_test):
        r = evaluate(model, test, tta=t.tta if last else "none", **opts)
        row.update(test_loss=r["loss"], test_acc=r["accuracy"], test_acc_tta=r.get("accuracy_tta"))
    return row


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
) -> dict[str, Any]:
    """Train ``config`` into the run folder ``out_dir`` and return the summary (also written as summary.json).

    The data: ``data`` if given (already loaded), else CIFAR-10 from ``data_dir`` (else $RESBUDGET_DATA_DIR, else the
    cache folder), verified. ``resume``: continue the run in ``out_dir`` from its last finished epoch.
    ``use_test = False`` (a search trial): the test set is never evaluated; the run needs a validation split, whose
    final accuracy (with TTA) is the result."""
    wall_start = time.perf_counter()
    out_dir = Path(out_dir)
    config = open_run_folder(out_dir, config, resume)
    t = config.train
    git_commit()  # read now, not when the run ends
    show = Progress(t.epochs, stream=stream, enabled=progress)
    device = select_device(t.device)
    params = check_spec(config.model, t.budget, allow_over_budget)  # from the spec alone, before anything is built
    if not use_test and (not config.data.val_size or config.watches_test):
        raise ConfigError("a run that may not see the test set needs a validation split (data.val_size > 0) and "
                          "a schedule that does not watch the test set")
    with hold_run_folder(out_dir, resume):
        state_path = out_dir / "state.safetensors"
        if resume and not state_path.is_file() and (out_dir / "summary.json").is_file():
            show.message(f"{out_dir} is already finished ({t.epochs} epochs); nothing to resume")
            return json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
        saved = load_state(state_path) if resume and state_path.is_file() else None
        return _train_in_folder(config, out_dir, saved, params, device, data if data is not None else data_dir,
                                show, on_epoch_end, wall_start, use_test)


def _train_in_folder(config: Config, out_dir: Path, saved: dict[str, Any] | None, params: int, device: torch.device,
                     data: CIFAR10 | str | os.PathLike | None, show: Progress,
                     on_epoch_end: Callable[[int, dict[str, Any]], None] | None, wall_start: float,
                     use_test: bool) -> dict[str, Any]:
    """The run itself, in a folder held by :func:`hold_run_folder`: ``data`` loaded or where to load it from."""
    t = config.train
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed batch shapes (the partial batch is dropped): tune once
    model = initial_model(config)
    model_summary = summarize(config.model, model)
    data = data if isinstance(data, CIFAR10) else load_cifar10(data)
    train, val, test = prepare_splits(config, data, device)
    if not use_test:  # a search trial: nothing below can reach the test set
        test = None
    whiten_start = time.perf_counter()
    if t.whiten_init:  # needs the data, so after the budget check; it draws no random numbers
        whiten_stem_(model, normalize(train.images[:WHITEN_IMAGES]), t.whiten_eps)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    whiten_seconds = time.perf_counter() - whiten_start
    if saved is None and not (out_dir / "config.toml").is_file():
        write_text(out_dir / "config.toml", config_to_toml(config))
    for w in model_summary.warnings:
        show.message(f"warning: {w}")
    if config.watches_test:
        show.message(f"note: {STUDY_MODE_NOTE}")

    model = model.to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    state, wall_before = TrainingState.start(config, model, len(train)), 0.0
    if saved is not None:
        model.load_state_dict(saved["model"])
        state.optimizer.load_state_dict(saved["optimizer"])
        state.schedule.load_state_dict(saved["schedule"])
        state.epoch, wall_before = int(saved["epoch"]), float(saved["wall_seconds"])
        if state.last_loss is not None and "last_loss" in saved:
            state.last_loss.copy_(saved["last_loss"])
        if state.average is not None:
            if "average" not in saved:
                raise CheckpointError(f"{out_dir}: the run trains with train.ema but its saved state has no weight "
                                      "average to resume from")
            state.average.load_state_dict(saved["average"])
        torch.set_rng_state(saved["cpu_rng"])
        show.message(f"resuming {out_dir} after epoch {state.epoch}")
    log = MetricsLog(out_dir, keep_until_epoch=state.epoch)

    def end_epoch(state: TrainingState, row: dict[str, Any]) -> None:
        log.append(row)
        show.epoch(row)
        with state.average.applied() if state.average is not None else contextlib.nullcontext():
            save_weights(model, config.model, out_dir / "model.safetensors", extra={"epoch": str(state.epoch)})
        save_state({"model": model.state_dict(), "optimizer": state.optimizer.state_dict(),
                    "schedule": state.schedule.state_dict(), "cpu_rng": torch.get_rng_state(), "epoch": state.epoch,
                    "wall_seconds": wall_before + time.perf_counter() - wall_start,
                    **({"last_loss": state.last_loss} if state.last_loss is not None else {}),
                    **({"average": state.average.state_dict()} if state.average is not None else {})},
                   out_dir / "state.safetensors")
        if on_epoch_end is not None:
            on_epoch_end(state.epoch, row)

    last_row = fit(model, config, train, state, end_epoch=end_epoch, show=show,
                   evaluate_epoch=lambda epoch: evaluate_epoch(model, config, val, test, epoch))
    if state.average is not None:  # the average is the result: TTA, calibration and the saved weights are its
        state.average.copy_to_model()
    held_out = test if use_test else val
    tta_acc = last_row.get("test_acc_tta" if use_test else "val_acc_tta") if last_row is not None else None
    if t.tta != "none" and tta_acc is None:  # resumed after the last epoch's checkpoint
        tta_acc = evaluate(model, held_out, tta=t.tta, batch_size=t.eval_batch_size, precision=t.precision,
                           channels_last=t.channels_last)["accuracy_tta"]
    calibration = None
    if val is not None:  # held-out images: the temperature of calibrated probabilities (train/calibration.py)
        calibration = fit_and_report(model, val)
        save_weights(model, config.model, out_dir / "model.safetensors",
                     extra={"epoch": str(t.epochs), "temperature": repr(calibration["temperature"])})
    summary = run_summary(config, log.rows, model_summary, params, tta_acc if use_test else None, data, device,
                          round(wall_before + time.perf_counter() - wall_start, 2))
    summary["calibration"] = calibration
    # The time as GPU speed records count it (airbench): whitening init + training steps + the last evaluation with
    # its TTA, with the data already on the device; build, checkpoints and the per-epoch evaluations are left out.
    summary["whiten_seconds"] = round(whiten_seconds, 4)
    summary["final_eval_seconds"] = (round(last_row["seconds"] - last_row["train_seconds"], 4)
                                     if last_row is not None else None)  # None: resumed after the last epoch
    # the training step recorded as a CUDA graph (train/step.py; fit always makes the step): how often, at what cost
    summary.update(step_graph=state.step.graphed, graph_captures=state.step.captures,
                   capture_seconds=round(state.step.capture_seconds, 4))
    if not use_test:
        summary.update(test_set_used=False, val_accuracy_tta=tta_acc)
    write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    (out_dir / "state.safetensors").unlink(missing_ok=True)  # finished: model.safetensors is the result
    with_tta = f" ({100 * tta_acc:.2f}% with {t.tta} TTA)" if tta_acc is not None else ""
    which, acc = ("test", summary["test_accuracy"]) if use_test else ("validation", summary["val_accuracy"])
    show.message(f"final {which} accuracy {100 * acc:.2f}%{with_tta} after {t.epochs} epochs "
                 f"({summary['wall_seconds']:.0f} s) -> {out_dir}")
    return summary


def run_summary(config: Config, rows: list[dict[str, Any]], model_summary: Any, params: int, tta_acc: float | None,
                data: CIFAR10, device: torch.device, wall_seconds: float) -> dict[str, Any]:
    t, final = config.train, rows[-1]
    return {
        "resbudget_version": __version__,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "preset": config.preset,
        "params": params,
        "macs": model_summary.macs,
        "budget": t.budget,
        "over_budget": params > t.budget,
        "epochs": t.epochs,
        "test_accuracy": final["test_acc"],
        "test_loss": final["test_loss"],
        "test_accuracy_tta": tta_acc,  # with the t.tta views; test_accuracy is always without
        "val_accuracy": final["val_acc"],
        "train_accuracy": final["train_acc"],
        "wall_seconds": wall_seconds,
        "train_seconds": round(sum(r.get("train_seconds") or 0.0 for r in rows), 3),  # the steps alone
        "mean_images_per_s": sum(r["images_per_s"] for r in rows) / len(rows),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "host_cpu": host_cpu(),
        "torch_version": torch.__version__,
        "seed": t.seed,
        "git_commit": git_commit(),
        "data_source": data.source,
        "data_checksums": data.checksums,
        "plateau_watched_test": config.watches_test,
        "notes": [STUDY_MODE_NOTE] if config.watches_test else [],
        "warnings": model_summary.warnings,
        "config": config_to_dict(config),
    }


# --- calibration of a run (train/calibration.py) ---------------------------------------------------------------------
def fit_and_report(model: ResNet, val: Split) -> dict[str, Any]:
    """The temperature fitted on the validation images ``val`` and their NLL / ECE before and after."""
    logits = model_logits(model, val)
    temperature = fit_temperature(logits, val.labels)
    before, after = calibration_metrics(logits, val.labels), calibration_metrics(logits, val.labels, temperature)
    return {"temperature": temperature, "val_images": len(val), "val_nll": before["nll"], "val_ece": before["ece"],
            "val_nll_calibrated": after["nll"], "val_ece_calibrated": after["ece"]}


def calibrate_run(run_dir: str | os.PathLike, *, data_dir: str | os.PathLike | None = None,
                  data: CIFAR10 | None = None, device: str = "auto") -> dict[str, Any]:
    """Fit the temperature of a finished run on its own validation split (``data.val_size`` images carved from the
    training set with ``data.val_seed``, as :func:`prepare_splits` carved them) and store it in its
    ``model.safetensors`` and ``summary.json``. A run that trained on every training image has no held-out images:
    refused, rather than calibrated on the test set."""
    run_dir = Path(run_dir)
    config = config_from_dict(read_toml(run_dir / "config.toml", CheckpointError), stored=True)
    if not config.data.val_size:
        raise CheckpointError(f"{run_dir}: this run trained on every training image, so no held-out images are left "
                              "to fit a temperature on (the test set is never used); train with data.val_size=N "
                              "(e.g. 2000) to calibrate")
    weights = run_dir / "model.safetensors"
    spec, tensors, metadata = read_weights(weights)
    model = model_from_weights(spec, tensors, weights, allow_over_budget=True)
    data = data if data is not None else load_cifar10(data_dir)
    _, val_idx = stratified_split(data.train.labels, config.data.val_size, config.data.val_seed)
    dev = select_device(device)
    result = fit_and_report(model.to(dev), data.train.subset(val_idx).to(dev))
    extra = {k: v for k, v in metadata.items() if k not in ("format", "spec")}
    save_weights(model, spec, weights, extra={**extra, "temperature": repr(result["temperature"])})
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        write_text(summary_path, json.dumps({**summary, "calibration": result}, indent=2) + "\n")
    return result
