"""The training loop: fetch batch -> augment on device -> forward under autocast -> loss -> backward -> step -> lr."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from .._io import read_toml, write_text
from ..data import (CIFAR10, Augment, Split, alternating_flip_base, alternating_flips, load_cifar10, normalize,
                    stratified_split)
from ..models import ResNet, build_model, check_budget, count_params, summarize
from ..models.init import dirac_init_, whiten_conv_
from .checkpoint import load_model, load_state, save_state, save_weights
from .config import Config, ConfigError, config_from_dict, config_to_dict, config_to_toml
from .metrics import MetricsLog, Progress
from .cpu import tune_allocator
from .muon import MuonSGD, muon_param_groups
from .schedules import Schedule
from .tta import tta_view_logits

WHITEN_IMAGES = 5000  # training images whose patches set the whitening filters

STUDY_MODE_NOTE = (
    "the plateau schedule watched TEST accuracy (schedule.monitor='test', as the study did): the test set "
    "influenced training, so test_accuracy is not a clean held-out estimate"
)


class TrainingError(RuntimeError):
    pass


class RunFolderError(RuntimeError):
    pass


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but CUDA is not available here; use auto or cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"train.device: {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    """The optimiser of ``config`` over ``model``'s trainable tensors. Every param group records its peak lr as
    ``initial_lr``; the schedule scales all of them by the same factor (``set_lr``)."""
    o = config.optim
    if o.name == "muon":
        groups = muon_param_groups(model, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, bias_lr=o.bias_lr,
                                   head_lr=o.head_lr, aux_momentum=o.aux_momentum, weight_decay=o.weight_decay)
        optimizer: torch.optim.Optimizer = MuonSGD(groups, lr=o.lr)
    else:
        optimizer = _plain_optimizer(config, [p for p in model.parameters() if p.requires_grad])
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    return optimizer


def set_lr(optimizer: torch.optim.Optimizer, lr: float, base_lr: float) -> None:
    """The schedule's ``lr`` for a peak of ``base_lr``, applied to every group in proportion to its own peak."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * lr / base_lr


def _plain_optimizer(config: Config, params) -> torch.optim.Optimizer:
    o = config.optim
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay)
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@torch.no_grad()
def batched_outputs(fn: Callable[[torch.Tensor], torch.Tensor], split: Split, *, batch_size: int = 1000,
                    precision: str = "bf16", channels_last: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(fn(normalised images), labels) batch by batch over ``split``, which must be on fn's device."""
    device = split.images.device
    for start in range(0, len(split), batch_size):
        x = normalize(split.images[start:start + batch_size])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            out = fn(x)
        yield out.float(), split.labels[start:start + batch_size]


def evaluate(model: nn.Module, split: Split, *, batch_size: int = 1000, precision: str = "bf16",
             channels_last: bool = True) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over ``split``, which must be on the model's device (with TTA:
    ``evaluate_with_tta``)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=split.images.device, dtype=torch.float64)
    correct = torch.zeros((), device=split.images.device, dtype=torch.int64)
    for logits, y in batched_outputs(model, split, batch_size=batch_size, precision=precision,
                                     channels_last=channels_last):
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
    n = max(len(split), 1)
    return float(loss_sum) / n, int(correct) / n


def evaluate_with_tta(model: nn.Module, split: Split, tta: str, *, batch_size: int = 1000, precision: str = "bf16",
                      channels_last: bool = True) -> tuple[float, float, float]:
    """(mean cross-entropy, accuracy, accuracy with ``tta``) from one pass over the TTA views: the plain numbers are
    those of view 0, the image itself, so they equal ``evaluate``'s without a second pass."""
    was_training = model.training
    model.eval()
    device = split.images.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    correct_tta = torch.zeros((), device=device, dtype=torch.int64)
    for logits, y in batched_outputs(lambda x: tta_view_logits(model, x, tta), split, batch_size=batch_size,
                                     precision=precision, channels_last=channels_last):
        loss_sum += F.cross_entropy(logits[0], y, reduction="sum")
        correct += (logits[0].argmax(1) == y).sum()
        correct_tta += (logits.mean(0).argmax(1) == y).sum()
    model.train(was_training)
    n = max(len(split), 1)
    return float(loss_sum) / n, int(correct) / n, int(correct_tta) / n


def prepare_splits(config: Config, data: CIFAR10 | None, device: torch.device) -> tuple[Split, Split | None, Split, str]:
    d = config.data
    if data is None:
        data = load_cifar10(d.data_dir or None)
    train, test = data.train, data.test
    val = None
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
    return train.to(device), (val.to(device) if val is not None else None), test.to(device), data.source


def make_augment(config: Config, epoch: int = -1) -> Augment:
    """The training augmentation of ``epoch`` (0-based; -1: of the full-size epochs)."""
    d = config.data
    crop = d.small_crop if 0 <= epoch < d.small_crop_epochs else 0
    return Augment(d.crop_padding, d.pad_mode, d.flip, d.rotate_degrees, d.cutout, crop)


def initial_model(config: Config, seed: int, train_split: Split | None = None) -> ResNet:
    """The model before training: built after ``torch.manual_seed(seed)``, and with ``train.whiten_init`` its first
    convolution set from the patches of the first training images."""
    torch.manual_seed(seed)
    model = build_model(config.model)
    t = config.train
    if t.dirac_init:
        stem = model.stem[0]
        dirac_init_([m for m in model.modules() if isinstance(m, nn.Conv2d) and m is not stem
                     and m.kernel_size == (3, 3)])
    freeze_(model, config)
    if t.whiten_init and train_split is not None:
        whiten_stem_(model, train_split)
    return model


def freeze_(model: nn.Module, config: Config) -> None:
    """Switch off training of the tensors ``train.freeze_bn_weight`` / ``train.freeze_stem`` name (any net with a
    ``stem``, plain or grouped)."""
    if config.train.freeze_bn_weight:
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.requires_grad_(False)
    if config.train.freeze_stem:
        model.stem[0].weight.requires_grad_(False)


def train_stem_bias_(model: nn.Module, config: Config, epoch: int) -> None:
    """With ``train.stem_bias_epochs`` = N, the stem's bias trains in epochs 0..N-1 only (0-based ``epoch``)."""
    if config.train.stem_bias_epochs:
        model.stem[0].bias.requires_grad_(epoch < config.train.stem_bias_epochs)


def whiten_stem_(model: ResNet, train_split: Split) -> None:
    whiten_conv_(model.stem[0], normalize(train_split.images[:WHITEN_IMAGES]).to("cpu"))


def start_or_restore(config: Config, model: nn.Module, state: dict[str, Any] | None
                     ) -> tuple[torch.optim.Optimizer, Schedule, int, float]:
    """(optimiser, schedule, first epoch to run, wall seconds so far): fresh ones, or, from a checkpoint ``state``,
    those it saved (its weights are loaded into ``model``)."""
    optimizer = make_optimizer(config, model)
    schedule = Schedule(config.schedule, config.optim.lr, config.train.epochs)
    if state is None:
        return optimizer, schedule, 0, 0.0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    return optimizer, schedule, int(state["epoch"]), float(state["wall_seconds"])


def images_kept(n: int, drop: float) -> int:
    """How many of ``n`` training images an epoch after the first uses with ``train.drop_easy = drop``."""
    return n - int(drop * n)


def epoch_order(n: int, g: torch.Generator, last_loss: torch.Tensor | None, drop: float) -> torch.Tensor:
    """The image indices of one epoch in random order: all ``n``, or, with ``drop`` > 0 and the loss each image had
    when last trained on (``last_loss``; never-seen images count as hardest), all but the ``drop`` fraction with the
    lowest loss. The easiest images teach the least, so skipping them buys steps on the rest."""
    if last_loss is None or not drop:
        return torch.randperm(n, generator=g, device=g.device)
    keep = torch.topk(last_loss, images_kept(n, drop), sorted=False).indices
    return keep[torch.randperm(len(keep), generator=g, device=g.device)]


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    # Order and augmentation of epoch e depend on (seed, e) alone, so a resumed run sees what an uninterrupted one saw.
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch)


def _open_run_dir(out_dir: Path, config: Config | None, resume: bool) -> tuple[Config, dict[str, Any] | None]:
    state_path = out_dir / "state.safetensors"
    if resume:
        cfg_path = out_dir / "config.toml"
        if not cfg_path.is_file():
            raise RunFolderError(f"--resume: {out_dir} holds no run (no config.toml)")
        stored = config_from_dict(read_toml(cfg_path, RunFolderError))
        if config is not None and config_to_dict(config) != config_to_dict(stored):
            raise RunFolderError(
                f"--resume: the given config differs from the one stored in {cfg_path}; resume without a config "
                "argument, or start a new run in another --out folder"
            )
        return stored, (load_state(state_path) if state_path.is_file() else None)
    if config is None:
        raise ConfigError("a config is needed to start a run")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise RunFolderError(
            f"{out_dir} is not empty; pass --resume to continue the run in it, or choose another --out folder "
            "(nothing in it is overwritten)"
        )
    return config, None


def train(
    config: Config | None,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    allow_over_budget: bool = False,
    data: CIFAR10 | None = None,
    progress: bool = True,
    stream: TextIO | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train ``config`` into the run folder ``out_dir`` and return the summary (also written as summary.json)."""
    wall_start = time.perf_counter()
    out_dir = Path(out_dir)
    config, state = _open_run_dir(out_dir, config, resume)
    t = config.train
    show = Progress(t.epochs, stream=stream, enabled=progress)
    if resume and state is None and (out_dir / "summary.json").is_file():
        show.message(f"{out_dir} is already finished ({t.epochs} epochs); nothing to resume")
        return json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
    device = select_device(t.device)
    allocator_tuned = device.type == "cpu" and t.tune_allocator and tune_allocator()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed batch shapes (the partial batch is dropped): tune once

    model = initial_model(config, t.seed)
    params = count_params(model)
    model_summary = summarize(config.model, model)
    macs, warnings = model_summary.macs, model_summary.warnings
    if not allow_over_budget:
        check_budget(params, t.budget)
    monitor_test = config.schedule.name == "plateau" and config.schedule.monitor == "test"

    train_split, val_split, test_split, source = prepare_splits(config, data, device)
    if t.whiten_init:  # needs the data, so after the budget check; it draws no random numbers
        whiten_stem_(model, train_split)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        write_text(out_dir / "config.toml", config_to_toml(config))
    for w in warnings:
        show.message(f"warning: {w}")
    if monitor_test:
        show.message(f"note: {STUDY_MODE_NOTE}")

    model = model.to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer, schedule, start_epoch, wall_before = start_or_restore(config, model, state)
    last_loss = None
    if t.drop_easy:
        last_loss = torch.full((len(train_split),), float("inf"), device=device)
        if state is not None and "last_loss" in state:
            last_loss.copy_(state["last_loss"])
    if state is not None:
        torch.set_rng_state(state["cpu_rng"])
        show.message(f"resuming {out_dir} after epoch {start_epoch}")
    step_model = torch.compile(model) if t.compile else model
    log = MetricsLog(out_dir, keep_until_epoch=start_epoch)
    criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing, reduction="none")
    n, bs = len(train_split), t.batch_size
    flip_base = alternating_flip_base(n, t.seed, device) if config.data.flip_mode == "alternate" else None

    tta_acc = None
    for epoch in range(start_epoch, t.epochs):
        epoch_start = time.perf_counter()
        g = epoch_generator(t.seed, epoch, device)
        order = epoch_order(n, g, last_loss if epoch > 0 else None, t.drop_easy)
        steps = len(order) // bs  # the partial last batch is dropped: BatchNorm on a handful of images is noise
        model.train()
        augment = make_augment(config, epoch)
        train_stem_bias_(model, config, epoch)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        for step in range(steps):
            lr = schedule.lr(epoch + step / steps)
            set_lr(optimizer, lr, config.optim.lr)
            idx = order[step * bs:(step + 1) * bs]
            flips = alternating_flips(flip_base, idx, epoch) if flip_base is not None else None
            x = augment(normalize(train_split.images[idx]), g, flips)
            if t.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = train_split.labels[idx]
            with autocast(device, t.precision):
                logits = step_model(x)
                losses = criterion(logits, y)
                loss = losses.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if last_loss is not None:
                last_loss[idx] = losses.detach().float()
            loss_sum += loss.detach().float()
            correct += (logits.argmax(1) == y).sum()
            show.step(epoch + 1, step + 1, steps, loss.detach())
        train_loss = float(loss_sum) / steps
        if not math.isfinite(train_loss):
            raise TrainingError(f"the training loss became {train_loss} in epoch {epoch + 1}; lower optim.lr")
        train_seconds = time.perf_counter() - epoch_start
        last = epoch + 1 == t.epochs
        val_loss = val_acc = test_loss = test_acc = None
        if val_split is not None:
            val_loss, val_acc = evaluate(model, val_split, batch_size=t.eval_batch_size, precision=t.precision,
                                         channels_last=t.channels_last)
        if last and t.tta != "none":  # one pass gives both the plain and the TTA accuracy
            test_loss, test_acc, tta_acc = evaluate_with_tta(model, test_split, t.tta, batch_size=t.eval_batch_size,
                                                             precision=t.precision, channels_last=t.channels_last)
        elif last or t.eval_test_every_epoch or monitor_test:
            test_loss, test_acc = evaluate(model, test_split, batch_size=t.eval_batch_size, precision=t.precision,
                                           channels_last=t.channels_last)
        schedule.end_epoch(test_acc if monitor_test else val_acc)
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "train_acc": int(correct) / (steps * bs),
               "val_loss": val_loss, "val_acc": val_acc, "test_loss": test_loss, "test_acc": test_acc,
               "seconds": time.perf_counter() - epoch_start, "train_seconds": train_seconds,
               "images_per_s": steps * bs / train_seconds}
        log.append(row)
        show.epoch(row)
        wall = wall_before + time.perf_counter() - wall_start
        save_weights(model, config.model, out_dir / "model.safetensors", extra={"epoch": str(epoch + 1)})
        save_state({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(), "cpu_rng": torch.get_rng_state(), "epoch": epoch + 1,
                    "wall_seconds": wall, **({"last_loss": last_loss} if last_loss is not None else {})},
                   out_dir / "state.safetensors")
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, row)

    final = log.rows[-1]
    if t.tta != "none" and tta_acc is None:  # resumed after the last epoch's checkpoint
        _, _, tta_acc = evaluate_with_tta(model, test_split, t.tta, batch_size=t.eval_batch_size,
                                          precision=t.precision, channels_last=t.channels_last)
    summary = {
        "resbudget_version": __version__,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "preset": config.preset,
        "params": params,
        "macs": macs,
        "budget": t.budget,
        "over_budget": params > t.budget,
        "epochs": t.epochs,
        "test_accuracy": final["test_acc"],
        "test_loss": final["test_loss"],
        "test_accuracy_tta": tta_acc,  # with the t.tta views; test_accuracy is always without
        "val_accuracy": final["val_acc"],
        "train_accuracy": final["train_acc"],
        "wall_seconds": round(wall_before + time.perf_counter() - wall_start, 2),
        "train_seconds": round(sum(r.get("train_seconds") or 0.0 for r in log.rows), 3),  # the steps alone
        "mean_images_per_s": sum(r["images_per_s"] for r in log.rows) / len(log.rows),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "torch_version": torch.__version__,
        "allocator_tuned": allocator_tuned,
        "seed": t.seed,
        "git_commit": git_commit(),
        "data_source": source,
        "plateau_watched_test": monitor_test,
        "notes": [STUDY_MODE_NOTE] if monitor_test else [],
        "warnings": warnings,
        "config": config_to_dict(config),
    }
    write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    (out_dir / "state.safetensors").unlink(missing_ok=True)  # finished: model.safetensors is the result
    with_tta = f" ({100 * tta_acc:.2f}% with {t.tta} TTA)" if tta_acc is not None else ""
    show.message(f"final test accuracy {100 * final['test_acc']:.2f}%{with_tta} after {t.epochs} epochs "
                 f"({summary['wall_seconds']:.0f} s) -> {out_dir}")
    return summary


def evaluate_checkpoint(path: str | os.PathLike, *, data_dir: str | None = None, device: str = "auto",
                        batch_size: int = 1000, precision: str = "fp32", data: CIFAR10 | None = None,
                        model: nn.Module | None = None) -> dict[str, Any]:
    """Test loss and accuracy of a run folder or a .safetensors checkpoint on the CIFAR-10 test set (``model``:
    already loaded from ``path``, e.g. an ensemble, whose forward gives log-probabilities)."""
    if model is None:
        model, _ = load_model(path)
    dev = select_device(device)
    model = model.to(dev).to(memory_format=torch.channels_last)
    data = data if data is not None else load_cifar10(data_dir)
    loss, acc = evaluate(model, data.test.to(dev), batch_size=batch_size, precision=precision)
    result = {"checkpoint": str(path), "test_accuracy": acc, "test_loss": loss, "params": count_params(model),
              "images": len(data.test), "precision": precision, "device": str(dev), "notes": []}
    summary_path = Path(path) / "summary.json" if Path(path).is_dir() else Path(path).parent / "summary.json"
    if summary_path.is_file() and json.loads(summary_path.read_text(encoding="utf-8")).get("plateau_watched_test"):
        result["notes"].append(STUDY_MODE_NOTE)
    return result
