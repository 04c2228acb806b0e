"""TrivialAugment (Müller & Hutter 2021) as batched tensor work: each image gets one operation, drawn uniformly from
the list below, at a strength drawn uniformly in [0, 1], with no per-image Python.

The operations and their ranges at full strength follow the paper's "wide" space, written here from its description
for float images on the 0-1 scale (the CIFAR-10 mean fills what a geometric operation uncovers). Equalize is left out:
a per-image histogram is not one tensor operation, and the paper's ablations credit the geometric and colour
operations, not it. Every operation keeps the label: nothing mixes images or moves one to another's place, and at
strength 0 every operation is the identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .dataset import CIFAR10_NORMALIZATION, MEAN, Normalization

# name -> (kind, full-strength magnitude); signed operations go either way with equal chance
OPERATIONS: dict[str, tuple[str, float]] = {
    "identity": ("colour", 0.0),
    "brightness": ("colour", 0.99),  # blend with black: factor 1 +- m
    "color": ("colour", 0.99),  # blend with the grey image: saturation factor 1 +- m
    "contrast": ("colour", 0.99),  # blend with the image's mean grey
    "sharpness": ("colour", 0.99),  # blend with a 3x3-smoothed copy
    "posterize": ("colour", 6.0),  # drop up to 6 of the 8 bits
    "solarize": ("colour", 1.0),  # invert pixels above 1 - m
    "autocontrast": ("colour", 1.0),  # stretch each channel to [0, 1], blended in by m
    "rotate": ("geometric", 135.0),  # degrees
    "shear_x": ("geometric", 0.99),
    "shear_y": ("geometric", 0.99),
    "translate_x": ("geometric", 32.0),  # pixels
    "translate_y": ("geometric", 32.0),
}
NAMES = tuple(OPERATIONS)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``other + factor * (x - other)``, clipped to [0, 1]: PIL's ImageEnhance convention (factor 1 = ``x``)."""
    return (other + factor * (x - other)).clamp(0.0, 1.0)


def _grey(x: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True).expand_as(x)


def _colour(name: str, x: torch.Tensor, m: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Operation ``name`` on every image of ``x`` (0-1) at strengths ``m`` and signs ``sign`` (both (n, 1, 1, 1))."""
    full = OPERATIONS[name][1]
    if name == "identity":
        return x
    if name == "brightness":
        return _blend(x, torch.zeros_like(x), 1 + sign * m * full)
    if name == "color":
        return _blend(x, _grey(x), 1 + sign * m * full)
    if name == "contrast":
        return _blend(x, _grey(x).mean((1, 2, 3), keepdim=True).expand_as(x), 1 + sign * m * full)
    if name == "sharpness":
        kernel = torch.ones(3, 1, 3, 3, device=x.device, dtype=x.dtype)
        kernel[:, :, 1, 1] = 5.0
        smooth = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel / 13.0, groups=3)
        return _blend(x, smooth, 1 + sign * m * full)
    if name == "posterize":
        step = 2.0 ** torch.round(m * full)  # keep 8 - round(6m) bits: step 1 (all 256 levels) at m = 0
        return torch.floor(torch.round(x * 255) / step) * step / 255
    if name == "solarize":
        return torch.where(x > 1.0 - m * full, 1.0 - x, x)  # strictly above: nothing at m = 0
    if name == "autocontrast":
        lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
        stretched = torch.where(hi > lo, (x - lo) / (hi - lo).clamp_min(1e-6), x)
        return x + m * (stretched - x)
    raise ValueError(f"unknown colour operation {name!r}")


def _affine(name: str, m: torch.Tensor, sign: torch.Tensor, size: int) -> torch.Tensor:
    """(n, 2, 3) ``affine_grid`` matrices of operation ``name`` (output -> input coordinates, in [-1, 1] units)."""
    n = m.shape[0]
    v = (sign * m * OPERATIONS[name][1]).view(n)
    one, zero = torch.ones_like(v), torch.zeros_like(v)
    if name == "rotate":
        a = v * (math.pi / 180)
        rows = [torch.cos(a), -torch.sin(a), zero, torch.sin(a), torch.cos(a), zero]
    elif name == "shear_x":
        rows = [one, v, zero, zero, one, zero]
    elif name == "shear_y":
        rows = [one, zero, zero, v, one, zero]
    elif name == "translate_x":
        rows = [one, zero, v * 2 / size, zero, one, zero]
    elif name == "translate_y":
        rows = [one, zero, zero, zero, one, v * 2 / size]
    else:
        raise ValueError(f"unknown geometric operation {name!r}")
    return torch.stack(rows, 1).view(n, 2, 3)


def trivial_augment(x: torch.Tensor, g: torch.Generator, names: tuple[str, ...] = NAMES,
                    fill: tuple[float, float, float] = MEAN) -> torch.Tensor:
    """One operation of ``names`` per image of the 0-1 float batch ``x`` (n, 3, h, w), drawn with ``g``: the
    operation, its strength in [0, 1] and its sign; a geometric one fills what it uncovers with ``fill`` (the set's
    mean colour). The same generator state gives the same images."""
    n, _, h, w = x.shape
    choice = torch.randint(0, len(names), (n,), generator=g, device=x.device)
    m = torch.rand(n, 1, 1, 1, generator=g, device=x.device, dtype=x.dtype)
    sign = torch.where(torch.rand(n, 1, 1, 1, generator=g, device=x.device) < 0.5, -1.0, 1.0).to(x.dtype)
    out = x.clone()
    theta = torch.eye(2, 3, device=x.device, dtype=x.dtype).expand(n, 2, 3).clone()
    geometric = torch.zeros(n, dtype=torch.bool, device=x.device)
    # Each operation works on the images that drew it only (gathered, changed, put back): all of them on every
    # image would cost the training step several times over on a CPU.
    for i, name in enumerate(names):
        picked = choice == i
        if OPERATIONS[name][0] == "geometric":
            theta[picked] = _affine(name, m[picked], sign[picked], w)
            geometric |= picked
        elif name != "identity":
            idx = picked.nonzero().squeeze(1)
            out[idx] = _colour(name, x[idx], m[idx], sign[idx])
    # One resampling for every geometric choice.
    idx = geometric.nonzero().squeeze(1)
    mean = torch.tensor(fill, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    grid = F.affine_grid(theta[idx], [len(idx), 3, h, w], align_corners=False)
    out[idx] = F.grid_sample(x[idx] - mean, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + mean
    return out


def trivial_augment_normalized(x: torch.Tensor, g: torch.Generator,
                               norm: Normalization = CIFAR10_NORMALIZATION) -> torch.Tensor:
    """:func:`trivial_augment` on a batch standardised with ``norm`` (as training batches are), filling with its
    set's mean."""
    mean, std = norm.tensor("mean", x.device, x.dtype), norm.tensor("std", x.device, x.dtype)
    return (trivial_augment((x * std + mean).clamp(0.0, 1.0), g, fill=norm.mean) - mean) / std
