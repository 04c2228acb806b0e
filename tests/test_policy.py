"""TrivialAugment as batched tensor work (data/policy.py): seeded, label-preserving, identity at strength 0."""

import pytest
import torch

from resbudget.data import Augment, normalize
from resbudget.data.policy import NAMES, OPERATIONS, _affine, _colour, trivial_augment
from resbudget.train.config import DataConfig


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def images(n=64, seed=1):
    return torch.randint(0, 256, (n, 3, 32, 32), generator=gen(seed), dtype=torch.uint8).float() / 255


def test_the_same_seed_gives_the_same_images_and_another_seed_others():
    x = images()
    a, b, c = trivial_augment(x, gen(3)), trivial_augment(x, gen(3)), trivial_augment(x, gen(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= 0 and a.max() <= 1 + 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_every_operation_is_the_identity_at_strength_zero_and_changes_images_at_full(name):
    x = 0.25 + 0.5 * images(8)  # low contrast, so autocontrast has something to stretch
    zero, full = torch.zeros(8, 1, 1, 1), torch.ones(8, 1, 1, 1)
    sign = torch.ones(8, 1, 1, 1)
    if OPERATIONS[name][0] == "colour":
        def at(m):
            return _colour(name, x, m, sign)
    else:
        def at(m):
            grid = torch.nn.functional.affine_grid(_affine(name, m, sign, 32), [8, 3, 32, 32], align_corners=False)
            return torch.nn.functional.grid_sample(x, grid, align_corners=False)
    assert torch.allclose(at(zero), x, atol=1 / 510), name  # posterize rounds to the nearest of the 256 levels
    if name != "identity":
        assert (at(full) - x).abs().mean() > 0.01, name


def test_each_image_stays_in_its_place_so_labels_still_fit():
    # A shuffle, a mix of two images or a batch-wide statistic would carry a change of one image into other results.
    x = images(60)
    other = x.clone()
    other[0] = torch.rand(3, 32, 32, generator=gen(9))
    a, b = trivial_augment(x, gen(8)), trivial_augment(other, gen(8))
    assert not torch.equal(a[0], b[0])
    assert torch.equal(a[1:], b[1:])


def test_colour_operations_leave_untouched_images_exact_and_geometric_ones_keep_the_mean_fill():
    x = images(256)
    y = trivial_augment(x, gen(9))
    same = (y == x).all(dim=(1, 2, 3))
    assert 0 < same.float().mean() < 0.5  # identity (1 of 13) and weak draws leave images as they were
    # What a geometric operation uncovers is the CIFAR-10 mean: on a flat image every pixel lies between the image's
    # value and the mean, and far shifts reach the mean itself.
    from resbudget.data import MEAN

    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    flat = torch.full((64, 3, 32, 32), 0.9)
    share = (trivial_augment(flat, gen(10), ("translate_x", "translate_y")) - mean) / (0.9 - mean)
    assert share.min() > -1e-5 and share.max() < 1 + 1e-5
    assert share.min() < 1e-5 and (share > 1 - 1e-5).any()


def test_the_policy_runs_in_the_training_augmentation_and_is_seeded():
    x = normalize(torch.randint(0, 256, (32, 3, 32, 32), generator=gen(2), dtype=torch.uint8))
    aug = Augment.from_config(DataConfig(policy="trivial"))
    assert torch.equal(aug(x, gen(1)), aug(x, gen(1)))
    assert not torch.equal(aug(x, gen(1)), Augment.from_config(DataConfig())(x, gen(1)))
