"""An exponential moving average (EMA) of a net's weights, kept beside the net and evaluated in its place.

After optimiser step ``t`` (1, 2, ...) every floating-point tensor of the net's state (weights, biases and the
BatchNorm running statistics, so the averaged net's statistics match its averaged weights) is folded in as

    average <- decay_t * average + (1 - decay_t) * current,   decay_t = min(decay, (1 + t) / (10 + t))

starting from the weights before the first step. The warm-up of ``decay_t`` (as TensorFlow's and timm's EMAs do) keeps
the random initial weights from lingering in the average of a short run: a CIFAR run of a few thousand steps at
decay 0.999 would otherwise still carry e^-3 of them. Integer tensors (BatchNorm's batch counter) are copied.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def ema_decay(decay: float, step: int) -> float:
    """The weight of the old average after optimiser step ``step`` (1-based)."""
    return min(decay, (1 + step) / (10 + step))


class WeightAverage:
    """The EMA of ``model``'s state; :meth:`update` after every optimiser step, :meth:`applied` to evaluate it."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"an EMA decay must be in (0, 1), got {decay}")
        self.decay, self.steps = decay, 0
        self._live = [t for t in model.state_dict().values() if t.is_floating_point()]
        self._counters = [t for t in model.state_dict().values() if not t.is_floating_point()]
        self.tensors = [t.detach().clone() for t in self._live]
        self.counters = [t.detach().clone() for t in self._counters]

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        torch._foreach_lerp_(self.tensors, self._live, 1.0 - ema_decay(self.decay, self.steps))
        for kept, live in zip(self.counters, self._counters):
            kept.copy_(live)

    @contextmanager
    @torch.no_grad()
    def applied(self) -> Iterator[None]:
        """The averaged weights in the net for the block's duration, the live ones back afterwards."""
        live = [t.clone() for t in self._live] + [t.clone() for t in self._counters]
        self.copy_to_model()
        try:
            yield
        finally:
            for target, saved in zip(self._live + self._counters, live):
                target.copy_(saved)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """Put the average into the net for good (the end of training: the average is the result)."""
        for target, kept in zip(self._live + self._counters, self.tensors + self.counters):
            target.copy_(kept)

    def state_dict(self) -> dict:
        return {"steps": self.steps, "tensors": list(self.tensors), "counters": list(self.counters)}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        if len(state["tensors"]) != len(self.tensors) or len(state["counters"]) != len(self.counters):
            raise ValueError("the saved weight average does not fit this net")
        self.steps = int(state["steps"])
        for kept, saved in zip(self.tensors + self.counters, list(state["tensors"]) + list(state["counters"])):
            kept.copy_(saved)
