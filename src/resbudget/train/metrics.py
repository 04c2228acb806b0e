"""Per-epoch metrics (JSONL and CSV, rewritten atomically) and a progress display safe outside a terminal."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import torch

from .._io import read_jsonl, write_text

monotonic = time.monotonic  # the progress line's clock (a test sets its own)
COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "seconds",
           "train_seconds", "images_per_s")


class MetricsLog:
    """All epoch rows of a run; on resume it keeps the rows up to the checkpoint's epoch."""

    def __init__(self, run_dir: str | os.PathLike, keep_until_epoch: int = 0) -> None:
        self.run_dir = Path(run_dir)
        self.rows: list[dict[str, Any]] = []
        jsonl = self.run_dir / "metrics.jsonl"
        if keep_until_epoch and jsonl.is_file():
            self.rows = [row for row in read_jsonl(jsonl) if row["epoch"] <= keep_until_epoch]

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append({k: row.get(k) for k in COLUMNS})
        self._write()

    def finish(self, values: dict[str, Any]) -> None:
        """The finished net's held-out numbers (e.g. ``test_loss``, ``test_acc``) in the last epoch's row, which
        then reads as it did when the last epoch evaluated them itself."""
        self.rows[-1].update({k: v for k, v in values.items() if k in COLUMNS})
        self._write()

    def _write(self) -> None:
        write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.rows))
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(COLUMNS)
        for r in self.rows:
            writer.writerow(["" if r[k] is None else r[k] for k in COLUMNS])
        write_text(self.run_dir / "metrics.csv", buf.getvalue())


def _fmt(value: float | None, pct: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.2f}%" if pct else f"{value:.4f}"


class Progress:
    """In a terminal: one line redrawn in place during an epoch, with the time the epoch has left. Elsewhere (CI,
    pipes, notebooks): one line per epoch."""

    def __init__(self, total_epochs: int, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total = total_epochs
        self.enabled = enabled
        try:
            self.live = enabled and self.stream.isatty() and os.environ.get("TERM") != "dumb"
        except (AttributeError, ValueError):
            self.live = False
        self._last = 0.0
        self._epoch, self._first_step = 0, 0.0  # the epoch under way, and when its first step ended

    def step(self, epoch: int, step: int, steps: int, loss: float | torch.Tensor) -> None:
        """``loss`` may be a device tensor: it is read (a device sync) only when the line is redrawn. The epoch's end
        is estimated from its own steps after the first (which carries one-time set-up)."""
        if not self.live:
            return
        now = monotonic()
        if epoch != self._epoch or step == 1:
            self._epoch, self._first_step = epoch, now
        if now - self._last < 0.2 and step < steps:
            return
        loss = float(loss)
        self._last = now
        width = 24
        filled = int(width * step / steps)
        left = f"  ~{(now - self._first_step) / (step - 1) * (steps - step):.0f} s left" if 1 < step < steps else ""
        self.stream.write(f"\r\x1b[2Kepoch {epoch}/{self.total} [{'#' * filled}{'.' * (width - filled)}] "
                          f"{step}/{steps} loss {loss:.4f}{left}")
        self.stream.flush()

    def epoch(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = (f"epoch {row['epoch']}/{self.total}  lr {row['lr']:.4g}  train {_fmt(row['train_loss'])} "
                f"{_fmt(row['train_acc'], True)}  val {_fmt(row['val_acc'], True)}  test {_fmt(row['test_acc'], True)}"
                f"  {row['seconds']:.1f}s  {row['images_per_s']:.0f} img/s")
        self.stream.write(("\r\x1b[2K" if self.live else "") + line + "\n")
        self.stream.flush()

    def warn(self, text: str) -> None:
        """A line written even when quiet: something the user must know about the run."""
        self.stream.write(("\r\x1b[2K" if self.live else "") + "warning: " + text + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        if self.enabled:
            self.stream.write(text + "\n")
            self.stream.flush()
