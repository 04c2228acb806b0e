"""Named architectures, registered once (timm's @register_model style)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from .spec import ModelSpec

_PRESETS: dict[str, Callable[[], ModelSpec]] = {}
_DOCS: dict[str, str] = {}


class UnknownPresetError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; a plain sentence reads better
        return str(self.args[0])


def register_preset(name: str) -> Callable[[Callable[[], ModelSpec]], Callable[[], ModelSpec]]:
    def wrap(fn: Callable[[], ModelSpec]) -> Callable[[], ModelSpec]:
        if name in _PRESETS:
            raise ValueError(f"preset {name!r} is registered twice")
        _PRESETS[name] = fn
        _DOCS[name] = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        return fn

    return wrap


def list_presets() -> list[str]:
    return sorted(_PRESETS)


def preset_description(name: str) -> str:
    get_preset(name)
    return _DOCS[name]


def get_preset(name: str) -> ModelSpec:
    try:
        return _PRESETS[name]()
    except KeyError:
        raise UnknownPresetError(
            f"unknown preset {name!r}; available presets: {', '.join(list_presets())}"
        ) from None


@register_preset("resnet18")
def resnet18() -> ModelSpec:
    """CIFAR ResNet-18 of kuangliu/pytorch-cifar, widths 64/128/256/512: 11,173,962 params (over the 5M budget)."""
    return ModelSpec(stem_width=64, stage_widths=(64, 128, 256, 512), stage_blocks=(2, 2, 2, 2),
                     stage_strides=(1, 2, 2, 2))


@register_preset("shallow")
def shallow() -> ModelSpec:
    """ResNet-18 without its 512 stage, widths 64/128/256: 2,777,674 params (the study's best net)."""
    return ModelSpec(stem_width=64, stage_widths=(64, 128, 256), stage_blocks=(2, 2, 2), stage_strides=(1, 2, 2))


@register_preset("deeper")
def deeper() -> ModelSpec:
    """8 stages 16..220, two blocks each, stride 2 on alternating stages, 64-wide stem: 4,997,386 params.

    The count only comes out with kuangliu's fixed 64-wide stem. Every stage changes width, so every stage's first
    block has a projection whichever stages carry the stride; we put stride 2 on stages 2, 4, 6 and 8 (32 -> 2).
    """
    return ModelSpec(stem_width=64, stage_widths=(16, 32, 64, 96, 128, 160, 192, 220), stage_blocks=(2,) * 8,
                     stage_strides=(1, 2) * 4)


@register_preset("fast")
def fast() -> ModelSpec:
    """The first default model: 32-wide stem, stages 64/128/256/256 of one block, strides 2/2/2/1: 2,391,082 params.

    Downsampling in the first stage keeps it cheap (64M MACs per image, about 1/7 of ``shallow``), so a useful
    model trains in minutes on a 2-core CPU.
    """
    return ModelSpec(stem_width=32, stage_widths=(64, 128, 256, 256), stage_blocks=(1, 1, 1, 1),
                     stage_strides=(2, 2, 2, 1))


@register_preset("airres")
def airres() -> ModelSpec:
    """The default model: airbench94's layout as a residual net, stages 64/256/256: 1,972,802 params.

    A 2x2 patch-whitening stem (24 filters, unpadded: 31x31), then three stages of conv3x3 -> max-pool -> BN -> GELU
    followed by one single-conv residual block (airbench's conv group with a skip around its second convolution),
    global max-pooling and logits scaled by 1/256; BatchNorm momentum 0.4 (airbench's 0.6 in its own convention) and
    eps 1e-12. 118M MACs per image.
    """
    return ModelSpec(stem_width=24, stem_kernel=2, stem_norm=False, stage_widths=(64, 256, 256),
                     stage_blocks=(1, 1, 1), stage_strides=(2, 2, 2), stage_entry="conv-pool", block="single",
                     shortcut="identity", activation="gelu", global_pool="max", logit_scale=1 / 256,
                     bn_momentum=0.4, bn_eps=1e-12)


@register_preset("airres-wide")
def airres_wide() -> ModelSpec:
    """`airres` with airbench95's stage widths 128/384/384: 4,606,530 params.

    The GPU model (benchmarks/recipes/gpu-94.toml; its speed and accuracy are in docs/RESULTS.md). On a CPU every MAC
    costs time, so `airres` stays the default.
    """
    return dataclasses.replace(airres(), stage_widths=(128, 384, 384))


# --- the study's other architectures -------------------------------------------------------------------------------
# The study does not print every spec; where it is silent we searched the plausible readings with this builder and
# kept the one whose parameter count matches the one it reports (the reasoning is in each docstring).


@register_preset("narrow")
def narrow() -> ModelSpec:
    """ResNet-18 layout with widths 16/64/128/256 and kuangliu's 64-wide stem: 2,768,490 params.

    The base of the study's shortcut-kernel and dense-head experiments (its two accuracies for it: docs/STUDY.md).
    """
    return ModelSpec(stem_width=64, stage_widths=(16, 64, 128, 256), stage_blocks=(2, 2, 2, 2),
                     stage_strides=(1, 2, 2, 2))


@register_preset("narrow-conv3x3")
def narrow_conv3x3() -> ModelSpec:
    """`narrow` with 3x3 projection shortcuts instead of 1x1: 3,112,554 params."""
    return dataclasses.replace(narrow(), shortcut="conv3x3")


@register_preset("narrow-identity")
def narrow_identity() -> ModelSpec:
    """`narrow` with parameter-free identity shortcuts (average pool + zero-padded channels): 2,725,610 params.

    The one narrowing shortcut (64-wide stem into the 16-wide stage) stays a 1x1 projection. Of the readings we
    tried, this is the one whose saving of parameters matches the study's (docs/STUDY.md).
    """
    return dataclasses.replace(narrow(), shortcut="identity")


@register_preset("narrow-dense")
def narrow_dense() -> ModelSpec:
    """`narrow-conv3x3` with a dense head of hidden sizes 128 and 64: exactly the study's 3,151,786 params.

    Among `narrow` and `shallow` with each shortcut kind and stem width 16/32/64, only this reading gives that count,
    so the dense-head experiment was built on the 3x3-shortcut variant.
    """
    return dataclasses.replace(narrow_conv3x3(), head_hidden=(128, 64))


@register_preset("deeper-const-stride")
def deeper_const_stride() -> ModelSpec:
    """`deeper` with stride 2 on every stage: 4,997,386 params; stages 5-8 see 1x1 maps."""
    return dataclasses.replace(deeper(), stage_strides=(2,) * 8)


# The study's two ensembles. Its 5-net total, 4,937,010 = 5 x 987,402, is reached exactly only by irregular widths
# (e.g. stem 16, stages 52/104/128 with identity shortcuts); no member of the study's own shapes (shallow, narrow,
# deeper, with 1x1/3x3/identity shortcuts and the dense heads it used) with regular widths gives 987,402. The nearest
# regular one found is stem 80, stages 116/232 x 1 block, dense head (64): 987,410. We keep the study's best shape
# (shallow) and scale its widths to the widest that fits a fifth (a tenth) of the budget; docs/STUDY.md has the search.
@register_preset("ens5-1m")
def ens5_1m() -> ModelSpec:
    """Member of the 5-net ensemble: shallow at widths 38/76/152, 981,360 params (x5 = 4,906,800)."""
    return ModelSpec(stem_width=38, stage_widths=(38, 76, 152), stage_blocks=(2, 2, 2), stage_strides=(1, 2, 2))


@register_preset("ens10-500k")
def ens10_500k() -> ModelSpec:
    """Member of the 10-net ensemble: shallow at widths 27/54/108, 496,513 params (x10 = 4,965,130)."""
    return ModelSpec(stem_width=27, stage_widths=(27, 54, 108), stage_blocks=(2, 2, 2), stage_strides=(1, 2, 2))


ENSEMBLE_MEMBERS = {"ens5-1m": 5, "ens10-500k": 10}  # `resbudget ensemble train PRESET` trains this many by default
