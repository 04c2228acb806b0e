"""What a run under a time limit leaves room for after training: its evaluations, timed on the net itself before the
first step, with fewer TTA views where the limit cannot hold them all, and refused where it cannot hold even one.

A net's evaluation costs what its forward passes cost, which depends on the net (its MACs, its widths, the memory its
maps take) far more than on how fast it trained; so it is measured, not derived from the training speed.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data import Split
from .config import ConfigError, TrainConfig
from .evaluate import batched_outputs
from .tta import VIEWS

RESERVE_SECONDS = 2.0  # writing the weights, metrics and summary at the end
EVAL_SHARE_MAX = 0.5  # the evaluations may take at most this share of the time left before training, views cut to fit
STEP_PER_VIEW = 3.0  # a training step costs about a forward and a backward pass (twice a forward) per image


class TimeLimitError(ConfigError):
    pass


@dataclass(frozen=True)
class TimeLimit:
    """The seconds a whole run may take, counted from ``started`` (a ``time.perf_counter()`` value; by default, when
    the limit is made) and over all processes of a resumed run, and ``plan``: how the recipe was chosen for it
    (train/timed.py), which the summary records."""

    seconds: float
    started: float = dataclasses.field(default_factory=time.perf_counter)
    plan: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not (self.seconds > 0 and math.isfinite(self.seconds)):
            raise ConfigError(f"the time limit must be a positive number of seconds, got {self.seconds}")


@dataclass(frozen=True)
class Evaluations:
    """The held-out scoring a run still has to do after its last step, and the seconds one view of one image takes:
    ``per_epoch`` images at the end of the epoch (one view), ``final`` images with each TTA view, and ``fit``
    validation images for the temperature, with the same views."""

    seconds_per_view: float
    per_epoch: int
    final: int
    fit: int

    def seconds(self, views: int) -> float:
        return self.seconds_per_view * (self.per_epoch + (self.final + self.fit) * views)


def seconds_per_view(model: nn.Module, split: Split, t: TrainConfig) -> float:
    """The seconds one image takes through ``model`` in eval mode, as the run scores (its batch size, precision and
    layout), timed on one batch of ``split``. The batch is the run's own, since a wide net's large batches cost more
    per image than small ones (their maps no longer fit the caches); its first-call set-up is in the time, so the
    estimate errs towards leaving more room."""
    probe = split.subset(torch.arange(min(t.eval_batch_size, len(split)), device=split.images.device))
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    for _ in batched_outputs(model, probe, batch_size=len(probe), precision=t.precision,
                             channels_last=t.channels_last):
        pass
    if probe.images.device.type == "cuda":
        torch.cuda.synchronize(probe.images.device)
    model.train(was_training)
    return (time.perf_counter() - start) / len(probe)


def first_step_seconds(per_view: float, batch_size: int) -> float:
    """What the first training step is expected to cost, before any has run: :data:`STEP_PER_VIEW` forward passes
    of each image of the batch."""
    return STEP_PER_VIEW * per_view * batch_size


def tta_that_fits(evaluations: Evaluations, tta: str, seconds_left: float, limit: float,
                  step_seconds: float = 0.0) -> str:
    """The TTA mode for a run with ``seconds_left`` before its first step: the one with the most views, at most
    ``tta``'s, whose evaluations take at most :data:`EVAL_SHARE_MAX` of what is left (else one view, if its
    evaluations fit beside one step of ``step_seconds``). :class:`TimeLimitError` where even that does not fit."""
    modes = sorted((m for m in VIEWS if VIEWS[m] <= VIEWS[tta]), key=VIEWS.get, reverse=True)
    for mode in modes:
        if evaluations.seconds(VIEWS[mode]) <= EVAL_SHARE_MAX * seconds_left:
            return mode
    if evaluations.seconds(1) + step_seconds <= seconds_left:
        return "none"
    raise TimeLimitError(f"the time limit of {limit:.0f} s cannot be kept: one training step and the evaluations "
                         f"after it would take about {step_seconds + evaluations.seconds(1):.0f} s of the "
                         f"{max(seconds_left, 0):.0f} s left; give more time, or a smaller net or held-out split")
