"""Test-set report of a saved ensemble: every member, every combination rule, the oracle and the disagreement."""

from __future__ import annotations

import os
from typing import Any

import torch

from ..data import Dataset, load_dataset
from ..models import DEFAULT_BUDGET, count_params
from ..train.config import TrainConfig
from ..train.evaluate import batched_outputs, select_device
from .combine import ensemble_metrics
from .model import load_ensemble


@torch.no_grad()
def evaluate_ensemble(folder: str | os.PathLike, *, data: Dataset | str | os.PathLike | None = None,
                      device: str = "auto", batch_size: int = 1000, precision: str | None = None,
                      budget: int = DEFAULT_BUDGET, allow_over_budget: bool = False) -> dict[str, Any]:
    precision = precision or TrainConfig().precision  # as the members trained and were scored
    ens = load_ensemble(folder, budget=budget, allow_over_budget=allow_over_budget)
    dev = select_device(device)
    ens = ens.to(dev).to(memory_format=torch.channels_last)
    test = load_dataset(data).test.to(dev)
    chunks = [logits for logits, _ in batched_outputs(ens.member_logits, test, batch_size=batch_size,
                                                       precision=precision)]
    metrics = ensemble_metrics(torch.cat(chunks, 1), test.labels)
    return {"ensemble": str(folder), "images": len(test), "precision": precision,
            "member_params": [count_params(m) for m in ens.members], "params": count_params(ens), **metrics}
