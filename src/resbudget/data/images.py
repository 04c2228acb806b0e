"""Reading one image file as a square RGB image of a given size: any format and size Pillow reads, converted one way
(:data:`IMAGE_METHOD`) wherever an image enters, for training (image folders) as for prediction."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .._io import MAX_BYTES, regular_file

IMAGE_METHOD = ("turned upright as its EXIF orientation says, the central square crop, resized to the net's input "
                "size with Pillow's Lanczos filter (antialiased); transparency composited onto white, greyscale and "
                "palette images turned into RGB, 16-bit and floating-point (0-1) greyscale scaled to 8 bits")
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
    resized = image.size != (size, size)
    return square(image, size), resized


def square(image, size: int) -> np.ndarray:  # noqa: ANN001 - a PIL RGB image
    """uint8 array 3 x size x size: the image's central square, resized with Lanczos where it is not that size."""
    from PIL import Image

    w, h = image.size
    if (w, h) != (size, size):
        side = min(w, h)
        box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
        image = image.resize((size, size), Image.Resampling.LANCZOS, box=box)
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, 3, H, W) -> (N, 3, size, size), each image as :func:`square` makes it (unchanged where it is that
    size already)."""
    from PIL import Image

    if images.shape[-2:] == (size, size):
        return images
    out = np.empty((len(images), 3, size, size), dtype=np.uint8)
    for i, image in enumerate(images):
        out[i] = square(Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)), "RGB"), size)
    return out
