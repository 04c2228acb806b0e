"""Test-time augmentation: the mean of the model's logits over a few label-preserving views of each image."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

TTA_MODES = ("none", "flip", "flip-shift4", "flip-shift")
VIEWS = {"none": 1, "flip": 2, "flip-shift4": 4, "flip-shift": 6}  # how many views each mode scores


def mode_of_views(views: int) -> str:
    """The TTA mode that scores ``views`` views (1, 2, 4 or 6)."""
    for mode, n in VIEWS.items():
        if n == views:
            return mode
    raise ValueError(f"--views must be one of {', '.join(map(str, VIEWS.values()))}, got {views}")


def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate by (dy, dx) pixels, filling the uncovered border by reflection (as the training crops pad)."""
    p = max(abs(dy), abs(dx))
    if p == 0:
        return x
    h, w = x.shape[-2:]
    padded = F.pad(x, (p, p, p, p), mode="reflect")
    return padded[..., p - dy:p - dy + h, p - dx:p - dx + w]


def tta_views(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """``none``: the image. ``flip``: it and its mirror. ``flip-shift``: those two, each also moved one pixel up-left
    and one pixel down-right (6 views). ``flip-shift4``: the image, its mirror, the mirror moved up-left and the image
    moved down-right (4 views: both flips and both shifts, each shift once)."""
    if mode not in TTA_MODES:
        raise ValueError(f"TTA mode must be one of {', '.join(TTA_MODES)}, not {mode!r}")
    views = [x]
    if mode != "none":
        views.append(x.flip(-1))
    if mode == "flip-shift":
        views += [shift(v, d, d) for d in (-1, 1) for v in views[:2]]
    elif mode == "flip-shift4":
        views += [shift(views[1], -1, -1), shift(x, 1, 1)]
    return views


def tta_view_logits(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: str) -> torch.Tensor:
    """The model's logits on each of ``tta_views(x, mode)``, computed in one batch: (views, N, classes). View 0 is
    the image itself, so one pass gives both the plain and the TTA prediction."""
    views = tta_views(x, mode)
    logits = model(torch.cat(views))
    return logits.view(len(views), x.shape[0], *logits.shape[1:])


def tta_logits(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: str) -> torch.Tensor:
    """Mean of the logits over ``tta_views(x, mode)``."""
    return tta_view_logits(model, x, mode).mean(0)
