"""What a search found: the trials table, the Pareto fronts (parameters and wall time against validation accuracy),
the parameter importances, and the best trial's complete config as a file ``resbudget train`` takes."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, safe in CI
import matplotlib.pyplot as plt
import optuna
from optuna.trial import FrozenTrial, TrialState

from .._io import write_text
from ..train import config_from_dict, config_to_toml

COLUMNS = ("trial", "state", "val_acc", "params", "macs", "seconds", "epochs", "host", "note", "drawn")


def trial_row(t: FrozenTrial) -> dict[str, Any]:
    u = t.user_attrs
    note = (u.get("rejected") or u.get("stopped") or (f"failed: {u['error']}" if "error" in u else "")
            or ("interrupted (run again)" if u.get("interrupted") else "")
            or ("the base recipe's values" if u.get("base_recipe") else ""))
    retry = t.system_attrs.get("failed_trial", u.get("retry_of"))
    if retry is not None:
        note = f"retry of trial {retry}" + (f"; {note}" if note else "")
    return {"trial": t.number, "state": "rejected" if "rejected" in u else t.state.name.lower(),
            "val_acc": round(100 * t.value, 2) if t.value is not None else None, "params": u.get("params"),
            "macs": u.get("macs"), "seconds": u.get("seconds"), "epochs": u.get("epochs_done"), "host": u.get("host"),
            "note": note, "drawn": json.dumps(t.params, sort_keys=True)}


def pareto_front(points: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """The points (cost, accuracy, trial) that no other beats on both: no cheaper-or-equal point is more accurate."""
    front: list[tuple[float, float, int]] = []
    for cost, acc, number in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or acc > front[-1][1]:
            front.append((cost, acc, number))
    return front


def _plot_front(trials: list[FrozenTrial], key: str, label: str, title: str, path: Path) -> Path:
    points = [(t.user_attrs[key], 100 * t.value, t.number) for t in trials if key in t.user_attrs]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if points:
        ax.scatter([p[0] for p in points], [p[1] for p in points], color="#8c8c8c", s=18, label="trials")
        front = pareto_front(points)
        ax.plot([p[0] for p in front], [p[1] for p in front], "-o", color="#c44e52", label="Pareto front")
        for cost, acc, number in front:
            ax.annotate(str(number), (cost, acc), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.legend(loc="lower right")
    ax.set(xlabel=label, ylabel="validation accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def importances(study: optuna.Study) -> dict[str, float]:
    """Each drawn parameter's share of the variation in validation accuracy over finished trials (optuna's default
    evaluator); empty with fewer than two finished trials or nothing drawn."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < 2 or not any(t.params for t in done):
        return {}
    try:
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError) as e:  # e.g. every finished trial drew the same values
        logging.getLogger(__name__).info("no importances: %s", e)
        return {}


def search_report(study: optuna.Study, out_dir: str | Path) -> dict[str, Any]:
    """Write ``trials.csv``, ``pareto-params.png``, ``pareto-time.png``, ``importances.json`` and ``best.toml`` to
    ``out_dir``; return the rows, the importances and where the files went."""
    out_dir = Path(out_dir)
    trials = study.get_trials(deepcopy=False)
    rows = [trial_row(t) for t in trials]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    files = {"trials": write_text(out_dir / "trials.csv", buffer.getvalue())}
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    files["pareto_params"] = _plot_front(done, "params", "parameters", f"{study.study_name}: size", out_dir /
                                         "pareto-params.png")
    files["pareto_time"] = _plot_front(done, "seconds", "wall time of the trial (s)", f"{study.study_name}: time",
                                       out_dir / "pareto-time.png")
    imp = importances(study)
    files["importances"] = write_text(out_dir / "importances.json", json.dumps(imp, indent=2) + "\n")
    best = max(done, key=lambda t: t.value) if done else None
    if best is not None:
        config = config_from_dict(best.user_attrs["config"], stored=True)
        header = (f"# search {study.study_name!r}, trial {best.number}: validation accuracy {100 * best.value:.2f}% "
                  f"on {config.data.val_size:,} held-out training images.\n# Its validation split is kept here; "
                  "set data.val_size=0 to train on every image (as `resbudget search confirm` does).\n")
        files["best"] = write_text(out_dir / "best.toml", header + config_to_toml(config))
    return {"rows": rows, "importances": imp, "best": best.number if best is not None else None,
            "files": {k: str(v) for k, v in files.items()}}


def format_table(rows: list[dict[str, Any]]) -> str:
    shown = ("trial", "state", "val_acc", "params", "seconds", "epochs", "note")
    cells = [list(shown)] + [[_cell(r[c]) for c in shown] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(shown))]
    lines = ["  ".join(v.rjust(w) if i in (0, 2, 3, 4, 5) else v.ljust(w) for i, (v, w) in
                       enumerate(zip(row, widths))).rstrip() for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if value < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
