"""Progressive sizing (small crops in the first epochs) and the unpadded 3x3 stem that makes the first stage cheap."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from resbudget.data import Augment, random_crop
from resbudget.models import ModelSpec, SpecError, build_model, get_preset, stage_sizes
from resbudget.train import train
from resbudget.train.config import ConfigError, default_config, load_config, scale_epochs
from resbudget.train.loop import make_augment

from .test_train import tiny_config


def test_small_crop_is_a_window_of_the_padded_image():
    x = torch.randn(64, 3, 10, 10)
    y = random_crop(x, 2, "zero", torch.Generator().manual_seed(0), size=6)
    assert y.shape == (64, 3, 6, 6)
    padded = F.pad(x, (2, 2, 2, 2))
    offsets = set()
    for i in range(64):
        hits = [(dy, dx) for dy in range(9) for dx in range(9) if torch.equal(padded[i, :, dy:dy + 6, dx:dx + 6], y[i])]
        assert hits, f"image {i} is not a 6x6 window of its padded self"
        offsets.add(hits[0])
    assert len(offsets) > 20  # 81 possible windows: positions are drawn per image
    # without padding, windows of the image itself
    z = random_crop(x, 0, "zero", torch.Generator().manual_seed(0), size=6)
    assert all(any(torch.equal(x[i, :, a:a + 6, b:b + 6], z[i]) for a in range(5) for b in range(5)) for i in range(8))
    with pytest.raises(ValueError, match="does not fit"):
        random_crop(x, 1, "zero", torch.Generator(), size=13)


def test_augment_crops_small_only_in_the_first_epochs():
    config = load_config(None, ["data.small_crop=24", "data.small_crop_epochs=2"])
    sizes = [make_augment(config, e)(torch.randn(4, 3, 32, 32), torch.Generator()).shape[-1] for e in range(4)]
    assert sizes == [24, 24, 32, 32]
    assert make_augment(default_config(), 0) == Augment(2, "reflect", True, 0.0, 0, 0)


def test_training_sees_small_crops_then_whole_images(small_cifar, tmp_path, monkeypatch):
    seen = []
    call = Augment.__call__
    monkeypatch.setattr(Augment, "__call__", lambda self, x, g, flips=None: seen.append(
        call(self, x, g, flips).shape[-1]) or call(self, x, g, flips))
    config = tiny_config("train.epochs=3", "data.small_crop=20", "data.small_crop_epochs=2")
    s = train(config, tmp_path / "run", data=small_cifar, progress=False)
    steps = len(seen) // 3
    assert seen == [20] * (2 * steps) + [32] * steps
    assert s["test_accuracy"] is not None


@pytest.mark.parametrize("sets, message", [
    (["data.small_crop_epochs=2"], "small_crop is 0"),
    (["data.small_crop=24", "data.small_crop_epochs=8"], "below train.epochs"),
    (["data.small_crop=32", "data.small_crop_epochs=2"], "smaller than"),
    (["data.small_crop=6", "data.small_crop_epochs=2"], "too small for this net"),
    (["data.small_crop=-1"], ">= 0"),
])
def test_bad_small_crop_settings_are_refused(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, sets)


def test_scaling_the_epochs_scales_the_small_crop_epochs():
    config = load_config(None, ["train.epochs=8", "data.small_crop=24", "data.small_crop_epochs=4"])
    assert scale_epochs(config, 4).data.small_crop_epochs == 2
    assert scale_epochs(config, 1).data.small_crop_epochs == 0  # one epoch: whole images only


def test_unpadded_3x3_stem_gives_30px_maps():
    spec = dataclasses.replace(get_preset("airres"), stem_kernel=3, stem_padding="valid")
    model = build_model(spec)
    assert model.stem[0].padding == (0, 0)
    assert model.stem(torch.randn(2, 3, 32, 32)).shape == (2, 24, 30, 30)
    assert stage_sizes(spec) == [15, 7, 3] and stage_sizes(spec, 24) == [11, 5, 2]
    assert model(torch.randn(2, 3, 24, 24)).shape == (2, 10)  # any size the stages do not shrink to nothing
    same = dataclasses.replace(spec, stem_padding="same")
    assert build_model(same).stem(torch.randn(1, 3, 32, 32)).shape[-1] == 32 and stage_sizes(same)[0] == 16
    assert ModelSpec(stem_kernel=3).stem_padding == "auto" and stage_sizes(ModelSpec(stem_kernel=3))[0] == 32
    with pytest.raises(SpecError, match="odd stem_kernel"):
        ModelSpec(stem_kernel=2, stem_padding="same")
    with pytest.raises(SpecError, match="stem_padding must be one of"):
        ModelSpec(stem_padding="full")
