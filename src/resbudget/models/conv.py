"""The net's 3x3 convolutions, with the weight gradient of a small map computed as nine matrix products on a CPU.

oneDNN computes a convolution's weight gradient several times slower than its forward pass when the map is small
(7x7 and below in a CIFAR net's last stages) and the channels many: it reduces over images x pixels in blocks
sized for large maps. The same gradient is nine matrix products, one per tap of the 3x3 kernel:

    dW[:, :, kh, kw] = sum over images and pixels p of  grad_out[p] (x) x[p + offset(kh, kw)]

With each image laid out row by row, one zero column after every row and one zero row between images (and around
the whole batch), every tap's neighbour ``x[p + offset]`` is the same flat array shifted by one offset, the zeros
standing in for the padding. Each tap is then one ``grad_out^T @ x_shifted`` over contiguous rows, with no
im2col copy nine times the input's size; the price is the arithmetic spent on the zero rows.

Only the backward pass changes: the forward is ``F.conv2d`` and the input gradient oneDNN's own, as before. Where
the products pay (a bf16 training step on a CPU with AMX tiles, a map of at most ``SMALL_MAP`` pixels, or
``MEDIUM_MAP`` with ``WIDE`` channels or more; docs/RESULTS.md has the timings) :func:`matmul_weight_grad` says so;
anywhere else (a GPU, a CPU whose bf16 matrix products run on AVX-512 alone, where oneDNN's own gradient is the
faster, fp32, evaluation, large maps) the layer is a plain ``nn.Conv2d``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

SMALL_MAP = 25  # pixels (5x5): the products beat oneDNN at every width measured
MEDIUM_MAP = 49  # pixels (7x7): they beat it from WIDE channels (in and out) on
WIDE = 256


def weight_grad_3x3(grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The weight gradient of a 3x3, stride-1, padding-1 convolution without bias: ``grad_out`` [N, O, H, W] and
    its input ``x`` [N, C, H, W] (any memory format) -> [O, C, 3, 3] in ``x``'s dtype, channels-last."""
    n, c, h, w = x.shape
    o = grad_out.shape[1]
    row = w + 1  # a zero after every row: the right neighbour of its last pixel, the left one of the next row's first
    rows = n * (h + 1) * row  # a zero row above every image: the row below the previous image, the row above its own
    lead = row + 1  # the zeros before the first image (the row above it and one more) and after the last
    xs = x.new_empty(lead + rows + lead, c)
    xs[:lead].zero_()
    xs[lead + rows:].zero_()
    _to_grid(xs[lead:lead + rows], x)
    gs = _to_grid(grad_out.new_empty(rows, o), grad_out)  # the gradient at the same places, zero at the padding's
    dw = x.new_empty(o, 3, 3, c)
    for kh in range(3):
        for kw in range(3):
            start = lead + (kh - 1) * row + (kw - 1)
            torch.mm(gs.T, xs[start:start + rows], out=dw[:, kh, kw])
    return dw.permute(0, 3, 1, 2)


def _to_grid(flat: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Write ``t`` [N, C, H, W] into ``flat`` [N * (H + 1) * (W + 1), C] row by row below a zero row, each row followed
    by a zero; only the zeros and the pixels are written, each once."""
    n, c, h, w = t.shape
    grid = flat.view(n, h + 1, w + 1, c)
    grid[:, 0].zero_()
    grid[:, 1:, w].zero_()
    grid[:, 1:, :w].copy_(t.permute(0, 2, 3, 1))
    return flat


class _Conv3x3(torch.autograd.Function):
    """``F.conv2d(x, weight, padding=1)`` whose backward takes the weight gradient from :func:`weight_grad_3x3`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - torch's ctx
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, padding=1)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # noqa: ANN001
        x, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(grad_out, x, weight, None, [1, 1], [1, 1], [1, 1], False,
                                                         [0, 0], 1, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_w = weight_grad_3x3(grad_out, x)
        return grad_x, grad_w


@functools.cache
def cpu_has_amx() -> bool:
    """Whether this CPU multiplies bf16 matrices in AMX tiles (Linux's ``amx_bf16`` flag) and oneDNN may use them
    (``ONEDNN_MAX_CPU_ISA`` unset, or naming an AMX level)."""
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if isa and isa != "ALL" and "AMX" not in isa:
        return False
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "amx_bf16" in cpuinfo.split()


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a CPU convolution of ``x`` computes in: autocast's where it is on, else ``x``'s."""
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype


def matmul_weight_grad(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether ``conv``'s step on ``x`` takes its weight gradient from :func:`weight_grad_3x3`: a bf16 (autocast)
    training step on a CPU with AMX, a 3x3 stride-1 padding-1 convolution without bias or groups, over a small map."""
    if not (conv.training and torch.is_grad_enabled() and conv.weight.requires_grad and x.device.type == "cpu"):
        return False
    if _compute_dtype(x) != torch.bfloat16 or x.dim() != 4:
        return False
    if (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups) != ((3, 3), (1, 1), (1, 1),
                                                                                     (1, 1), 1):
        return False
    pixels = x.shape[-2] * x.shape[-1]
    wide = min(conv.in_channels, conv.out_channels) >= WIDE
    small = pixels <= SMALL_MAP or (wide and pixels <= MEDIUM_MAP)
    return conv.bias is None and small and cpu_has_amx()


class Conv3x3(nn.Conv2d):
    """A 3x3 convolution (an ``nn.Conv2d``, same parameters and state dict) whose training step on a CPU takes the
    weight gradient of a small map from nine matrix products (see the module's docstring)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not matmul_weight_grad(self, x):
            return super().forward(x)
        dtype = _compute_dtype(x)
        x, weight = x.to(dtype), self.weight.to(dtype)  # what autocast casts to; the casts carry the gradient back
        with torch.autocast("cpu", enabled=False):
            return _Conv3x3.apply(x, weight)
