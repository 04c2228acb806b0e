"""Class predictions for image files: any format and size Pillow reads, as a 32x32 RGB image the net understands."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import CLASSES, normalize
from ..ensemble import is_ensemble, load_ensemble
from ..models import DEFAULT_BUDGET
from ..train import load_model, temperature_of

IMAGE_METHOD = ("the central square crop, resized to 32x32 with Pillow's Lanczos filter (antialiased); transparency "
                "composited onto white, greyscale and palette images turned into RGB")


class ImageError(ValueError):
    """A file that is not an image Pillow can read."""


def load_image(path: str | os.PathLike, size: int = 32) -> tuple[np.ndarray, bool]:
    """(uint8 array 3 x size x size, whether it was resized) of an image file, converted as :data:`IMAGE_METHOD`
    says."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                image = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image.alpha_composite(rgba)
            image = image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    w, h = image.size
    resized = (w, h) != (size, size)
    if resized:
        side = min(w, h)
        box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
        image = image.resize((size, size), Image.Resampling.LANCZOS, box=box)
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy(), resized


@dataclass
class Predictor:
    """A loaded net: probabilities are softmax(logits / temperature) (an ensemble: the mean of its members')."""

    model: nn.Module
    temperature: float
    ensemble: bool

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        x = normalize(images).contiguous(memory_format=torch.channels_last)
        out = self.model(x)
        return out.exp() if self.ensemble else (out / self.temperature).softmax(-1)


def load_predictor(source: str | os.PathLike, *, budget: int = DEFAULT_BUDGET,
                   allow_over_budget: bool = False) -> Predictor:
    """A run folder, a checkpoint or an ensemble folder, ready to predict on the CPU."""
    if is_ensemble(source):
        return Predictor(load_ensemble(source, budget=budget, allow_over_budget=allow_over_budget), 1.0, True)
    model, _ = load_model(source, budget=budget, allow_over_budget=allow_over_budget)
    return Predictor(model.to(memory_format=torch.channels_last), temperature_of(source), False)


def image_files(paths: list[str | os.PathLike]) -> Iterator[Path]:
    """The files named, and the files directly inside the folders named (sorted; hidden files left out)."""
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
        else:
            yield p


def predict_files(predictor: Predictor, paths: list[str | os.PathLike], *, top_k: int = 1,
                  batch_size: int = 256) -> Iterator[dict]:
    """One result per file, in order: ``{"file", "top": [{"class", "probability"}...], "resized"}``, or
    ``{"file", "error"}`` for a file that cannot be read (the others are still predicted). Files go through the net
    in batches of ``batch_size``."""
    if not 1 <= top_k <= len(CLASSES):
        raise ValueError(f"--top-k must be 1 to {len(CLASSES)}, got {top_k}")
    batch: list[tuple[Path, np.ndarray, bool]] = []

    def flush() -> Iterator[dict]:
        probs = predictor.probabilities(torch.from_numpy(np.stack([b[1] for b in batch])))
        values, indices = probs.topk(top_k, dim=-1)
        for (path, _, resized), v, i in zip(batch, values.tolist(), indices.tolist()):
            yield {"file": str(path), "top": [{"class": CLASSES[c], "probability": p} for p, c in zip(v, i)],
                   "resized": resized}
        batch.clear()

    for path in image_files(paths):
        try:
            array, resized = load_image(path)
        except ImageError as e:
            yield from flush() if batch else ()
            yield {"file": str(path), "error": str(e)}
            continue
        batch.append((path, array, resized))
        if len(batch) == batch_size:
            yield from flush()
    if batch:
        yield from flush()
