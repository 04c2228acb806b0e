"""Batched, seeded augmentation on the training device: one tensor op per transform, no per-image Python."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from .dataset import CIFAR10_NORMALIZATION, Normalization
from .policy import trivial_augment_normalized


def normalize(images: torch.Tensor, norm: Normalization = CIFAR10_NORMALIZATION,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float, standardised with ``norm`` (its set's: CIFAR-10's by default)."""
    return (images.to(dtype) / 255.0 - norm.tensor("mean", images.device, dtype)) / norm.tensor(
        "std", images.device, dtype)


def random_crop(x: torch.Tensor, padding: int, mode: str, g: torch.Generator) -> torch.Tensor:
    """Pad by ``padding`` (``reflect`` or ``zero``) and cut a random HxW window per image (a random translation)."""
    n, _, h, w = x.shape
    if padding <= 0:
        return x
    padded = F.pad(x, (padding,) * 4, mode="reflect" if mode == "reflect" else "constant")
    dy = torch.randint(0, padded.shape[2] - h + 1, (n,), generator=g, device=x.device)
    dx = torch.randint(0, padded.shape[3] - w + 1, (n,), generator=g, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (n, 1, h, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (n, 1, 1, w)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=g, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def alternating_flip_base(n: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """A fixed random half of the ``n`` images (bool mask), drawn once per run from ``seed``."""
    g = torch.Generator(device=device).manual_seed(seed * 1_000_003 - 1)  # apart from every epoch's generator
    return torch.rand(n, generator=g, device=device) < 0.5


def alternating_flips(base: torch.Tensor, idx: torch.Tensor, epoch: int) -> torch.Tensor:
    """Which of the images ``idx`` to mirror in ``epoch``: the base half in even epochs, the other half in odd ones,
    so every image is seen both ways in every two epochs instead of by chance."""
    return base[idx] ^ bool(epoch % 2)


def random_rotate(x: torch.Tensor, degrees: float, g: torch.Generator) -> torch.Tensor:
    """Rotate each image by a uniform angle in [-degrees, degrees]; corners fill with zero (the mean, once
    normalised)."""
    if degrees <= 0:
        return x
    n = x.shape[0]
    angle = (torch.rand(n, generator=g, device=x.device) * 2 - 1) * math.radians(degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def cutout(x: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """Zero one ``size`` x ``size`` square per image, centred anywhere (it may hang over the border)."""
    if size <= 0:
        return x
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1, 1), generator=g, device=x.device)
    cx = torch.randint(0, w, (n, 1, 1), generator=g, device=x.device)
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    top, left = cy - size // 2, cx - size // 2
    inside = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return x.masked_fill(inside[:, None], 0.0)


def add_noise(x: torch.Tensor, max_sigma: float, g: torch.Generator,
              norm: Normalization = CIFAR10_NORMALIZATION) -> torch.Tensor:
    """Normal pixel noise on a batch standardised with ``norm``: per image a sigma uniform in [0, ``max_sigma``] on
    the 0-1 pixel scale (divided by each channel's std, as normalisation divides the pixels)."""
    if max_sigma <= 0:
        return x
    std = norm.tensor("std", x.device, x.dtype)
    sigma = max_sigma * torch.rand(x.shape[0], 1, 1, 1, generator=g, device=x.device, dtype=x.dtype)
    return x + torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype) * sigma / std


@dataclass(frozen=True)
class Augment:
    """The training-time transforms of a recipe. Its values are the recipe's data config (``train.config.DataConfig``,
    whose defaults are the only ones): build it with :meth:`from_config`."""

    crop_padding: int
    pad_mode: str  # "reflect" | "zero"
    flip: bool
    rotate_degrees: float
    cutout: int
    noise: float  # pixel noise: each image gets normal noise of a sigma drawn uniformly in [0, noise] (0-1 scale)
    policy: str  # "trivial": one TrivialAugment operation per image (data/policy.py), after crop and flip
    norm: Normalization = CIFAR10_NORMALIZATION  # how the batches it gets were standardised

    @classmethod
    def from_config(cls, data: object, norm: Normalization = CIFAR10_NORMALIZATION) -> Augment:
        """The transforms of a data config (each field read from ``data``'s attribute of the same name), for batches
        standardised with ``norm``."""
        return cls(**{f.name: getattr(data, f.name) for f in fields(cls) if f.name != "norm"}, norm=norm)

    def __call__(self, x: torch.Tensor, g: torch.Generator, flips: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: a normalised float batch on the generator's device. ``flips``: which images to mirror (e.g.
        ``alternating_flips``), instead of a coin toss per image."""
        x = random_crop(x, self.crop_padding, self.pad_mode, g)
        if self.flip:
            x = random_flip(x, g) if flips is None else torch.where(flips[:, None, None, None], x.flip(3), x)
        if self.policy == "trivial":
            x = trivial_augment_normalized(x, g, self.norm)
        x = random_rotate(x, self.rotate_degrees, g)
        return add_noise(cutout(x, self.cutout, g), self.noise, g, self.norm)
