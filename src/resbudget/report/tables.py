"""Markdown and CSV tables of a report."""

from __future__ import annotations

import csv
import io

from .collect import Row

WATCHED_TEST_NOTE = ("† the plateau schedule of this run watched test accuracy, as the study did: the test set took "
                     "part in training decisions, so its number is not a clean held-out estimate.")


VALIDATION_NOTE = ("‡ a search trial: its accuracy is on its validation split (held-out training images); it never "
                   "read the test set.")


def _mark(row: Row) -> str:
    return (" †" if row.watched_test else "") + (" ‡" if row.validation_only else "")


def _acc(row: Row) -> str:
    if not row.accuracies:
        return "diverged"
    text = f"{row.mean:.2f} ± {row.std:.2f}" if len(row.accuracies) > 1 else f"{row.mean:.2f}"
    return text + (f" ({len(row.diverged)} of {len(row.seeds)} diverged)" if row.diverged else "")


def _paper(row: Row) -> str:
    return " / ".join(f"{a:g}" for a in row.paper_accuracy) or "–"


def _wall(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.2f} h"


def markdown_table(rows: list[Row]) -> str:
    lines = ["| experiment | model | params | MACs | epochs | schedule | optimiser | seeds | test acc. (%) | "
             "wall time / run | paper (%) |",
             "|---|---|---:|---:|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.experiment}{_mark(r)} | {r.model} | {r.params:,} | {r.macs / 1e6:.1f} M | {r.epochs} | "
                     f"{r.schedule} | {r.optimizer} | {len(r.seeds)} | {_acc(r)} | {_wall(r.wall_seconds)} | "
                     f"{_paper(r)} |")
    if any(r.watched_test for r in rows):
        lines += ["", WATCHED_TEST_NOTE]
    if any(r.validation_only for r in rows):
        lines += ["", VALIDATION_NOTE]
    return "\n".join(lines)


def top3_table(rows: list[Row]) -> str:
    """The study's Table 1 form: the three best by our mean final test accuracy (search trials, scored on validation
    images, are not ranked against test accuracies)."""
    best = sorted((r for r in rows if not r.validation_only and r.accuracies), key=lambda r: r.mean, reverse=True)[:3]
    lines = ["| rank | experiment | model | parameters | test accuracy (%) | paper (%) |",
             "|---:|---|---|---:|---:|---:|"]
    for i, r in enumerate(best, 1):
        lines.append(f"| {i} | {r.experiment}{_mark(r)} | {r.model} | {r.params:,} | "
                     f"{_acc(r)} | {_paper(r)} |")
    return "\n".join(lines)


def csv_table(rows: list[Row]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["experiment", "model", "params", "macs", "epochs", "schedule", "optimizer", "seeds",
                "test_acc_mean", "test_acc_std", "test_acc_per_seed", "wall_seconds_mean", "paper_accuracy",
                "plateau_watched_test", "validation_only", "diverged_seeds"])
    for r in rows:
        w.writerow([r.experiment, r.model, r.params, r.macs, r.epochs, r.schedule, r.optimizer, len(r.seeds),
                    f"{r.mean:.4f}", f"{r.std:.4f}", " ".join(f"{a:.2f}" for a in r.accuracies),
                    f"{r.wall_seconds:.1f}", " ".join(f"{a:g}" for a in r.paper_accuracy), r.watched_test,
                    r.validation_only, " ".join(map(str, r.diverged))])
    return buf.getvalue()
