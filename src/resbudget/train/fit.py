"""The epoch and step loop: lr -> fetch batch -> augment on device -> the step (forward under autocast -> loss ->
backward -> optimiser step: train/step.py, a CUDA graph on a GPU).

:func:`fit` knows nothing of run folders, files or evaluation sets: it gets a prepared net, the training images on
the net's device and a :class:`TrainingState`, and after each epoch hands a row of numbers to its two callbacks.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data import Augment, Split, alternating_flip_base, alternating_flips, normalize
from ..models import ResNet
from ..models.prepare import train_stem_bias_
from .average import WeightAverage
from .config import Config, DataConfig
from .metrics import Progress
from .optim import make_optimizer, set_lr
from .schedules import Schedule
from .step import TrainStep


class TrainingError(RuntimeError):
    pass


@dataclass
class TrainingState:
    """What training needs to go on after an epoch: the optimiser, the schedule, the epochs done, with
    ``train.drop_easy`` each training image's loss when it was last trained on (never seen: infinite), and with
    ``train.ema`` the average of the weights; and the training step (train/step.py), made by :func:`fit`."""

    optimizer: torch.optim.Optimizer
    schedule: Schedule
    epoch: int = 0
    last_loss: torch.Tensor | None = None
    average: WeightAverage | None = None
    step: TrainStep | None = None  # the step, with its CUDA graph once captured (not saved: made again on resume)

    @classmethod
    def start(cls, config: Config, model: ResNet, n_train: int) -> TrainingState:
        device = next(model.parameters()).device
        last_loss = torch.full((n_train,), float("inf"), device=device) if config.train.drop_easy else None
        average = WeightAverage(model, config.train.ema) if config.train.ema else None
        return cls(make_optimizer(config, model), Schedule(config.schedule, config.optim.lr, config.train.epochs),
                   0, last_loss, average)


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


def make_augment(d: DataConfig) -> Augment:
    return Augment(d.crop_padding, d.pad_mode, d.flip, d.rotate_degrees, d.cutout, d.noise, d.policy)


def fit(model: ResNet, config: Config, train: Split, state: TrainingState, *,
        evaluate_epoch: Callable[[int], dict[str, Any]], end_epoch: Callable[[TrainingState, dict[str, Any]], None],
        show: Progress) -> dict[str, Any] | None:
    """Train ``model`` from ``state.epoch`` to ``train.epochs`` on ``train`` (on the model's device), updating
    ``state``. After each epoch: ``evaluate_epoch(epochs done)`` adds its held-out numbers to the epoch's row, the
    schedule sees the monitored accuracy, then ``end_epoch(state, row)`` (logging, checkpoints). Returns the last
    row (None if no epoch was left to run). With ``train.ema`` the net keeps its live weights: the caller puts the
    average in (``state.average.copy_to_model()``) when training is over."""
    t, device = config.train, train.images.device
    criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing, reduction="none")
    n, bs = len(train), t.batch_size
    flip_base = alternating_flip_base(n, t.seed, device) if config.data.flip_mode == "alternate" else None
    augment, row = make_augment(config.data), None
    if state.step is None:
        state.step = TrainStep(model, state.optimizer, criterion, precision=t.precision)
    for epoch in range(state.epoch, t.epochs):
        epoch_start = time.perf_counter()
        g = epoch_generator(t.seed, epoch, device)
        order = epoch_order(n, g, state.last_loss if epoch > 0 else None, t.drop_easy)
        steps = len(order) // bs  # the partial last batch is dropped: BatchNorm on a handful of images is noise
        model.train()
        if t.stem_bias_epochs:
            train_stem_bias_(model, epoch < t.stem_bias_epochs)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        for step in range(steps):
            lr = state.schedule.lr(epoch + step / steps)
            set_lr(state.optimizer, lr, config.optim.lr)
            idx = order[step * bs:(step + 1) * bs]
            flips = alternating_flips(flip_base, idx, epoch) if flip_base is not None else None
            x = augment(normalize(train.images[idx]), g, flips)
            if t.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = train.labels[idx]
            losses, loss, logits = state.step(x, y)
            if state.average is not None:
                state.average.update()
            if state.last_loss is not None:
                state.last_loss[idx] = losses.detach().float()
            loss_sum += loss.detach().float()
            correct += (logits.argmax(1) == y).sum()
            show.step(epoch + 1, step + 1, steps, loss.detach())
        train_loss = float(loss_sum) / steps
        if not math.isfinite(train_loss):
            raise TrainingError(f"the training loss became {train_loss} in epoch {epoch + 1}; lower optim.lr")
        train_seconds = time.perf_counter() - epoch_start
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "train_acc": int(correct) / (steps * bs)}
        with state.average.applied() if state.average is not None else contextlib.nullcontext():
            row.update(evaluate_epoch(epoch + 1))  # the held-out numbers are the averaged net's
        row.update(seconds=time.perf_counter() - epoch_start, train_seconds=train_seconds,
                   images_per_s=steps * bs / train_seconds)
        state.schedule.end_epoch(row["test_acc"] if config.watches_test else row["val_acc"])
        state.epoch = epoch + 1
        end_epoch(state, row)
    return row
