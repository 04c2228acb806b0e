"""A run's per-epoch metrics as TensorBoard scalars, for people who watch runs there (``train --tensorboard DIR``;
the ``tensorboard`` extra). The run folder's metrics.jsonl stays the record; this is a view of it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# each logged row value, by its TensorBoard tag
TAGS = {"train_loss": "loss/train", "val_loss": "loss/validation", "test_loss": "loss/test",
        "train_acc": "accuracy/train", "val_acc": "accuracy/validation", "test_acc": "accuracy/test",
        "lr": "lr", "images_per_s": "speed/images_per_s", "seconds": "time/epoch_seconds"}


class TensorBoardLog:
    """An ``on_epoch_end(epoch, row)`` hook that writes the epoch's row under ``log_dir/name``."""

    def __init__(self, log_dir: str | os.PathLike, name: str) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError("--tensorboard needs the tensorboard extra: pip install -e '.[tensorboard]'") from None
        self.writer = SummaryWriter(str(Path(log_dir) / name))

    def __call__(self, epoch: int, row: dict[str, Any]) -> None:
        for key, tag in TAGS.items():
            if row.get(key) is not None:
                self.writer.add_scalar(tag, row[key], epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
