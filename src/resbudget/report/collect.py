"""Gather finished run folders and reduce them to one row per experiment (mean ± std over seeds)."""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._io import read_json, read_jsonl
from ..train.summary import RunSummary


class ReportError(ValueError):
    pass


@dataclass
class Run:
    path: Path
    summary: RunSummary
    metrics: list[dict[str, Any]]

    @property
    def experiment(self) -> str:
        exp = self.summary.config.get("experiment", {})
        return exp.get("name") or self.summary.preset or self.path.name


@dataclass
class Row:
    experiment: str
    model: str
    params: int
    macs: int
    epochs: int
    schedule: str
    optimizer: str
    seeds: list[int]
    accuracies: list[float]  # final-epoch test accuracy of each seed that did not diverge, in %
    wall_seconds: float  # mean over seeds
    paper_accuracy: list[float]
    watched_test: bool
    description: str = ""
    validation_only: bool = False  # search trials: ``accuracies`` are on their validation split (no test was read)
    runs: list[Run] = field(default_factory=list)
    diverged: list[int] = field(default_factory=list)  # seeds whose training stopped being finite: no accuracy

    @property
    def mean(self) -> float:
        """The mean over the seeds that did not diverge (NaN where every seed diverged)."""
        return statistics.mean(self.accuracies) if self.accuracies else float("nan")

    @property
    def std(self) -> float:
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0


def find_runs(roots: list[str | os.PathLike]) -> list[Run]:
    """Every finished run (a folder with summary.json) under ``roots``; unfinished ones are left out."""
    runs = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise ReportError(f"{root} does not exist")
        for summary_path in sorted(root.rglob("summary.json")):
            folder = summary_path.parent
            summary = read_json(summary_path, ReportError)
            metrics = read_jsonl(folder / "metrics.jsonl", ReportError)
            if not RunSummary.is_summary(summary):
                raise ReportError(f"{summary_path}: not a resbudget run summary")
            try:
                runs.append(Run(folder, RunSummary.from_dict(summary), metrics))
            except (TypeError, ValueError) as e:
                raise ReportError(f"{summary_path}: not a resbudget run summary ({e})") from None
    if not runs:
        raise ReportError(f"no finished runs (summary.json) under {', '.join(map(str, roots))}")
    return runs


def describe_schedule(config: dict[str, Any]) -> str:
    s, o = config["schedule"], config["optim"]
    lr = f"lr {o['lr']:g}"
    if s["name"] == "plateau":
        factor = "÷√10" if abs(s["factor"] - 10 ** -0.5) < 1e-6 else f"×{s['factor']:g}"
        return f"plateau {factor} p{s['patience']} ({s['monitor']}), {lr}"
    if s["name"] == "warmup":
        return f"warm-up {s['warmup_epochs']:g} + {s['decay']}, {lr}"
    if s["name"] == "step":
        return f"step {s['milestones']}, {lr}"
    return f"{s['name']}, {lr}"


def _recipe(config: dict[str, Any]) -> dict[str, Any]:
    """What must match between seeds of one experiment: all but the seed, the data's location and the device."""
    out = {k: v for k, v in config.items() if k not in ("train", "data")}
    out["train"] = {k: v for k, v in config["train"].items() if k not in ("seed", "device")}
    out["data"] = {k: v for k, v in config["data"].items() if k != "data_dir"}
    return out


def summarize_runs(runs: list[Run]) -> list[Row]:
    """One row per experiment, in the order first seen; seeds of one experiment must share everything else."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.experiment, []).append(run)
    rows = []
    for name, group in groups.items():
        first = group[0].summary
        config = first.config
        seen: dict[int, Path] = {}
        for run in group:
            if run.summary.seed in seen:
                raise ReportError(f"experiment {name!r} has two runs with seed {run.summary.seed}: "
                                  f"{seen[run.summary.seed]} and {run.path}; report one of them")
            seen[run.summary.seed] = run.path
        for other in group[1:]:
            if (_recipe(config) != _recipe(other.summary.config) or other.summary.epochs != first.epochs
                    or other.summary.validation_only != first.validation_only):
                raise ReportError(f"runs of experiment {name!r} differ in more than the seed: {group[0].path} vs "
                                  f"{other.path}")
        o = config["optim"]
        optimizer = o["name"] + (" nesterov" if o["name"] == "sgd" and o.get("nesterov") else "")
        if o["weight_decay"] == 0:
            optimizer += ", no wd"
        rows.append(Row(
            experiment=name, model=first.preset or "custom", params=first.params, macs=first.macs,
            epochs=first.epochs, schedule=describe_schedule(config), optimizer=optimizer,
            seeds=[r.summary.seed for r in group],
            accuracies=[100 * r.summary.finished_accuracy for r in group if r.summary.diverged is None],
            diverged=[r.summary.seed for r in group if r.summary.diverged is not None],
            wall_seconds=statistics.mean(r.summary.wall_seconds for r in group),
            paper_accuracy=list(config.get("experiment", {}).get("paper_accuracy", [])),
            watched_test=any(r.summary.plateau_watched_test for r in group),
            description=config.get("experiment", {}).get("description", ""), runs=group,
            validation_only=first.validation_only,
        ))
    return rows

