"""Common corruptions of test images at 5 severities, seeded, for measuring robustness without downloaded data.

Written from the descriptions of Hendrycks & Dietterich (2019, "Benchmarking neural network robustness to common
corruptions and perturbations"): noise, blur, contrast, brightness, compression and pixelation. The severity
parameters are this module's own, chosen for 32x32 images (Gaussian noise runs from sigma = 0.04, about 10/255 per
pixel, to 0.10); they are not claimed to reproduce CIFAR-10-C's files. Every corruption takes uint8 images (N, 3, H, W)
and returns uint8 images, rounded as a saved picture would be, so the model sees what it would see from a file.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

SEVERITIES = (1, 2, 3, 4, 5)


def _float(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0


def _uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8)


def gaussian_noise(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Independent normal noise on every pixel and channel, sigma (on a 0-1 scale) 0.04 ... 0.10: sensor noise."""
    sigma = (0.04, 0.06, 0.08, 0.09, 0.10)[severity - 1]
    y = _float(x)
    return _uint8(y + sigma * torch.randn(y.shape, generator=g, device=y.device))


def shot_noise(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Poisson noise of a photon count: each value drawn from Poisson(value x lambda) / lambda, lambda 500 ... 50."""
    lam = (500.0, 250.0, 100.0, 75.0, 50.0)[severity - 1]
    return _uint8(torch.poisson(_float(x) * lam, generator=g) / lam)


def impulse_noise(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Salt and pepper: a fraction 0.01 ... 0.07 of the values set to 0 or 255, half each."""
    amount = (0.01, 0.02, 0.03, 0.05, 0.07)[severity - 1]
    hit = torch.rand(x.shape, generator=g, device=x.device) < amount
    salt = torch.rand(x.shape, generator=g, device=x.device) < 0.5
    return torch.where(hit, torch.where(salt, 255, 0).to(torch.uint8), x)


def gaussian_blur(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Blur with a Gaussian kernel of sigma 0.4 ... 1.0 pixels (reflected borders): an out-of-focus lens."""
    sigma = (0.4, 0.6, 0.7, 0.8, 1.0)[severity - 1]
    radius = 3
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    k = torch.exp(-t**2 / (2 * sigma**2))
    k = k / k.sum()
    y = F.pad(_float(x), (radius,) * 4, mode="reflect")
    c = y.shape[1]
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return _uint8(y)


def contrast(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Each image pulled towards its own mean value, keeping a fraction 0.75 ... 0.15 of its contrast: haze, dim
    light."""
    keep = (0.75, 0.5, 0.4, 0.3, 0.15)[severity - 1]
    y = _float(x)
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    return _uint8((y - mean) * keep + mean)


def brightness(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Every value raised by 0.05 ... 0.30 (on a 0-1 scale) and clipped: overexposure."""
    delta = (0.05, 0.1, 0.15, 0.2, 0.3)[severity - 1]
    return _uint8(_float(x) + delta)


def jpeg(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Saved as JPEG at quality 80 ... 40 and decoded again (Pillow): compression blocks and ringing."""
    from PIL import Image

    quality = (80, 65, 58, 50, 40)[severity - 1]
    out = np.empty(tuple(x.shape), dtype=np.uint8)
    for i, image in enumerate(x.cpu().permute(0, 2, 3, 1).numpy()):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=quality)
        out[i] = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).transpose(2, 0, 1)
    return torch.from_numpy(out).to(x.device)


def pixelate(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Shrunk to 0.95 ... 0.65 of its side by area averaging, then blown up again by nearest neighbour: low
    resolution."""
    scale = (0.95, 0.9, 0.85, 0.75, 0.65)[severity - 1]
    h, w = x.shape[-2:]
    small = F.interpolate(_float(x), size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="area")
    return _uint8(F.interpolate(small, size=(h, w), mode="nearest"))


CORRUPTIONS: dict[str, Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]] = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "impulse_noise": impulse_noise,
    "gaussian_blur": gaussian_blur, "contrast": contrast, "brightness": brightness, "jpeg": jpeg,
    "pixelate": pixelate,
}


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """``images`` (uint8, N x 3 x H x W) with corruption ``name`` at ``severity`` 1-5; the same seed gives the same
    images."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be 1 to 5, got {severity}")
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError("corrupt takes a uint8 batch of shape (N, C, H, W)")
    g = torch.Generator(device=images.device).manual_seed(seed * 1_000 + severity)
    return CORRUPTIONS[name](images, severity, g)
