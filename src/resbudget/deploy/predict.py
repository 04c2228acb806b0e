"""Class predictions for image files: any format and size Pillow reads, as a 32x32 RGB image the net understands."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._io import MAX_BYTES, regular_file
from ..data import CLASSES, normalize
from ..ensemble import is_ensemble, load_ensemble
from ..models import DEFAULT_BUDGET
from ..train import autocast, load_model, temperature_of, tta_mode, weights_path
from ..train.evaluate import run_train_config
from ..train.tta import mode_of_views, tta_view_logits

IMAGE_METHOD = ("turned upright as its EXIF orientation says, the central square crop, resized to 32x32 with Pillow's "
                "Lanczos filter (antialiased); transparency composited onto white, greyscale and palette images "
                "turned into RGB, 16-bit and floating-point (0-1) greyscale scaled to 8 bits")
MAX_IMAGE_PIXELS = 50_000_000  # checked from the header, before decoding: a 50-megapixel photo still fits in memory


class ImageError(ValueError):
    """A file that is not an image Pillow can read."""


def _wide_grey_to_rgb(image, path: Path):  # noqa: ANN001, ANN202 - PIL images
    """16-bit (``I;16*``, or ``I`` holding 0-65535) and float (``F``, 0-1) greyscale as 8-bit RGB, scaled."""
    from PIL import Image

    values = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        if not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
            raise ImageError(f"{path}: a floating-point image must hold values in 0-1, this one holds "
                             f"{np.nanmin(values):g} to {np.nanmax(values):g}")
        scale = 255.0
    else:
        if values.min() < 0 or values.max() > 65535:
            raise ImageError(f"{path}: a 32-bit integer image is read as 16-bit (0-65535), this one holds "
                             f"{values.min():g} to {values.max():g}")
        scale = 255.0 / 65535.0
    return Image.fromarray(np.rint(values * scale).astype(np.uint8), "L").convert("RGB")


def load_image(path: str | os.PathLike, size: int = 32) -> tuple[np.ndarray, bool]:
    """(uint8 array 3 x size x size, whether it was resized) of an image file, converted as :data:`IMAGE_METHOD`
    says. Only a regular file of at most ``MAX_BYTES["image"]`` is opened, and an image over
    :data:`MAX_IMAGE_PIXELS` is refused from its header."""
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    regular_file(path, ImageError, MAX_BYTES["image"], "an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own bound, below, decides
            with Image.open(path) as image:
                w, h = image.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise ImageError(f"{path}: {w}x{h} is {w * h / 1e6:,.0f} megapixels, over the "
                                     f"{MAX_IMAGE_PIXELS / 1e6:,.0f} read here; downscale it first")
                if image.format == "JPEG":  # decode at 1/2 to 1/8 scale where it stays >= 8x the output: less memory
                    image.draft(image.mode, (size * 8, size * 8))
                image = ImageOps.exif_transpose(image)
                image.load()
                if image.mode.startswith("I;16") or image.mode in ("I", "F"):
                    image = _wide_grey_to_rgb(image, path)
                if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and
                                                                       "transparency" in image.info):
                    rgba = image.convert("RGBA")
                    image = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    image.alpha_composite(rgba)
                image = image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        if isinstance(e, ImageError):
            raise
        message = " ".join(str(e).split())
        raise ImageError(f"{path}: not a readable image ({type(e).__name__}: {message})") from None
    w, h = image.size
    resized = (w, h) != (size, size)
    if resized:
        side = min(w, h)
        box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
        image = image.resize((size, size), Image.Resampling.LANCZOS, box=box)
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy(), resized


@dataclass
class Predictor:
    """A loaded net, scored as ``eval`` and the run's summary score it: the mean logits over the ``tta`` views, in
    ``precision``, divided by the temperature, then softmax (an ensemble: the mean of its members' probabilities)."""

    model: nn.Module
    temperature: float
    ensemble: bool
    tta: str = "none"
    precision: str = "fp32"

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        x = normalize(images).contiguous(memory_format=torch.channels_last)
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
    model, _ = load_model(weights, budget=budget, allow_over_budget=allow_over_budget)
    return Predictor(model.to(memory_format=torch.channels_last), temperature_of(weights), False,
                     tta_mode(weights, views), run_train_config(weights).precision)


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
    if not 1 <= top_k <= len(CLASSES):
        raise ValueError(f"--top-k must be 1 to {len(CLASSES)}, got {top_k}")
    if not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"--min-confidence must be a probability in 0-1, got {min_confidence}")
    batch: list[tuple[Path, np.ndarray, bool]] = []
    seen = 0

    def flush() -> Iterator[dict]:
        probs = predictor.probabilities(torch.from_numpy(np.stack([b[1] for b in batch])))
        values, indices = probs.topk(top_k, dim=-1)
        for (path, _, resized), v, i in zip(batch, values.tolist(), indices.tolist()):
            yield {"file": str(path), "top": [{"class": CLASSES[c], "probability": p} for p, c in zip(v, i)],
                   "resized": resized, "unsure": v[0] < min_confidence}
        batch.clear()

    for path in image_files(paths):
        seen += 1
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
    if not seen:
        raise ImageError(f"no image files in {', '.join(map(str, paths))} (hidden files are left out)")
