"""Class predictions for image files: any format and size Pillow reads, as a 32x32 RGB image the net understands."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import CIFAR10_NORMALIZATION, CLASSES, Normalization, normalize
from ..data.images import ImageError, load_image
from ..ensemble import is_ensemble, load_ensemble
from ..models import DEFAULT_BUDGET
from ..train import autocast, load_model, temperature_of, tta_mode, weights_path
from ..train.checkpoint import input_of
from ..train.evaluate import run_train_config
from ..train.tta import mode_of_views, tta_view_logits


@dataclass
class Predictor:
    """A loaded net, scored as ``eval`` and the run's summary score it: the mean logits over the ``tta`` views, in
    ``precision``, divided by the temperature, then softmax (an ensemble: the mean of its members' probabilities)."""

    model: nn.Module
    temperature: float
    ensemble: bool
    tta: str = "none"
    precision: str = "fp32"
    classes: tuple[str, ...] = CLASSES  # label i's name
    norm: Normalization = CIFAR10_NORMALIZATION  # the standardisation the net was trained with
    image_size: int = 32  # the net's input size: every image is brought to it

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        x = normalize(images, self.norm).contiguous(memory_format=torch.channels_last)
        with autocast(x.device, self.precision):
            out = tta_view_logits(self.model, x, self.tta).float().mean(0)
        return out.exp() if self.ensemble else (out / self.temperature).softmax(-1)


def load_predictor(source: str | os.PathLike, *, budget: int = DEFAULT_BUDGET, allow_over_budget: bool = False,
                   allow_unfinished: bool = False, views: int | None = None) -> Predictor:
    """A finished run folder (or an unfinished one, with ``allow_unfinished``), a checkpoint or an ensemble folder,
    ready to predict on the CPU: with its run's TTA views and precision (a checkpoint outside a run folder: the
    default recipe's), or ``views`` (1, 2, 4 or 6) instead."""
    if views is not None:
        mode_of_views(views)  # a wrong number is refused before anything is read
    if is_ensemble(source):
        if views not in (None, 1):
            raise ValueError("an ensemble is scored on the image alone: --views 1")
        return Predictor(load_ensemble(source, budget=budget, allow_over_budget=allow_over_budget), 1.0, True)
    weights = weights_path(source, allow_unfinished)
    model, spec = load_model(weights, budget=budget, allow_over_budget=allow_over_budget)
    classes, norm = input_of(weights)
    return Predictor(model.to(memory_format=torch.channels_last), temperature_of(weights), False,
                     tta_mode(weights, views), run_train_config(weights).precision, classes, norm, spec.image_size)


def image_files(paths: list[str | os.PathLike]) -> Iterator[Path]:
    """The files named, and the files directly inside the folders named (sorted; hidden files left out)."""
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
        else:
            yield p


def predict_files(predictor: Predictor, paths: list[str | os.PathLike], *, top_k: int = 1,
                  batch_size: int = 256, min_confidence: float = 0.0) -> Iterator[dict]:
    """One result per file, in order: ``{"file", "top": [{"class", "probability"}...], "resized", "unsure"}``
    (``unsure``: the top probability is below ``min_confidence``), or ``{"file", "error"}`` for a file that cannot be
    read (the others are still predicted). Files go through the net in batches of ``batch_size``."""
    if not 1 <= top_k <= len(predictor.classes):
        raise ValueError(f"--top-k must be 1 to {len(predictor.classes)}, got {top_k}")
    if not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"--min-confidence must be a probability in 0-1, got {min_confidence}")
    batch: list[tuple[Path, np.ndarray, bool]] = []
    seen = 0

    def flush() -> Iterator[dict]:
        probs = predictor.probabilities(torch.from_numpy(np.stack([b[1] for b in batch])))
        values, indices = probs.topk(top_k, dim=-1)
        for (path, _, resized), v, i in zip(batch, values.tolist(), indices.tolist()):
            yield {"file": str(path), "top": [{"class": predictor.classes[c], "probability": p}
                                              for p, c in zip(v, i)],
                   "resized": resized, "unsure": v[0] < min_confidence}
        batch.clear()

    for path in image_files(paths):
        seen += 1
        try:
            array, resized = load_image(path, predictor.image_size)
        except ImageError as e:
            yield from flush() if batch else ()
            yield {"file": str(path), "error": str(e)}
            continue
        batch.append((path, array, resized))
        if len(batch) == batch_size:
            yield from flush()
    if batch:
        yield from flush()
    if not seen:
        raise ImageError(f"no image files in {', '.join(map(str, paths))} (hidden files are left out)")
