"""An ensemble saved as one folder (manifest + one safetensors per member) that loads like a single model."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import read_json, write_text
from ..models import DEFAULT_BUDGET, ModelSpec, check_budget, check_spec, count_params
from ..train.checkpoint import CheckpointError, model_from_weights, read_weights, save_weights
from .combine import RULES, mean_logits, mean_softmax

MANIFEST = "ensemble.json"
FORMAT = "resbudget-ensemble-v1"
MAX_MEMBERS = 64
MEMBER_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,200}\.safetensors")


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


def check_ensemble_budget(specs: list[ModelSpec], budget: int, allow_over_budget: bool = False) -> list[int]:
    """Each member within budget/K and the total within budget (unless allowed over it; the hard ceilings on one
    net always hold); returns the members' parameter counts, computed from the specs alone."""
    counts = [check_spec(s, allow_over_budget=True, what=f"member {i}") for i, s in enumerate(specs)]
    if not allow_over_budget:
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
    manifest = {"format": FORMAT, "members": entries, "rules": list(RULES), **(extra or {})}
    write_text(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")  # last: its presence marks a whole folder
    return folder


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of an ensemble folder, checked as a schema: an object of the resbudget format whose ``members``
    is a non-empty list of objects, each naming a plain ``.safetensors`` file inside the folder (no path, no link
    out of it) and, optionally, its integer parameter count."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.exists() and not path.is_symlink():
        raise CheckpointError(f"{folder}: no {MANIFEST}, not an ensemble folder")
    manifest = read_json(path, CheckpointError)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a resbudget ensemble manifest (a JSON object with format {FORMAT!r})")
    members = manifest.get("members")
    if not isinstance(members, list) or not 1 <= len(members) <= MAX_MEMBERS:
        raise CheckpointError(f"{path}: members must be a list of 1 to {MAX_MEMBERS} members, got {members!r:.80}")
    for i, entry in enumerate(members):
        where = f"{path}: members[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise CheckpointError(f"{where} must be an object with a \"file\" name, got {entry!r:.80}")
        name = entry["file"]
        if not MEMBER_FILE.fullmatch(name):
            raise CheckpointError(f"{where}: file {name!r:.80} must be a plain .safetensors file name inside the "
                                  "ensemble folder (no path)")
        if (folder / name).is_symlink():
            raise CheckpointError(f"{where}: {name} is a symbolic link; members must be files inside the folder")
        params = entry.get("params")
        if params is not None and (isinstance(params, bool) or not isinstance(params, int)):
            raise CheckpointError(f"{where}: params must be an integer, got {params!r:.80}")
    return manifest


def load_ensemble(folder: str | os.PathLike, rule: str = "mean_softmax", *, budget: int = DEFAULT_BUDGET,
                  allow_over_budget: bool = False) -> Ensemble:
    """The ensemble saved in ``folder``. Untrusted: the manifest is checked as a schema (:func:`read_manifest`),
    every member as a checkpoint (``model_from_weights``), the parameter counts are recomputed from the members and
    must match what the manifest says, and the budget is checked (each member within budget/K, the total within
    budget) unless ``allow_over_budget``."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    specs, all_tensors = [], []
    for entry in manifest["members"]:
        spec, tensors, _ = read_weights(folder / entry["file"])
        specs.append(spec)
        all_tensors.append(tensors)
    counts = check_ensemble_budget(specs, budget, allow_over_budget)
    stated = [entry.get("params") for entry in manifest["members"]]
    for i, (said, n) in enumerate(zip(stated, counts)):
        if said is not None and said != n:
            raise CheckpointError(f"{folder / MANIFEST}: members[{i}] says {said:,} parameters, its weights have "
                                  f"{n:,}; the manifest does not describe these files")
    if "member_params" in manifest and manifest["member_params"] != counts:
        raise CheckpointError(f"{folder / MANIFEST}: member_params {manifest['member_params']!r:.80} differs from "
                              f"the members' own counts {counts}")
    members = [model_from_weights(spec, tensors, folder / entry["file"], allow_over_budget=True)
               for spec, tensors, entry in zip(specs, all_tensors, manifest["members"])]
    return Ensemble(members, specs, rule).eval()


def is_ensemble(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()
