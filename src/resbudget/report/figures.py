"""PNG figures: learning curves per experiment, a comparison chart, and an architecture diagram per model."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only: no display needed, safe in CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..models import ModelSpec, build_model, count_params, stage_sizes  # noqa: E402
from ..models.spec import stem_size  # noqa: E402
from .collect import Row  # noqa: E402


def _mean_curve(row: Row, key: str) -> tuple[list[int], list[float]]:
    by_epoch: dict[int, list[float]] = {}
    for run in row.runs:
        for m in run.metrics:
            if m.get(key) is not None:
                by_epoch.setdefault(m["epoch"], []).append(m[key])
    epochs = sorted(by_epoch)
    return epochs, [statistics.mean(by_epoch[e]) for e in epochs]


def plot_curves(row: Row, path: Path) -> Path:
    """Loss and accuracy per epoch (train, validation, test), averaged over seeds: the study's Figure 3 form."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for split, style in (("train", "-"), ("val", "--"), ("test", ":")):
        for ax, key, scale in ((ax_loss, f"{split}_loss", 1), (ax_acc, f"{split}_acc", 100)):
            epochs, values = _mean_curve(row, key)
            if epochs:
                ax.plot(epochs, [v * scale for v in values], style, marker=".", label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    last = max((r["epoch"] for run in row.runs for r in run.metrics), default=1)
    for ax in (ax_loss, ax_acc):
        if last <= 20:  # whole epochs, even for a run of one or two (MaxNLocator would put ticks at 0.1 steps)
            ax.set_xticks(range(1, last + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(0.5, last + 0.5)
        ax.grid(alpha=0.3)
        ax.legend()
    seeds = f"{len(row.runs)} seed{'s' if len(row.runs) > 1 else ''}"
    fig.suptitle(f"{row.experiment} ({row.model}, {row.params:,} params, {seeds}; train accuracy is on augmented "
                 "images)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_comparison(rows: list[Row], path: Path) -> Path:
    """Our final test accuracy (mean ± std over seeds) beside the study's reported number, one bar per experiment
    (those whose every seed diverged have none)."""
    rows = sorted((r for r in rows if r.accuracies), key=lambda r: r.mean)
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.8))
    ys = range(len(rows))
    ax.barh(list(ys), [r.mean for r in rows], xerr=[r.std for r in rows], color="#4c72b0", alpha=0.85,
            label="ours (final epoch, mean ± std)")
    paper_y = [y for y, r in zip(ys, rows) if r.paper_accuracy]
    paper_x = [r.paper_accuracy[0] for r in rows if r.paper_accuracy]
    if paper_x:
        ax.scatter(paper_x, paper_y, marker="D", color="#dd8452", zorder=3, label="the study's reported")
    ax.set_yticks(list(ys), [f"{r.experiment}{' †' if r.watched_test else ''} ({r.epochs} ep)" for r in rows])
    low = min([r.mean - r.std for r in rows] + paper_x, default=90.0)
    ax.set_xlim(max(0.0, low - 5), 100)
    ax.set_xlabel("test accuracy (%)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.01), ncol=2, fontsize=8, frameon=False)  # above: never on a bar
    fig.tight_layout()
    return _save(fig, path)


def plot_fronts(rows: list[Row], path: Path) -> Path:
    """Each experiment's accuracy (mean over seeds) against its parameters and against its time per run, the runs
    that no other beats in both (the Pareto front) joined by a line."""
    done = [r for r in rows if r.accuracies]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "params", "parameters"), (axes[1], "wall_seconds", "time per run (s)")):
        points = sorted((getattr(r, key), r.mean, r.experiment) for r in done)
        front, best = [], -math.inf
        for x, y, _ in points:  # cheapest first: a point is on the front if it beats every cheaper one
            if y > best:
                front.append((x, y))
                best = y
        ax.scatter([p[0] for p in points], [p[1] for p in points], color="#4c72b0", alpha=0.7)
        ax.plot([p[0] for p in front], [p[1] for p in front], color="#dd8452", marker="o", label="front")
        for x, y, name in points:
            if (x, y) in front:
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
        ax.set(xlabel=label, ylabel="accuracy (%)", xscale="log" if key == "params" else "linear")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    marks = "validation accuracy (search trials)" if all(r.validation_only for r in done) else "test accuracy"
    fig.suptitle(f"{marks}, mean over seeds", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_architecture(spec: ModelSpec, name: str, path: Path) -> Path:
    """Stem, stages (blocks, width, stride, output size, shortcut), pooling and head, top to bottom."""
    sizes = stage_sizes(spec)
    collapsed = 1 in sizes[:-1]  # the map is 1x1 before the last stage: those stages are drawn in orange
    act = {"relu": "ReLU", "gelu": "GELU"}[spec.activation]
    k, stem = spec.stem_kernel, stem_size(spec)
    stem_norm = f"BN, {act}" if spec.stem_norm else f"bias, {act}"
    boxes = [(f"input  {spec.in_channels}×{spec.image_size}×{spec.image_size}", "#eeeeee"),
             (f"stem: conv {k}×{k}, {spec.stem_width} ch, {stem_norm}  →  {spec.stem_width}×{stem}×{stem}", "#c6dbef")]
    for i, (w, b, s, size) in enumerate(zip(spec.stage_widths, spec.stage_blocks, spec.stage_strides, sizes)):
        color = "#f4a582" if size == 1 and collapsed else "#9ecae1"
        if spec.stage_entry == "conv-pool":
            pool = f", max-pool {s}" if s > 1 else ""
            text = f"stage {i + 1}: conv 3×3 {w} ch{pool}, BN, {act} + {b} × {spec.block} block  →  {w}×{size}×{size}"
        else:
            text = (f"stage {i + 1}: {b} × {spec.block} block, {w} ch, stride {s}  →  {w}×{size}×{size}   "
                    f"(shortcut {spec.shortcut})")
        boxes.append((text, color))
    pool_name = "max" if spec.global_pool == "max" else "average"
    boxes.append((f"global {pool_name} pool  →  {spec.stage_widths[-1]}", "#eeeeee"))
    for h in spec.head_hidden:
        boxes.append((f"linear {h}, {act}", "#c7e9c0"))
    scale = f", × {spec.logit_scale:.4g}" if spec.logit_scale != 1.0 else ""
    boxes.append((f"linear  →  {spec.num_classes} classes{scale}", "#a1d99b"))

    height = 0.62 * len(boxes) + 0.9
    fig, ax = plt.subplots(figsize=(8.5, height))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, len(boxes))
    ax.axis("off")
    for k, (text, color) in enumerate(boxes):
        y = len(boxes) - k - 0.5
        ax.add_patch(FancyBboxPatch((0.04, y - 0.3), 0.92, 0.6, boxstyle="round,pad=0.01", fc=color, ec="#333333"))
        ax.text(0.5, y, text, ha="center", va="center", fontsize=8.5)
        if k < len(boxes) - 1:
            ax.annotate("", xy=(0.5, y - 0.5), xytext=(0.5, y - 0.3), arrowprops={"arrowstyle": "->", "lw": 1})
    note = "  (orange: stages on 1×1 maps)" if collapsed else ""
    ax.set_title(f"{name}: {count_params(build_model(spec)):,} parameters{note}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_accuracy_time(points: list[dict], marks: dict[str, float], path: Path, title: str = "",
                       legend: str = "lower right") -> Path:
    """Final test accuracy against wall time per run, one curve per key: each point a dict with ``seconds``,
    ``accuracy`` (%) and ``label`` (e.g. the epochs; empty: not written beside it), averaged over its seeds by the
    caller (``std``, if given, drawn as an error bar); ``marks`` are reference accuracies (the study's numbers) drawn
    as horizontal lines, since their time on this machine is not known; ``legend``: where the legend goes (a
    matplotlib ``loc``, or ``"below"`` the axes)."""
    if not points:
        raise ValueError("no points to plot: run at least one recipe")
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for key in dict.fromkeys(p["curve"] for p in points):
        curve = sorted((p for p in points if p["curve"] == key), key=lambda p: p["seconds"])
        ax.errorbar([p["seconds"] for p in curve], [p["accuracy"] for p in curve], marker="o", label=key,
                    yerr=[p.get("std", 0.0) for p in curve], capsize=3)
        for p in curve:
            if str(p["label"]):  # an empty label: the point is drawn, not named
                ax.annotate(str(p["label"]), (p["seconds"], p["accuracy"]), textcoords="offset points",
                            xytext=(4, -10), fontsize=7)
    for i, (name, value) in enumerate(marks.items()):
        ax.axhline(value, ls="--", lw=1, color=f"C{(i + 3) % 10}", label=f"{name}: {value:.2f}%")
    ax.set_xscale("log")
    ax.set(xlabel="wall time per run (s, log scale)", ylabel="final-epoch test accuracy (%)", title=title)
    ax.grid(alpha=0.3, which="both")
    if legend == "below":  # under the axes: never on a point
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    else:
        ax.legend(fontsize=8, loc=legend)
    fig.tight_layout()
    return _save(fig, path)


def plot_reliability(calibration: dict, path: Path, title: str = "") -> Path:
    """The reliability diagram of ``eval``'s ``calibration`` result: per confidence bin, the accuracy against the
    mean confidence (a calibrated net lies on the diagonal), bars sized by the share of images, the ECE in the
    legend; with the temperature where one was fitted."""
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    _draw_reliability(ax, calibration, title)
    fig.tight_layout()
    return _save(fig, path)


def plot_evaluation(result: dict, images: np.ndarray, path: Path, title: str = "") -> Path:
    """``eval``'s result in one figure: the reliability diagram, the confusion matrix (rows the true class, each
    cell's count and the row's share in colour) and the most confident mistakes (``images``: uint8 N x 3 x H x W, the
    split the result's ``mistakes`` index)."""
    fig = plt.figure(figsize=(15.5, 5.2))
    grid = fig.add_gridspec(1, 3, width_ratios=(1, 1.15, 1.05), wspace=0.3)
    _draw_reliability(fig.add_subplot(grid[0]), result["calibration"], "reliability")
    classes = [c["class"] for c in result["per_class"]]
    _draw_confusion(fig.add_subplot(grid[1]), np.array(result["confusion"]), classes)
    _draw_mistakes(fig, grid[2], result["mistakes"], images)
    fig.suptitle(f"{title + ': ' if title else ''}reliability · confusion · the most confident mistakes (true → "
                 "predicted, probability)", fontsize=10)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.2, top=0.86)
    return _save(fig, path)


def _draw_confusion(ax, confusion: np.ndarray, classes: list[str]) -> None:  # noqa: ANN001 - a matplotlib Axes
    shares = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if len(classes) <= 20:  # counts and names stay readable up to here
        for (i, j), count in np.ndenumerate(confusion):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=6 if len(classes) > 10 else 7,
                    color="white" if shares[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion ({confusion.sum():,} images)")


def _draw_mistakes(fig, cell, mistakes: list[dict], images: np.ndarray) -> None:  # noqa: ANN001
    side = max(1, math.ceil(math.sqrt(len(mistakes))))
    inner = cell.subgridspec(side, side, wspace=0.05, hspace=0.45)
    for k, m in enumerate(mistakes):
        ax = fig.add_subplot(inner[k // side, k % side])
        ax.imshow(images[m["index"]].transpose(1, 2, 0))
        ax.set_title(f"{m['true'][:9]}→{m['predicted'][:9]}\n{100 * m['probability']:.0f}%", fontsize=6, pad=2)
        ax.axis("off")


def _draw_reliability(ax, calibration: dict, title: str = "") -> None:  # noqa: ANN001 - a matplotlib Axes
    bins = calibration["reliability"]
    n = sum(b["count"] for b in bins) or 1
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="grey", label="calibrated")
    ax.bar([b["confidence"] for b in bins], [b["accuracy"] for b in bins],
           width=[(b["high"] - b["low"]) * 0.9 for b in bins], alpha=0.35, color="C0")
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", color="C0",
            label=f"T = {calibration['temperature']:.3g}: ECE {calibration['test_ece_calibrated']:.3f}, "
                  f"NLL {calibration['test_nll_calibrated']:.3f}")
    for b in bins:
        if b["count"] / n >= 0.02:
            ax.annotate(f"{100 * b['count'] / n:.0f}%", (b["confidence"], b["accuracy"]), textcoords="offset points",
                        xytext=(-6, 6), fontsize=7)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top probability)", ylabel="accuracy",
           title=title or "reliability (share of images per bin)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")


FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


def figure_path(path: str | Path) -> Path:
    """The file a figure named ``path`` is written to: ``path`` itself, or with ``.png`` added where it has no
    suffix. A folder, or a suffix other than .png, .pdf and .svg, is refused (``ValueError``)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; name the figure's file, e.g. {path / 'reliability.png'}")
    if not path.suffix:
        path = path.with_name(path.name + ".png")
    if path.suffix.lower() not in FIGURE_SUFFIXES:
        raise ValueError(f"{path}: a figure is written as {', '.join(FIGURE_SUFFIXES)}, not {path.suffix}")
    return path


def _save(fig, path: Path) -> Path:  # noqa: ANN001
    try:
        path = figure_path(path)
    except ValueError:
        plt.close(fig)
        raise
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
