"""Named architectures, registered once (timm's @register_model style)."""

from __future__ import annotations

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
    """The default model: 32-wide stem, stages 64/128/256/256 of one block, strides 2/2/2/1: 2,391,082 params.

    Downsampling in the first stage keeps it cheap (64M MACs per image, about 1/7 of ``shallow``), so a useful
    model trains in minutes on a 2-core CPU.
    """
    return ModelSpec(stem_width=32, stage_widths=(64, 128, 256, 256), stage_blocks=(1, 1, 1, 1),
                     stage_strides=(2, 2, 2, 1))
