"""The 3x3 convolution whose CPU training step takes a small map's weight gradient from nine matrix products."""

import pytest
import torch
import torch.nn.functional as F

from resbudget.models import conv as conv_module
from resbudget.models.conv import SMALL_MAP, WIDE, Conv3x3, matmul_weight_grad, weight_grad_3x3


@pytest.fixture
def amx(monkeypatch):
    """A CPU with AMX tiles, wherever the tests run."""
    monkeypatch.setattr(conv_module, "cpu_has_amx", lambda: True)


def reference_weight_grad(grad_out, x):
    """The weight gradient in float64, from torch's own convolution backward."""
    weight = torch.zeros(grad_out.shape[1], x.shape[1], 3, 3, dtype=torch.float64)
    return torch.ops.aten.convolution_backward(grad_out.double(), x.double(), weight, None, [1, 1], [1, 1], [1, 1],
                                               False, [0, 0], 1, [False, True, False])[1]


@pytest.mark.parametrize("shape", [(3, 5, 7, 4, 4), (2, 4, 3, 1, 1), (5, 8, 6, 3, 5), (1, 2, 2, 7, 2)])
def test_the_nine_products_are_the_weight_gradient(shape):
    """Every tap, the padding's included, on square and oblong maps, 1x1 ones and a batch of one: float32 agrees with
    float64 to rounding, in the weight's channels-last layout."""
    n, c, o, h, w = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn(n, o, h, w, generator=g)
    dw = weight_grad_3x3(grad_out, x)
    assert dw.shape == (o, c, 3, 3) and dw.dtype == torch.float32
    assert dw.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(dw.double(), reference_weight_grad(grad_out, x), rtol=1e-5, atol=1e-5)


def bf16_step(conv, x, grad_out, plain: bool):
    conv.weight.grad = None
    x = x.detach().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        y = F.conv2d(x, conv.weight, padding=1) if plain else conv(x)
    y.backward(grad_out)
    return y.detach(), x.grad, conv.weight.grad


def test_a_bf16_step_keeps_the_forward_and_the_input_gradient_bit_for_bit(amx):
    """Only the weight gradient's arithmetic changes: the output and the input gradient are oneDNN's, bit for bit; the
    weight gradient is the same sum rounded to bf16 once, as oneDNN's is (equal to within one bf16 rounding)."""
    torch.manual_seed(0)
    conv = Conv3x3(32, 48).to(memory_format=torch.channels_last)
    x = torch.randn(16, 32, 5, 5).contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn(16, 48, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert matmul_weight_grad(conv, x)
    y, gx, gw = bf16_step(conv, x, grad_out, plain=False)
    y0, gx0, gw0 = bf16_step(conv, x, grad_out, plain=True)
    assert torch.equal(y, y0) and torch.equal(gx, gx0)
    assert gw.dtype == torch.float32  # back through autocast's cast, onto the float32 weight
    exact = reference_weight_grad(grad_out.bfloat16(), x.bfloat16())
    for grad in (gw, gw0):
        torch.testing.assert_close(grad.double(), exact, rtol=2**-8, atol=1e-3)


def test_where_the_products_are_used(amx, monkeypatch):
    """A bf16 training step on a CPU with AMX over a small map; never in evaluation, without grad, in float32, over a
    large map (beyond 7x7, or beyond 5x5 for narrow layers), strided, with a bias, or without AMX."""
    x_small = torch.randn(2, 8, 5, 5)

    def used(conv, x=x_small, autocast=True, grad=True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), torch.set_grad_enabled(grad):
            return matmul_weight_grad(conv, x)

    narrow, wide = Conv3x3(8, 8), Conv3x3(WIDE, WIDE)
    assert used(narrow) and used(wide, torch.randn(1, WIDE, 7, 7))
    assert not used(narrow, torch.randn(2, 8, 7, 7))  # 7x7 pays from WIDE channels on
    assert not used(wide, torch.randn(1, WIDE, 8, 8))
    side = int(SMALL_MAP**0.5)
    assert used(narrow, torch.randn(1, 8, side, side)) and not used(narrow, torch.randn(1, 8, side + 1, side))
    assert not used(narrow, autocast=False) and not used(narrow, grad=False)
    assert not used(Conv3x3(8, 8, stride=2)) and not used(Conv3x3(8, 8, bias=True))
    assert not used(narrow.eval())
    frozen = Conv3x3(8, 8)
    frozen.weight.requires_grad_(False)
    assert not used(frozen)
    monkeypatch.setattr(conv_module, "cpu_has_amx", lambda: False)
    assert not used(narrow.train())


def test_amx_is_read_from_the_cpu_flags_and_a_cap_on_onednn_turns_it_off(monkeypatch):
    conv_module.cpu_has_amx.cache_clear()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert conv_module.cpu_has_amx() is False
    conv_module.cpu_has_amx.cache_clear()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    try:
        flags = open("/proc/cpuinfo", encoding="utf-8").read().split()
    except OSError:
        flags = []
    assert conv_module.cpu_has_amx() is ("amx_bf16" in flags)
    conv_module.cpu_has_amx.cache_clear()


def test_it_is_an_nn_conv2d_with_its_parameters_and_state_dict():
    torch.manual_seed(0)
    conv = Conv3x3(4, 6, stride=2)
    torch.manual_seed(0)
    plain = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False)
    assert isinstance(conv, torch.nn.Conv2d)
    assert conv.state_dict().keys() == plain.state_dict().keys()
    assert torch.equal(conv.weight, plain.weight)  # the same draws from the same seed: nets built as before
