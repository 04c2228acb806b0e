"""The epoch and step loop: lr -> fetch batch -> augment on device -> the step (forward under autocast -> loss ->
backward -> optimiser step: train/step.py, a CUDA graph on a GPU).

:func:`fit` knows nothing of run folders, files or evaluation sets: it gets a prepared net, the training images on
the net's device and a :class:`TrainingState`, and after each epoch hands a row of numbers to its two callbacks.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..data import Augment, Split, alternating_flip_base, alternating_flips, normalize
from ..models import ResNet
from ..models.prepare import train_stem_bias_
from .average import WeightAverage
from .config import Config
from .metrics import Progress
from .optim import make_optimizer, set_lr
from .schedules import Schedule
from .step import TrainStep

if TYPE_CHECKING:
    from .summary import RunSummary


class TrainingError(RuntimeError):
    pass


class DivergedError(TrainingError):
    """Training stopped being finite: the loss of a step, or the weights after an epoch, became inf or NaN. A result
    of the recipe, not a fault of the program: ``epoch`` and ``step`` (1-based) say where, ``summary`` is the run's
    record of it where a run folder wrote one."""

    def __init__(self, message: str, epoch: int, step: int, summary: RunSummary | None = None) -> None:
        super().__init__(message)
        self.epoch, self.step, self.summary = epoch, step, summary


CHECK_EVERY = 20  # steps between two looks at whether the loss is still finite (a device sync on a GPU)


def diverged(epoch: int, step: int, steps: int, what: str, lr: float, precision: str) -> DivergedError:
    """The error that ends a diverged run: where, what, and what to try (``lr``: the recipe's optim.lr)."""
    tries = f"try a lower optim.lr (it is {lr:.3g}: e.g. --set optim.lr={lr / 4:.3g})"
    if precision == "bf16":
        tries += " or train.precision=fp32"
    return DivergedError(f"training diverged in epoch {epoch}, step {step} of {steps}: {what}; {tries}", epoch, step)


def check_loss(step_losses: torch.Tensor, done: int, epoch: int, steps: int, lr: float, precision: str) -> None:
    """:class:`DivergedError` if one of the first ``done`` steps of epoch ``epoch`` (0-based) had a loss that was not
    finite (``step_losses``: the epoch's loss of each step)."""
    bad = (~torch.isfinite(step_losses[:done])).nonzero()
    if len(bad):
        raise diverged(epoch + 1, int(bad[0]) + 1, steps, "its loss was not finite", lr, precision)


def finite_state(state: TrainingState) -> bool:
    """Whether every floating-point tensor of the net (weights and BatchNorm statistics) and of its weight average
    is finite."""
    tensors = [t for t in state.model.state_dict().values() if t.is_floating_point()]
    if state.average is not None:
        tensors += state.average.tensors
    return bool(torch.stack([t.isfinite().all() for t in tensors]).all())


@dataclass
class TrainingState:
    """Everything a run needs to go on after an epoch, and its one owner: the net, the optimiser, the schedule, the
    epochs done, with ``train.drop_easy`` each training image's loss when it was last trained on (never seen:
    infinite), with ``train.ema`` the average of the weights, and the wall time spent by earlier processes of the
    run. It saves and restores itself (:meth:`state_dict`, :meth:`load_state_dict`: what ``--resume`` reads), lends
    the weights to evaluate (:meth:`evaluated`) and hands over the finished net (:meth:`finished_model`). The
    training step (train/step.py) is made by :func:`fit` and not saved: a resumed run makes it again."""

    model: ResNet
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    epoch: int = 0
    last_loss: torch.Tensor | None = None
    average: WeightAverage | None = None
    wall_before: float = 0.0  # seconds spent by the processes that ran the earlier epochs
    step: TrainStep | None = None
    stopped: str | None = None  # why training ended before its last epoch's last step (a time limit), if it did

    @classmethod
    def start(cls, config: Config, model: ResNet, n_train: int) -> TrainingState:
        device = next(model.parameters()).device
        last_loss = torch.full((n_train,), float("inf"), device=device) if config.train.drop_easy else None
        average = WeightAverage(model, config.train.ema) if config.train.ema else None
        return cls(model, make_optimizer(config, model),
                   Schedule(config.schedule, config.optim.lr, config.train.epochs), 0, last_loss, average)

    def _owners(self) -> dict[str, Any]:
        """The pieces that save and restore themselves, by their key in the saved state."""
        owners = {"model": self.model, "optimizer": self.optimizer, "schedule": self.schedule}
        return owners | ({"average": self.average} if self.average is not None else {})

    def state_dict(self, wall_seconds: float) -> dict[str, Any]:
        """What ``--resume`` needs, ``wall_seconds`` being the run's time so far over all its processes."""
        state = {key: owner.state_dict() for key, owner in self._owners().items()}
        state.update(cpu_rng=torch.get_rng_state(), epoch=self.epoch, wall_seconds=wall_seconds)
        return state | ({"last_loss": self.last_loss} if self.last_loss is not None else {})

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        for key, owner in self._owners().items():
            if key not in saved:
                raise TrainingError(f"the saved training state has no {key!r} to resume from (a run with "
                                    "train.ema needs its weight average)")
            owner.load_state_dict(saved[key])
        if self.last_loss is not None and "last_loss" in saved:
            self.last_loss.copy_(saved["last_loss"])
        torch.set_rng_state(saved["cpu_rng"])
        self.epoch, self.wall_before = int(saved["epoch"]), float(saved["wall_seconds"])

    def evaluated(self) -> contextlib.AbstractContextManager:
        """The weights held-out numbers are taken with, in the net for the block's duration: the average if there is
        one, else the trained weights themselves."""
        return self.average.applied() if self.average is not None else contextlib.nullcontext()

    def finished_model(self) -> ResNet:
        """The net to evaluate, calibrate and save once training is over: with ``train.ema`` the average is put in
        for good (the average is the result)."""
        if self.average is not None:
            self.average.copy_to_model()
        return self.model


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


def fit(config: Config, train: Split, state: TrainingState, *, evaluate_epoch: Callable[[int], dict[str, Any]],
        monitor: str | None, end_epoch: Callable[[TrainingState, dict[str, Any]], None], show: Progress,
        stop: Callable[[float], str | None] | None = None) -> None:
    """Train ``state.model`` from ``state.epoch`` to ``train.epochs`` on ``train`` (on the net's device), updating
    ``state``. After each epoch: ``evaluate_epoch(epochs done)`` adds its held-out numbers to the epoch's row (taken
    with :meth:`TrainingState.evaluated`), the schedule sees the row's ``monitor`` value (e.g. ``"val_acc"``; None:
    it watches nothing), then ``end_epoch(state, row)`` (logging, checkpoints).

    ``stop`` (a time limit) is asked after every step, with the training images per second of the epoch so far: a
    reason ends training there, the epoch cut short still evaluated and ended as any other, the reason kept in
    ``state.stopped``.

    A step whose loss is not finite, or an epoch after which a weight is not, raises :class:`DivergedError` naming the
    first such step (looked at every ``CHECK_EVERY`` steps and at the end of each epoch), before that epoch ends:
    ``state`` then holds the weights of that step, and the last ended epoch is the last finite one."""
    model, t, device = state.model, config.train, train.images.device
    criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing, reduction="none")
    n, bs = len(train), t.batch_size
    flip_base = alternating_flip_base(n, t.seed, device) if config.data.flip_mode == "alternate" else None
    augment = Augment.from_config(config.data, train.norm)
    if state.step is None:
        state.step = TrainStep(model, state.optimizer, criterion, precision=t.precision, say=show.warn)
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
        step_losses = torch.empty(steps, device=device)  # read every CHECK_EVERY steps: one sync, not one a step
        for step in range(steps):
            lr = state.schedule.lr(epoch + step / steps)
            set_lr(state.optimizer, lr, config.optim.lr)
            idx = order[step * bs:(step + 1) * bs]
            flips = alternating_flips(flip_base, idx, epoch) if flip_base is not None else None
            x = augment(normalize(train.images[idx], train.norm), g, flips)
            if t.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = train.labels[idx]
            losses, loss, logits = state.step(x, y)
            if state.average is not None:
                state.average.update()
            if state.last_loss is not None:
                state.last_loss[idx] = losses.detach().float()
            loss_sum += loss.detach().float()
            step_losses[step] = loss.detach()
            if (step + 1) % CHECK_EVERY == 0:
                check_loss(step_losses, step + 1, epoch, steps, config.optim.lr, t.precision)
            correct += (logits.argmax(1) == y).sum()
            show.step(epoch + 1, step + 1, steps, loss.detach())
            if stop is not None and (step + 1 < steps or epoch + 1 < t.epochs):  # not after the very last step
                state.stopped = stop((step + 1) * bs / (time.perf_counter() - epoch_start))
                if state.stopped:
                    steps = step + 1
                    break
        check_loss(step_losses, steps, epoch, steps, config.optim.lr, t.precision)
        if not finite_state(state):
            raise diverged(epoch + 1, steps, steps, "its weights were no longer finite (every loss of the epoch was)",
                           config.optim.lr, t.precision)
        train_loss = float(loss_sum) / steps
        train_seconds = time.perf_counter() - epoch_start
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "train_acc": int(correct) / (steps * bs)}
        with state.evaluated():
            row.update(evaluate_epoch(epoch + 1))
        row.update(seconds=time.perf_counter() - epoch_start, train_seconds=train_seconds,
                   images_per_s=steps * bs / train_seconds, stopped=state.stopped)
        state.schedule.end_epoch(row[monitor] if monitor is not None else None)
        state.epoch = epoch + 1
        end_epoch(state, row)
        if state.stopped:
            return
