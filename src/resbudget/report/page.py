"""One self-contained HTML page per run, or per set of runs (a study, a search's trials, an ensemble's members): the
page a person opens first. Figures are inline PNGs and there is no script, so the file can be mailed and opens
offline. Every number on a run's page is the run's summary or its evaluation (``eval --json``) as they are."""

from __future__ import annotations

import base64
import datetime as dt
import html
import os
import tempfile
from pathlib import Path
from typing import Any

from .._io import read_json, read_jsonl, write_text
from ..models import ModelSpec
from ..train import evaluate_checkpoint, read_summary
from ..train.evaluate import CorruptionTest, checkpoint_data
from .collect import ReportError, Run, find_runs, summarize_runs
from .figures import plot_architecture, plot_comparison, plot_curves, plot_evaluation, plot_fronts
from .tables import markdown_table, top3_table

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1180px; padding: 0 1em;
       color: rgb(34 34 34); }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid rgb(221 221 221); }
table { border-collapse: collapse; margin: 0.6em 0; }
td, th { padding: 0.2em 0.7em; border-bottom: 1px solid rgb(238 238 238); }
th { text-align: left; background: rgb(246 246 246); } td.n { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; } .muted { color: rgb(102 102 102); } .big { font-size: 1.5em; font-weight: 600; }
.cards { display: flex; gap: 1.2em; flex-wrap: wrap; }
.card { border: 1px solid rgb(221 221 221); border-radius: 6px; padding: 0.6em 1em; }
"""


def _png(draw, *args: Any) -> str:  # noqa: ANN001 - a figure function of report.figures
    """An ``<img>`` of the PNG ``draw(*args, path)`` writes, inline."""
    with tempfile.TemporaryDirectory() as tmp:
        path = draw(*args, Path(tmp) / "figure.png")
        data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="figure" src="data:image/png;base64,{data}">'


def _table(rows: list[list[Any]], header: list[str] | None = None) -> str:
    def cell(v: Any, tag: str) -> str:  # numbers right-aligned in a table of columns, not in a list of values
        numeric = isinstance(v, (int, float)) and not isinstance(v, bool) and header is not None
        return f"<{tag}{' class=n' if numeric and tag == 'td' else ''}>{html.escape(str(v))}</{tag}>"

    head = f"<tr>{''.join(cell(h, 'th') for h in header)}</tr>" if header else ""
    return "<table>" + head + "".join(f"<tr>{''.join(cell(v, 'td') for v in r)}</tr>" for r in rows) + "</table>"


def _markdown_table(text: str) -> str:
    """Our own markdown tables (report/tables.py) as HTML: the pipe rows as a table, a note line as a paragraph."""
    rows = [line.strip().strip("|").split(" | ") for line in text.splitlines() if line.startswith("|")]
    notes = [line for line in text.splitlines() if line and not line.startswith("|")]
    body = [r for r in rows[1:] if not set("".join(r)) <= set("-:| ")]
    return _table(body, rows[0]) + "".join(f"<p class=muted>{html.escape(n)}</p>" for n in notes)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def _page(title: str, sections: list[str]) -> str:
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
            + "".join(sections) + "</body></html>\n")


def run_page(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
             data: Any = None, device: str = "auto", corruptions: CorruptionTest | None = None) -> Path:
    """The page of a finished run (``out``: default ``RUN/page.html``): the net, the recipe, training curves,
    accuracy with and without TTA, calibration, per-class accuracy, confusion and the most confident mistakes (from
    one evaluation on the test set of ``data``), corruption results with ``corruptions``, and the machine, time and
    commit."""
    run_dir = Path(run_dir)
    if not (run_dir / "summary.json").is_file():
        raise ReportError(f"{run_dir}: no summary.json; a page is made of a finished run")
    run = Run(run_dir, read_summary(run_dir / "summary.json"), read_jsonl(run_dir / "metrics.jsonl", ReportError))
    s, metrics = run.summary, run.metrics
    if s.diverged is not None:
        raise ReportError(f"{run_dir}: the run diverged ({s.diverged.reason}); there is no trained net to show")
    data = checkpoint_data(run_dir, data)  # loaded once: evaluated, then the mistakes drawn from it
    result = evaluate_checkpoint(run_dir, data=data, device=device, budget=None, corruptions=corruptions)
    images = data.test.images.numpy()
    spec = ModelSpec.from_dict(s.config["model"])
    config = s.config
    sections = [
        f"<h1>{html.escape(run_dir.name)}</h1><p class=muted>{html.escape(s.date or '')} · resbudget "
        f"{html.escape(s.resbudget_version or '')} · commit {html.escape((s.git_commit or '?')[:12])}"
        f"{' (uncommitted changes)' if s.git_dirty else ''}</p>",
        "<div class=cards>"
        f"<div class=card>test accuracy<div class=big>{_pct(s.test_accuracy)}</div></div>"
        f"<div class=card>with {html.escape(str(s.tta))} TTA<div class=big>{_pct(s.test_accuracy_tta)}</div></div>"
        f"<div class=card>parameters<div class=big>{s.params:,}</div></div>"
        f"<div class=card>time<div class=big>{s.wall_seconds:.0f} s</div></div></div>",
        *(f"<p class=muted>note: {html.escape(n)}</p>" for n in [*s.notes, *s.warnings]),
        "<h2>The net</h2>",
        _table([["preset", s.preset or "custom"], ["parameters", f"{s.params:,}"],
                ["MACs per image", f"{s.macs:,}"], ["input", f"3 × {spec.image_size} × {spec.image_size}"],
                ["classes", ", ".join(c["class"] for c in result["per_class"])],
                *([k, v] for k, v in spec.to_dict().items() if k not in ("num_classes", "image_size"))]),
        _png(plot_architecture, spec, s.preset or "custom"),
        "<h2>The recipe</h2>",
        _table([[f"{section}.{k}", v] for section in ("optim", "schedule", "train", "data")
                for k, v in config[section].items()]),
        "<h2>Training</h2>", _png(plot_curves, summarize_runs([run])[0]),
        _table([[r["epoch"], f"{r['lr']:.4g}", f"{r['train_loss']:.4f}", _pct(r["train_acc"]), _pct(r["val_acc"]),
                 _pct(r["test_acc"]), f"{r['seconds']:.1f}", f"{r['images_per_s']:.0f}"] for r in metrics],
               ["epoch", "lr", "train loss", "train acc.", "val acc.", "test acc.", "seconds", "images/s"]),
        "<h2>Results</h2>",
        _table([["test accuracy (the image alone)", _pct(s.test_accuracy)],
                [f"with {s.tta} TTA ({result['views']} views)", _pct(s.test_accuracy_tta)],
                ["test loss", f"{s.test_loss:.4f}" if s.test_loss is not None else "–"],
                ["time, whole run", f"{s.wall_seconds:.1f} s"], ["training steps", f"{s.train_seconds:.1f} s"],
                ["final evaluation", f"{s.final_eval_seconds:.1f} s"]]),
        "<h2>Calibration, classes and mistakes</h2>",
        _calibration(result), _png(plot_evaluation, result, images),
        _table([[c["class"], c["images"], _pct(c["accuracy"])] for c in result["per_class"]],
               ["class", "test images", "accuracy (the image alone)"]),
    ]
    if "robustness" in result:
        r = result["robustness"]
        sections += [f"<h2>Under corruptions ({r['images']:,} test images, seed {r['seed']})</h2>",
                     _table([["clean", _pct(r["clean"])], *([name, " / ".join(_pct(a) for a in accs)]
                                                            for name, accs in r["corruptions"].items()),
                             ["mean of all", _pct(r["mean"])]], ["", "severity 1 / 2 / 3 / 4 / 5"])]
    sections += ["<h2>Where it ran</h2>",
                 _table([["device", s.device], ["host CPU", s.host_cpu], ["torch", s.torch_version],
                         ["data", s.data_source], ["seed", s.seed], ["commit", s.git_commit]])]
    out = Path(out) if out is not None else run_dir / "page.html"
    write_text(out, _page(f"{run_dir.name}: resbudget run", sections))
    return out


def _calibration(result: dict[str, Any]) -> str:
    c = result["calibration"]
    return _table([["temperature", f"{c['temperature']:.3g}"],
                   ["NLL, without / with it", f"{c['test_nll']:.4f} / {c['test_nll_calibrated']:.4f}"],
                   ["ECE (15 bins), without / with it", f"{c['test_ece']:.4f} / {c['test_ece_calibrated']:.4f}"]])


def runs_page(run_dirs: list[str | os.PathLike], out: str | os.PathLike, *, title: str = "resbudget runs",
              ensemble: dict[str, Any] | None = None) -> Path:
    """The page of a set of finished runs (a study, a search's trials, an ensemble's members): one row per experiment
    (mean ± std over seeds), the three best, accuracy against parameters and against time with the front of the runs
    no other beats on both, the comparison with the study's numbers, each experiment's curves and its net; with
    ``ensemble`` (an ensemble folder's ensemble_summary.json), the ensemble's own accuracies first."""
    rows = summarize_runs(find_runs(list(run_dirs)))
    sections = [f"<h1>{html.escape(title)}</h1>",
                f"<p class=muted>{len(rows)} experiment(s), {sum(len(r.runs) for r in rows)} run(s); written "
                f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}. Final-epoch test accuracy, mean ± std "
                "over seeds; the study's reported number beside it.</p>",
                *(_ensemble(ensemble) if ensemble is not None else []),
                "<h2>Top 3</h2>", _markdown_table(top3_table(rows)),
                "<h2>All experiments</h2>", _markdown_table(markdown_table(rows))]
    if sum(bool(r.accuracies) for r in rows) >= 2:
        sections += ["<h2>Fronts: accuracy against size and time</h2>", _png(plot_fronts, rows)]
    if any(r.accuracies and r.paper_accuracy for r in rows):
        sections += ["<h2>Against the study</h2>", _png(plot_comparison, rows)]
    for r in rows:
        spec = ModelSpec.from_dict(r.runs[0].summary.config["model"])
        sections += [f"<h2>{html.escape(r.experiment)}</h2>",
                     f"<p>{html.escape(r.description)}</p>" if r.description else "",
                     _png(plot_curves, r), _png(plot_architecture, spec, r.model)]
    write_text(Path(out), _page(title, sections))
    return Path(out)


def _ensemble(result: dict[str, Any]) -> list[str]:
    rules = result.get("rules", {})
    return ["<h2>The ensemble</h2>",
            _table([*([f"rule: {rule}", _pct(a)] for rule, a in rules.items()),
                    ["oracle (any member right)", _pct(result.get("oracle"))],
                    ["mean pairwise disagreement", _pct(result.get("mean_disagreement"))],
                    ["parameters (all members)", f"{result.get('params', 0):,}"],
                    ["time, all members", f"{result.get('wall_seconds', 0):.0f} s"]]),
            _table([[i, f"{p:,}", _pct(a)] for i, (p, a) in enumerate(zip(result.get("member_params", []),
                                                                        result.get("members", [])))],
                   ["member", "parameters", "test accuracy"])]


def page(source: str | os.PathLike, out: str | os.PathLike | None = None, *, data: Any = None,
         device: str = "auto", corruptions: CorruptionTest | None = None) -> Path:
    """:func:`run_page` for a run folder, :func:`runs_page` for a folder holding finished runs (default ``out``:
    ``page.html`` inside it)."""
    source = Path(source)
    if (source / "summary.json").is_file():
        return run_page(source, out, data=data, device=device, corruptions=corruptions)
    if not source.is_dir():
        raise ReportError(f"{source} is not a run folder or a folder of runs")
    ensemble = source / "ensemble_summary.json"
    return runs_page([source], out if out is not None else source / "page.html", title=source.name,
                     ensemble=read_json(ensemble, ReportError) if ensemble.is_file() else None)


__all__ = ["page", "run_page", "runs_page"]
