"""The network description: a small frozen dataclass that round-trips through TOML and JSON."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import tomli_w

from .._io import read_toml
from .._types import coerce, key_text
from ..compat import drop_removed_spec_keys

ShortcutKind = Literal["conv1x1", "conv3x3", "identity"]
SHORTCUT_KINDS: tuple[str, ...] = ("conv1x1", "conv3x3", "identity")
StageEntry = Literal["block", "conv-pool"]
STAGE_ENTRIES: tuple[str, ...] = ("block", "conv-pool")
BlockKind = Literal["basic", "single"]
BLOCK_KINDS: tuple[str, ...] = ("basic", "single")
Activation = Literal["relu", "gelu"]
ACTIVATIONS: tuple[str, ...] = ("relu", "gelu")
GlobalPool = Literal["avg", "max"]
GLOBAL_POOLS: tuple[str, ...] = ("avg", "max")


class SpecError(ValueError):
    """A model spec that cannot describe a network."""


@dataclass(frozen=True)
class ModelSpec:
    """A CIFAR ResNet: a 3x3 stem, then stages of basic residual blocks, global average pooling and a head.

    ``stage_widths[i]`` channels, ``stage_blocks[i]`` blocks and ``stage_strides[i]`` (applied by the first block)
    describe stage ``i``. ``shortcut`` is the projection used where a block changes width or resolution:
    ``conv1x1`` / ``conv3x3`` (conv + BatchNorm) or ``identity`` (average-pool downsampling and zero-padded channels,
    parameter-free; zero-padding cannot drop channels, so where a block narrows, e.g. a 64-wide stem into a 16-wide
    stage, that one shortcut is a 1x1 projection). ``head_hidden`` lists the hidden sizes of the dense head before the
    classifier.

    ``stage_entry`` says how a stage begins. ``block``: its first residual block changes width and resolution (He et
    al.). ``conv-pool``: conv3x3 to the new width, then max-pool by the stride, BN and ReLU, then ``stage_blocks[i]``
    residual blocks at that width, which may be 0 (the ResNet-9 / fast-CIFAR-recipe layout). The pooling floors odd
    sizes (31 -> 15), as ``nn.MaxPool2d`` does.

    ``block``: ``basic`` is conv3x3-BN-act-conv3x3-BN plus the shortcut, then act (He et al.); ``single`` is one
    conv3x3-BN-act plus the shortcut, the cheapest residual block (a fast-recipe stage: conv-pool, then one
    ``single`` block, is airbench's conv group with a skip around its second convolution).

    ``stem_kernel``: an odd kernel is padded to keep the size, an even one is unpadded and shrinks it by kernel - 1
    (2 -> 31x31 from 32x32, the 2x2 patch-whitening stem of airbench); ``stem_norm = false`` gives the stem conv a
    bias and no BatchNorm.
    ``activation`` is used everywhere, ``global_pool`` reduces the last map, ``logit_scale`` multiplies the logits
    (with a value other than 1 the classifier's weights start at unit standard deviation, as in airbench, which
    scales by 1/width). ``bn_momentum`` / ``bn_eps`` are torch's BatchNorm arguments.
    """

    # The net's shape has no default: the named nets are presets (models/presets.py), the default recipe's is the
    # preset its config names. The details below default to He et al.'s basic-block ResNet.
    stem_width: int
    stage_widths: tuple[int, ...]
    stage_blocks: tuple[int, ...]
    stage_strides: tuple[int, ...]
    shortcut: ShortcutKind = "conv1x1"
    stage_entry: StageEntry = "block"
    head_hidden: tuple[int, ...] = ()
    block: BlockKind = "basic"
    stem_kernel: int = 3
    stem_norm: bool = True
    activation: Activation = "relu"
    global_pool: GlobalPool = "avg"
    logit_scale: float = 1.0
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5
    num_classes: int = 10
    in_channels: int = 3
    image_size: int = 32

    def __post_init__(self) -> None:
        for name in ("stage_widths", "stage_blocks", "stage_strides", "head_hidden"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, name, tuple(value))
        self.validate()

    def validate(self) -> None:
        n = len(self.stage_widths)
        if n == 0:
            raise SpecError("stage_widths must name at least one stage")
        for name in ("stage_blocks", "stage_strides"):
            if len(getattr(self, name)) != n:
                raise SpecError(
                    f"{name} has {len(getattr(self, name))} entries but stage_widths has {n}; give one per stage"
                )
        for name in ("stage_widths", "stage_blocks", "head_hidden"):
            least = 0 if name == "stage_blocks" and self.stage_entry == "conv-pool" else 1
            bad = [v for v in getattr(self, name) if not isinstance(v, int) or isinstance(v, bool) or v < least]
            if bad:
                kind = "non-negative" if least == 0 else "positive"
                raise SpecError(f"{name} must hold {kind} integers, got {list(getattr(self, name))}"
                                + (" (0 blocks need stage_entry = 'conv-pool')" if name == "stage_blocks" else ""))
        bad = [s for s in self.stage_strides if s not in (1, 2)]
        if bad:
            raise SpecError(f"stage_strides must be 1 or 2, got {list(self.stage_strides)}")
        for name in ("stem_width", "stem_kernel", "num_classes", "in_channels", "image_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise SpecError(f"{name} must be a positive integer, got {v!r}")
        if self.shortcut not in SHORTCUT_KINDS:
            raise SpecError(f"shortcut must be one of {', '.join(SHORTCUT_KINDS)}; got {self.shortcut!r}")
        for name, allowed in (("stage_entry", STAGE_ENTRIES), ("block", BLOCK_KINDS), ("activation", ACTIVATIONS),
                              ("global_pool", GLOBAL_POOLS)):
            if getattr(self, name) not in allowed:
                raise SpecError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if not isinstance(self.stem_norm, bool):
            raise SpecError(f"stem_norm must be true or false, got {self.stem_norm!r}")
        for name, low, high in (("logit_scale", 0.0, float("inf")), ("bn_momentum", 0.0, 1.0), ("bn_eps", 0.0, 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not low < v <= high:
                raise SpecError(f"{name} must be a number in ({low}, {high}], got {v!r}")
        if self.stem_kernel > self.image_size:
            raise SpecError(f"stem_kernel ({self.stem_kernel}) is larger than the image ({self.image_size})")
        if min(stage_sizes(self)) < 1:
            raise SpecError(f"the feature map shrinks to nothing: stage sizes {stage_sizes(self)} from a "
                            f"{self.image_size}px image; use fewer stride-2 stages")

    # --- serialisation -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v, tuple) else v) for f in dataclasses.fields(self)
                for v in [getattr(self, f.name)]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """The spec of plain data (a TOML table, JSON metadata): every key known and every value of its type, or a
        ``SpecError`` that names it."""
        if not isinstance(data, dict):
            raise SpecError(f"a model spec must be a table of fields, got {type(data).__name__}")
        try:
            data = drop_removed_spec_keys(data)
        except ValueError as e:
            raise SpecError(str(e)) from None
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names), key=str)
        if unknown:
            raise SpecError(f"unknown key model.{key_text(unknown[0])}; allowed in [model]: {', '.join(names)}")
        missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.name not in data]
        if missing:
            raise SpecError(f"a model spec needs {', '.join(missing)} (missing: model.{missing[0]}); start from a "
                            "preset (`resbudget presets`) to change single fields")
        hints = typing.get_type_hints(cls)
        return cls(**{k: coerce(v, hints[k], f"model.{k}", SpecError) for k, v in data.items()})

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_toml(cls, path: str | Path) -> ModelSpec:
        data = read_toml(path, SpecError)
        if "model" in data and isinstance(data["model"], dict):
            data = data["model"]
        return cls.from_dict(data)


def stem_padded(spec: ModelSpec) -> bool:
    """Whether the stem convolution pads to keep the size: odd kernels do, even ones (airbench's 2x2) do not."""
    return spec.stem_kernel % 2 == 1


def stem_size(spec: ModelSpec, image_size: int | None = None) -> int:
    """Spatial size after the stem (for ``image_size`` pixels, by default the spec's): kept when padded, shrunk by
    kernel - 1 when not."""
    size = spec.image_size if image_size is None else image_size
    return size if stem_padded(spec) else size - spec.stem_kernel + 1


def stage_sizes(spec: ModelSpec, image_size: int | None = None) -> list[int]:
    """Spatial size of each stage's output (for ``image_size`` pixels, by default the spec's): strided 3x3 convs
    with padding 1 divide rounding up, max-pooling (``conv-pool``) rounding down."""
    size, sizes = stem_size(spec, image_size), []
    for stride in spec.stage_strides:
        size = size // stride if spec.stage_entry == "conv-pool" else (size + stride - 1) // stride
        sizes.append(size)
    return sizes


def collapsed_stage(spec: ModelSpec) -> int | None:
    """The first stage (1-based) whose output map is 1x1 while stages follow it, or None."""
    sizes = stage_sizes(spec)
    return next((i + 1 for i, size in enumerate(sizes[:-1]) if size == 1), None)


def spec_warnings(spec: ModelSpec) -> list[str]:
    """Design warnings that need no forward pass."""
    stage, n = collapsed_stage(spec), len(spec.stage_widths)
    if stage is None:
        return []
    return [f"the feature map collapses to 1x1 at stage {stage} of {n}; stages {stage + 1}..{n} see no spatial "
            "structure (in the study, stride 2 on every stage of the 8-stage net gave 91.2% against 93.2% with "
            "stride 2 on alternating stages)"]
