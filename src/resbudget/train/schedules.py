"""Learning-rate schedules as plain objects: an lr per step, and a state_dict of plain numbers for --resume."""

from __future__ import annotations

import math

from .config import ScheduleConfig


class Schedule:
    """Sets the lr for every step; ``end_epoch`` lets the plateau schedule react to the monitored accuracy."""

    def __init__(self, cfg: ScheduleConfig, base_lr: float, epochs: int) -> None:
        self.cfg, self.base_lr, self.epochs = cfg, base_lr, epochs
        self.plateau_scale = 1.0
        self.best = -math.inf
        self.bad_epochs = 0

    def lr(self, progress: float) -> float:
        """``progress``: epochs done, fractional (epoch 3, half-way = 3.5)."""
        c, base = self.cfg, self.base_lr
        if c.name == "constant":
            return base
        if c.name == "cosine":
            t_max = c.t_max or self.epochs
            t = min(progress, t_max) / t_max
            return c.min_lr + (base - c.min_lr) * 0.5 * (1 + math.cos(math.pi * t))
        if c.name == "warmup":
            if progress < c.warmup_epochs:
                return base * progress / c.warmup_epochs
            t = (progress - c.warmup_epochs) / (self.epochs - c.warmup_epochs)
            shape = 1 - t if c.decay == "linear" else 0.5 * (1 + math.cos(math.pi * t))
            return c.min_lr + (base - c.min_lr) * max(shape, 0.0)
        if c.name == "step":
            drops = sum(1 for m in c.milestones if progress >= m)
            return base * c.gamma**drops
        if c.name == "plateau":
            return max(base * self.plateau_scale, c.min_lr)
        raise ValueError(f"unknown schedule {c.name!r}")

    def end_epoch(self, monitored_accuracy: float | None) -> None:
        """ReduceLROnPlateau on accuracy (mode max, relative threshold 1e-4 as in torch)."""
        if self.cfg.name != "plateau" or monitored_accuracy is None:
            return
        if monitored_accuracy > self.best * (1 + 1e-4):
            self.best, self.bad_epochs = monitored_accuracy, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.cfg.patience:
                self.plateau_scale *= self.cfg.factor
                self.bad_epochs = 0

    def state_dict(self) -> dict[str, float]:
        return {"plateau_scale": self.plateau_scale, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.plateau_scale = float(state["plateau_scale"])
        self.best = float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])

