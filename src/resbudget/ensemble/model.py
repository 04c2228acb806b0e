"""An ensemble saved as one folder (manifest + one safetensors per member) that loads like a single model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from .._io import write_text
from ..models import ModelSpec, build_model, check_budget, count_params
from ..train.checkpoint import CheckpointError, read_weights, save_weights
from .combine import RULES, mean_logits, mean_softmax

MANIFEST = "ensemble.json"


class Ensemble(nn.Module):
    """K members; ``forward`` returns log of the combined probabilities, so argmax and cross-entropy work as on
    logits (``mean_softmax``), or the mean logits (``mean_logits``). ``member_logits`` gives (K, N, C)."""

    def __init__(self, members: list[nn.Module], specs: list[ModelSpec], rule: str = "mean_softmax") -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if rule not in ("mean_softmax", "mean_logits"):
            raise ValueError(f"forward combines by mean_softmax or mean_logits, not {rule!r} (majority_vote has no "
                             "probabilities; use ensemble_metrics for it)")
        self.members = nn.ModuleList(members)
        self.specs = list(specs)
        self.rule = rule

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.member_logits(x)
        if self.rule == "mean_logits":
            return mean_logits(logits)
        return mean_softmax(logits).clamp_min(1e-12).log()


def check_ensemble_budget(specs: list[ModelSpec], budget: int) -> list[int]:
    """Each member within budget/K and the total within budget; returns the members' parameter counts."""
    counts = [count_params(build_model(s)) for s in specs]
    share = budget // len(specs)
    for i, n in enumerate(counts):
        check_budget(n, share, what=f"member {i} (budget/K = {budget:,}/{len(specs)})")
    check_budget(sum(counts), budget, what=f"the ensemble of {len(specs)} members")
    return counts


def save_ensemble(folder: str | os.PathLike, members: list[nn.Module], specs: list[ModelSpec],
                  extra: dict | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (member, spec) in enumerate(zip(members, specs, strict=True)):
        name = f"member{i}.safetensors"
        save_weights(member, spec, folder / name)
        entries.append({"file": name, "params": count_params(member)})
    manifest = {"format": "resbudget-ensemble-v1", "members": entries, "rules": list(RULES), **(extra or {})}
    write_text(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")  # last: its presence marks a whole folder
    return folder


def load_ensemble(folder: str | os.PathLike, rule: str = "mean_softmax") -> Ensemble:
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: no {MANIFEST}, not an ensemble folder") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{folder / MANIFEST}: not valid JSON ({e})") from None
    if manifest.get("format") != "resbudget-ensemble-v1":
        raise CheckpointError(f"{folder / MANIFEST}: not a resbudget ensemble manifest")
    members, specs = [], []
    for entry in manifest["members"]:
        spec, tensors, _ = read_weights(folder / entry["file"])
        model = build_model(spec)
        model.load_state_dict(tensors)
        members.append(model.eval())
        specs.append(spec)
    return Ensemble(members, specs, rule).eval()


def is_ensemble(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()
