"""The pieces of the fast recipe that can be checked without a long run: whitening init, alternating flips, TTA,
and a training run that uses them all."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resbudget.data import alternating_flip_base, alternating_flips, normalize
from resbudget.models.prepare import patch_whitening, whiten_conv_
from resbudget.train import train_run
from resbudget.train.config import TrainConfig
from resbudget.train.tta import shift, tta_logits, tta_views

from .conftest import tiny_config

EPS = TrainConfig().whiten_eps  # the recipe's own whitening floor


def _patch_covariance(responses: torch.Tensor) -> torch.Tensor:
    flat = responses.transpose(0, 1).reshape(responses.shape[1], -1).double()
    flat = flat - flat.mean(1, keepdim=True)
    return flat @ flat.T / (flat.shape[1] - 1)


def test_whitening_filters_decorrelate_real_patches(small_cifar):
    images = normalize(small_cifar.train.images[:256])
    filters = patch_whitening(images, 3, eps=1e-6)
    assert filters.shape == (27, 3, 3, 3)
    cov = _patch_covariance(F.conv2d(images, filters))
    off_diagonal = cov - torch.diag(torch.diag(cov))
    assert off_diagonal.abs().max() < 1e-5
    assert ((cov.diag() > 0.98) & (cov.diag() < 1 + 1e-6)).all()  # lambda / (lambda + eps): 1 up to eps
    raw = _patch_covariance(F.unfold(images, 3).transpose(0, 1).reshape(27, -1, 1, 1).transpose(0, 1))
    off = raw - torch.diag(torch.diag(raw))
    assert off.abs().max() > 0.3  # neighbouring pixels are correlated before: the test can fail
    # on other images of the same distribution the responses stay close to decorrelated
    held_out = _patch_covariance(F.conv2d(normalize(small_cifar.train.images[256:512]), filters)).float()
    corr = held_out / torch.outer(held_out.diag().sqrt(), held_out.diag().sqrt())
    assert (corr - torch.eye(27)).abs().max() < 0.3


def test_whiten_conv_places_signed_pairs_and_keeps_the_rest(small_cifar):
    images = normalize(small_cifar.train.images[:64])
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 64, 3, padding=1, bias=False)
    before = conv.weight.detach().clone()
    whiten_conv_(conv, images, EPS)
    w = patch_whitening(images, 3, EPS)
    assert torch.allclose(conv.weight[0:54:2], w) and torch.allclose(conv.weight[1:54:2], -w)
    assert torch.equal(conv.weight[54:], before[54:])
    small = whiten_conv_(nn.Conv2d(3, 8, 3, bias=False), images, EPS)  # fewer channels: the strongest 4 directions
    assert torch.allclose(small.weight[0::2], w[:4])
    with pytest.raises(ValueError, match="channels"):
        whiten_conv_(nn.Conv2d(1, 8, 3), images, EPS)


def test_alternating_flips_are_deterministic_and_alternate():
    base = alternating_flip_base(1000, seed=3)
    assert torch.equal(base, alternating_flip_base(1000, seed=3))
    assert not torch.equal(base, alternating_flip_base(1000, seed=4))
    assert 400 < int(base.sum()) < 600
    idx = torch.randperm(1000)
    even, odd = alternating_flips(base, idx, 4), alternating_flips(base, idx, 5)
    assert torch.equal(even, base[idx]) and torch.equal(odd, ~even)  # each image mirrored in exactly one of the two
    assert torch.equal(alternating_flips(base, idx, 6), even)


def test_shift_moves_pixels_and_reflects_the_border():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    s = shift(x, 1, 1)
    assert torch.equal(s[..., 1:, 1:], x[..., :-1, :-1])
    assert torch.equal(s[..., 0, 1:], x[..., 1, :-1])  # reflected row
    assert torch.equal(shift(x, 0, 0), x)


def test_tta_equals_the_mean_of_its_views():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(10))
    x = torch.randn(5, 3, 8, 8)
    model(x)
    assert len(tta_views(x, "none")) == 1 and len(tta_views(x, "flip")) == 2
    views = tta_views(x, "flip-shift")
    assert len(views) == 6 and torch.equal(views[1], x.flip(-1))
    with torch.no_grad():
        expected = torch.stack([model(v) for v in views]).mean(0)
        assert torch.allclose(tta_logits(model, x, "flip-shift"), expected, atol=1e-6)
        assert not torch.allclose(expected, model(x), atol=1e-3)
        assert torch.equal(tta_logits(model, x, "none"), model(x))
    four = tta_views(x, "flip-shift4")
    assert len(four) == 4 and [torch.equal(a, b) for a, b in zip(four, views)] == [True, True, False, False]
    assert torch.equal(four[2], views[3]) and torch.equal(four[3], views[4])  # mirror up-left, image down-right
    with torch.no_grad():
        assert torch.allclose(tta_logits(model, x, "flip-shift4"), torch.stack([model(v) for v in four]).mean(0),
                              atol=1e-6)
    with pytest.raises(ValueError, match="TTA mode"):
        tta_views(x, "rot90")


def test_training_with_whitening_alternating_flips_and_tta(small_cifar, tmp_path):
    config = tiny_config("train.whiten_init=true", "data.flip_mode=alternate", "train.tta=flip-shift",
                         "train.epochs=1")
    s = train_run(config, tmp_path / "run", data=small_cifar, progress=False)
    assert 0 <= s.test_accuracy_tta <= 1 and s.test_accuracy is not None
    plain = train_run(tiny_config("train.epochs=1"), tmp_path / "plain", data=small_cifar, progress=False)
    assert plain.test_accuracy_tta is None


def test_one_tta_pass_gives_the_plain_numbers_too(small_cifar):
    from resbudget.train import evaluate
    torch.manual_seed(0)
    from resbudget.models import build_model

    from .conftest import TINY
    model = build_model(TINY).eval()
    plain = evaluate(model, small_cifar.test, batch_size=100, precision="fp32")
    loss, acc = plain["loss"], plain["accuracy"]
    r = evaluate(model, small_cifar.test, tta="flip-shift", batch_size=100, precision="fp32")
    loss2, acc2, acc_tta = r["loss"], r["accuracy"], r["accuracy_tta"]
    assert "accuracy_tta" not in plain
    with torch.no_grad():  # the TTA accuracy by hand: the mean of the logits over the views of each image
        x = normalize(small_cifar.test.images)
        acc_tta_ref = (tta_logits(model, x, "flip-shift").argmax(1) == small_cifar.test.labels).float().mean().item()
    assert acc2 == acc and loss2 == pytest.approx(loss, rel=1e-5)
    assert acc_tta == pytest.approx(acc_tta_ref, abs=1e-9)
