"""Train K members of one spec at once, as one grouped network (``GroupedResNet``).

Each member keeps everything it would have had alone: its initialisation (``torch.manual_seed(seed)`` before the
build, as ``train`` does), its data order and its augmentation (the generator of ``(seed, epoch)`` that ``train``
uses). So the members come out equal to K runs of ``train``, up to float rounding: only the arithmetic is shared,
in K-times-wider grouped convolutions. Whether that is faster depends on the hardware (see docs/RESULTS.md).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn

from .._io import read_toml, write_text
from ..data import CIFAR10, Split, alternating_flip_base, alternating_flips, normalize
from ..models import ResNet
from ..train.checkpoint import load_state, save_state
from ..train.config import Config, ConfigError, config_from_dict, config_to_dict, config_to_toml
from ..train.cpu import tune_allocator
from ..train.loop import (RunFolderError, TrainingError, autocast, batched_outputs, epoch_generator, freeze_,
                          initial_model, make_augment, prepare_splits, select_device, set_lr, start_or_restore,
                          train_stem_bias_)
from ..train.metrics import MetricsLog, Progress
from .grouped import GroupedResNet


@torch.no_grad()
def _member_accuracies(model: GroupedResNet, split: Split, config: Config) -> list[float]:
    was_training = model.training
    model.eval()
    correct = torch.zeros(model.k, dtype=torch.int64, device=split.images.device)
    fn = lambda x: model(x.repeat(1, model.k, 1, 1))  # noqa: E731  every member sees the same test images
    for logits, y in batched_outputs(fn, split, batch_size=config.train.eval_batch_size,
                                     precision=config.train.precision, channels_last=config.train.channels_last):
        correct += (logits.argmax(-1) == y[:, None]).sum(0)
    model.train(was_training)
    return (correct.double() / max(len(split), 1)).tolist()


def _open(run_dir: Path, config: Config, seeds: list[int]) -> dict[str, Any] | None:
    state_path = run_dir / "state.safetensors"
    if not state_path.is_file():
        if run_dir.exists() and any(run_dir.iterdir()):
            raise RunFolderError(f"{run_dir} holds an unfinished run without a checkpoint; remove it to start again")
        return None
    stored = config_from_dict(read_toml(run_dir / "config.toml", RunFolderError))
    state = load_state(state_path)
    if config_to_dict(stored) != config_to_dict(config) or list(state["seeds"]) != seeds:
        raise RunFolderError(f"{run_dir} holds an interrupted run of another config or other seeds; "
                             "choose another --out folder")
    return state


def train_together(config: Config, run_dir: str | os.PathLike, seeds: list[int], *, data: CIFAR10 | None = None,
                   progress: bool = True, stream: TextIO | None = None) -> tuple[list[ResNet], dict[str, Any]]:
    """Train one member per seed together in ``run_dir`` (resumed if interrupted there). Returns the trained members
    and a summary: per-member final validation accuracy (if there is a validation split), wall time, throughput."""
    if config.schedule.name == "plateau":
        raise ConfigError("grouped training shares one learning rate, but a plateau schedule reacts to each member's "
                          "own accuracy; use --mode sequential, or a schedule that does not watch a metric")
    if config.optim.name == "muon":
        raise ConfigError("grouped training cannot use optim.name = 'muon': Muon orthogonalises a layer's whole "
                          "filter bank, which in the grouped net would mix the members; use --mode sequential")
    if config.train.drop_easy:
        raise ConfigError("grouped training cannot use train.drop_easy: the members would need different images in "
                          "the same step; use --mode sequential")
    wall_start = time.perf_counter()
    run_dir = Path(run_dir)
    t, k = config.train, len(seeds)
    state = _open(run_dir, config, seeds)
    device = select_device(t.device)
    if device.type == "cpu" and t.tune_allocator:
        tune_allocator()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    train_split, val_split, _, _ = prepare_splits(config, data, device)
    model = GroupedResNet.from_members([initial_model(config, seed, train_split) for seed in seeds]).to(device)
    freeze_(model, config)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.toml", config_to_toml(config))
    optimizer, schedule, start_epoch, wall_before = start_or_restore(config, model, state)
    step_model = torch.compile(model) if t.compile else model
    show = Progress(t.epochs, stream=stream, enabled=progress)
    log = MetricsLog(run_dir, keep_until_epoch=start_epoch)
    criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
    n, bs = len(train_split), t.batch_size
    steps = n // bs
    flip_bases = [alternating_flip_base(n, seed, device) if config.data.flip_mode == "alternate" else None
                  for seed in seeds]
    val_accs: list[float] | None = None

    for epoch in range(start_epoch, t.epochs):
        epoch_start = time.perf_counter()
        gens = [epoch_generator(seed, epoch, device) for seed in seeds]
        orders = [torch.randperm(n, generator=g, device=device) for g in gens]
        model.train()
        augment = make_augment(config, epoch)
        train_stem_bias_(model, config, epoch)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros(k, device=device, dtype=torch.int64)
        for step in range(steps):
            lr = schedule.lr(epoch + step / steps)
            set_lr(optimizer, lr, config.optim.lr)
            xs, ys = [], []
            for g, order, base in zip(gens, orders, flip_bases):  # each member: own images, order, augmentation
                idx = order[step * bs:(step + 1) * bs]
                flips = alternating_flips(base, idx, epoch) if base is not None else None
                xs.append(augment(normalize(train_split.images[idx]), g, flips))
                ys.append(train_split.labels[idx])
            x, y = torch.cat(xs, 1), torch.stack(ys, 1)  # (B, K*3, H, W), (B, K)
            if t.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, t.precision):
                logits = step_model(x)  # (B, K, classes)
                # the sum of the members' own mean losses, so each gets the gradient it would get alone
                loss = criterion(logits.flatten(0, 1), y.flatten()) * k
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach().float() / k
            correct += (logits.argmax(-1) == y).sum(0)
            show.step(epoch + 1, step + 1, steps, loss.detach() / k)
        train_loss = float(loss_sum) / steps
        if not math.isfinite(train_loss):
            raise TrainingError(f"the training loss became {train_loss} in epoch {epoch + 1}; lower optim.lr")
        train_seconds = time.perf_counter() - epoch_start
        val_accs = _member_accuracies(model, val_split, config) if val_split is not None else None
        schedule.end_epoch(None)
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss,
               "train_acc": float(correct.sum()) / (k * steps * bs),
               "val_acc": sum(val_accs) / k if val_accs else None,
               "seconds": time.perf_counter() - epoch_start, "train_seconds": train_seconds,
               "images_per_s": k * steps * bs / train_seconds}
        log.append(row)
        show.epoch(row)
        save_state({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(), "epoch": epoch + 1, "seeds": seeds,
                    "wall_seconds": wall_before + time.perf_counter() - wall_start}, run_dir / "state.safetensors")

    trained = [m.eval() for m in model.to_members()]
    summary = {"mode": "together", "seeds": seeds, "epochs": t.epochs, "member_val_accuracy": val_accs,
               "member_images_per_s": sum(r["images_per_s"] for r in log.rows) / max(len(log.rows), 1),
               "wall_seconds": round(wall_before + time.perf_counter() - wall_start, 2)}
    return trained, summary
