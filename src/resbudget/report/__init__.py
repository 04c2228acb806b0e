"""``resbudget report``: tables and figures from run folders."""

from __future__ import annotations

import os
from pathlib import Path

from .._io import write_text
from ..models import ModelSpec
from .collect import ReportError, Row, Run, find_runs, summarize_runs
from .figures import (
    figure_path,
    plot_accuracy_time,
    plot_architecture,
    plot_comparison,
    plot_curves,
    plot_evaluation,
    plot_fronts,
    plot_reliability,
)
from .tables import csv_table, markdown_table, top3_table


def build_report(run_dirs: list[str | os.PathLike], out_dir: str | os.PathLike, *, title: str = "resbudget report",
                 figures: bool = True) -> Path:
    """Write report.md, results.csv and (with ``figures``) curves/, comparison.png and arch/ into ``out_dir``."""
    out = Path(out_dir)
    rows = summarize_runs(find_runs(list(run_dirs)))
    parts = [f"# {title}", "",
             "Final-epoch test accuracy, mean ± std over seeds; the study's reported number beside it.",
             "", "## Top 3", "", top3_table(rows), "", "## All experiments", "", markdown_table(rows)]
    if figures:
        plot_comparison(rows, out / "comparison.png")
        parts += ["", "## Figures", "", "![comparison](comparison.png)", ""]
        drawn = set()
        for r in rows:
            plot_curves(r, out / "curves" / f"{r.experiment}.png")
            parts.append(f"- {r.experiment}: [curves](curves/{r.experiment}.png)")
            spec = ModelSpec.from_dict(r.runs[0].summary.config["model"])
            key = r.model if r.model != "custom" else r.experiment
            if key not in drawn:
                drawn.add(key)
                plot_architecture(spec, key, out / "arch" / f"{key}.png")
            parts[-1] += f", [architecture](arch/{key}.png)"
    write_text(out / "report.md", "\n".join(parts) + "\n")
    write_text(out / "results.csv", csv_table(rows))
    return out / "report.md"


__all__ = ["ReportError", "Row", "Run", "build_report", "csv_table", "find_runs", "markdown_table",
           "figure_path", "plot_accuracy_time", "plot_architecture", "plot_comparison", "plot_curves",
           "plot_evaluation", "plot_fronts", "plot_reliability", "summarize_runs", "top3_table"]
