"""Typed run configuration: dataclasses with defaults, TOML files, and checked ``--set section.key=value`` overrides.

The dataclass defaults are the study's baseline recipe (SGD lr 0.1, momentum 0.9, weight decay 5e-4, batch 128,
cosine over 100 epochs, crop + flip). :func:`default_config` is the recipe ``resbudget train`` runs with no argument.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomli_w

from .._io import read_toml
from ..models import ModelSpec, SpecError, get_preset, stage_sizes
from ..models.budget import DEFAULT_BUDGET


class ConfigError(ValueError):
    """An unknown key or a value of the wrong type or range."""


@dataclass(frozen=True)
class DataConfig:
    data_dir: str = ""  # "" = $RESBUDGET_DATA_DIR, else the cache folder
    val_size: int = 0  # images carved (seeded, stratified) from the training set for held-out decisions
    val_seed: int = 0
    crop_padding: int = 4
    pad_mode: Literal["reflect", "zero"] = "reflect"
    flip: bool = True
    flip_mode: Literal["random", "alternate"] = "random"  # alternate: each image mirrored in every other epoch
    rotate_degrees: float = 0.0
    cutout: int = 0
    # progressive sizing: the first small_crop_epochs epochs train on random small_crop x small_crop windows of the
    # augmented images (a 24px window costs ~half a 32px image); later epochs and evaluation see whole images
    small_crop: int = 0
    small_crop_epochs: int = 0
    train_limit: int = 0  # use only the first N training images (0 = all): smoke tests, never results
    test_limit: int = 0


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["sgd", "adam", "adamw", "muon"] = "sgd"
    lr: float = 0.1  # muon: the lr of the convolution filters
    momentum: float = 0.9  # muon: the filters' momentum
    nesterov: bool = False
    weight_decay: float = 5e-4  # muon: decay per step at the peak lr of the SGD-trained tensors (train/muon.py)
    betas: tuple[float, ...] = (0.9, 0.999)
    # muon only: everything that is not a convolution filter takes Nesterov SGD steps with these
    bias_lr: float = 0.0  # BatchNorm and stem biases, dense-head layers (lr on the mean loss)
    head_lr: float = 0.0  # the classifier's weight
    aux_momentum: float = 0.85


@dataclass(frozen=True)
class ScheduleConfig:
    name: Literal["cosine", "plateau", "warmup", "step", "constant"] = "cosine"
    t_max: float = 0.0  # cosine period in epochs; 0 = train.epochs
    min_lr: float = 0.0
    factor: float = 0.1  # plateau: multiply the lr by this (0.1, or 1/sqrt(10) = 0.31622776601683794)
    patience: int = 10  # plateau: epochs without improvement before the lr drops
    monitor: Literal["val", "test"] = "val"  # plateau watches validation accuracy; "test" reproduces the study
    warmup_epochs: float = 0.0  # warmup: linear ramp from 0, then decay
    decay: Literal["linear", "cosine"] = "linear"
    milestones: tuple[float, ...] = ()  # step: epochs at which the lr is multiplied by gamma
    gamma: float = 0.1


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100
    batch_size: int = 128
    eval_batch_size: int = 1000
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "auto"  # "auto" = CUDA when present, else CPU
    precision: Literal["bf16", "fp32"] = "bf16"
    channels_last: bool = True
    compile: bool = False
    budget: int = DEFAULT_BUDGET
    eval_test_every_epoch: bool = True  # per-epoch test metrics are for curves only; the result is the final epoch
    # also report the final test accuracy averaged over these views (train/tta.py: 1, 2, 4 or 6)
    tta: Literal["none", "flip", "flip-shift4", "flip-shift"] = "none"
    whiten_init: bool = False  # first conv = whitening filters of training patches (models/init.py)
    freeze_bn_weight: bool = False  # BatchNorm scales stay at 1; only their biases train (airbench)
    freeze_stem: bool = False  # the stem convolution's filters are not trained (with whiten_init: fixed whitening)
    stem_bias_epochs: int = 0  # > 0: the stem conv's bias (stem_norm = false) trains only in the first N epochs; with
    # a frozen stem the first stage then needs no input gradient, the dearest backward pass of the net (airbench: 3)
    dirac_init: bool = False  # every 3x3 conv after the stem starts with its first in_channels filters as identities
    drop_easy: float = 0.0  # from the second epoch on, skip this fraction of the training images: those with the
    # lowest loss when the net last trained on them (the training pass's own losses: no extra forward pass)
    tune_allocator: bool = False  # on CPU: glibc mallopt so freed memory is kept for reuse (train/cpu.py); off by
    # default: measured here it made short runs 3x slower (docs/RESULTS.md), its gain on long runs is not yet shown


@dataclass(frozen=True)
class ExperimentConfig:
    """What a run is for, carried into its summary: a name, and the study's reported numbers to compare with."""

    name: str = ""
    description: str = ""
    paper_accuracy: tuple[float, ...] = ()  # the study's reported final test accuracy (%), where it gives one
    paper_note: str = ""  # where the number comes from, and what was read into an ambiguous text


@dataclass(frozen=True)
class Config:
    model: ModelSpec = field(default_factory=lambda: get_preset("shallow"))
    preset: str = ""  # the preset the model started from, for the record
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)

    def __post_init__(self) -> None:
        s, t = self.schedule, self.train
        if s.name == "plateau" and s.monitor == "val" and self.data.val_size == 0:
            raise ConfigError(
                "schedule 'plateau' watches validation accuracy but data.val_size is 0: set data.val_size "
                "(e.g. 5000), or schedule.monitor='test' to reproduce the study, which watched the test set"
            )
        for name, value, low in (("train.epochs", t.epochs, 1), ("train.batch_size", t.batch_size, 1),
                                 ("train.eval_batch_size", t.eval_batch_size, 1), ("train.budget", t.budget, 1),
                                 ("data.val_size", self.data.val_size, 0), ("data.crop_padding", self.data.crop_padding, 0),
                                 ("data.cutout", self.data.cutout, 0), ("data.train_limit", self.data.train_limit, 0),
                                 ("data.test_limit", self.data.test_limit, 0), ("schedule.patience", s.patience, 0),
                                 ("train.stem_bias_epochs", t.stem_bias_epochs, 0),
                                 ("data.small_crop", self.data.small_crop, 0),
                                 ("data.small_crop_epochs", self.data.small_crop_epochs, 0)):
            if value < low:
                raise ConfigError(f"{name} must be >= {low}, got {value}")
        if not 0.0 <= t.drop_easy < 1.0:
            raise ConfigError(f"train.drop_easy must be a fraction in [0, 1), got {t.drop_easy}")
        if not 0.0 <= t.label_smoothing < 1.0:
            raise ConfigError(f"train.label_smoothing must be in [0, 1), got {t.label_smoothing}")
        if self.optim.lr <= 0 or not math.isfinite(self.optim.lr):
            raise ConfigError(f"optim.lr must be a positive number, got {self.optim.lr}")
        if not 0.0 < s.factor < 1.0:
            raise ConfigError(f"schedule.factor must be in (0, 1), got {s.factor}")
        if s.name == "warmup" and s.warmup_epochs >= t.epochs:
            raise ConfigError(f"schedule.warmup_epochs ({s.warmup_epochs}) must be below train.epochs ({t.epochs})")
        if list(s.milestones) != sorted(s.milestones):
            raise ConfigError(f"schedule.milestones must be increasing, got {list(s.milestones)}")
        self._check_small_crop()
        if t.stem_bias_epochs and self.model.stem_norm:
            raise ConfigError("train.stem_bias_epochs needs a stem with a bias: set model.stem_norm = false")
        if self.optim.name == "muon":
            for name in ("bias_lr", "head_lr"):
                value = getattr(self.optim, name)
                if not (value > 0 and math.isfinite(value)):
                    raise ConfigError(f"optim.{name} must be a positive number with optim.name = 'muon', got {value}")
        if not 0.0 <= self.optim.momentum < 1.0 or not 0.0 <= self.optim.aux_momentum < 1.0:
            raise ConfigError("optim.momentum and optim.aux_momentum must be in [0, 1)")
        if self.optim.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {self.optim.weight_decay}")
        if len(self.optim.betas) != 2:
            raise ConfigError(f"optim.betas needs two numbers, got {list(self.optim.betas)}")

    def _check_small_crop(self) -> None:
        d, size = self.data, self.model.image_size
        if not d.small_crop_epochs:
            return
        if not d.small_crop:
            raise ConfigError("data.small_crop_epochs is set but data.small_crop is 0; give the crop size in pixels")
        if d.small_crop_epochs >= self.train.epochs:
            raise ConfigError(f"data.small_crop_epochs ({d.small_crop_epochs}) must be below train.epochs "
                              f"({self.train.epochs}): the last epoch trains on whole images, so BatchNorm's "
                              "statistics match what evaluation sees")
        if not d.small_crop < size:
            raise ConfigError(f"data.small_crop ({d.small_crop}) must be smaller than the {size}px images")
        sizes = stage_sizes(self.model, d.small_crop)
        if min(sizes) < 1:
            raise ConfigError(f"data.small_crop ({d.small_crop}) is too small for this net: its stages would be "
                              f"{sizes} pixels")


# --- typed construction ----------------------------------------------------------------------------------------------
def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return f"list of {typing.get_args(hint)[0].__name__}"
    return getattr(hint, "__name__", str(hint))


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")
        return value
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {item.__name__}, got {value!r}")
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} is not a {_type_name(hint)}")
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {hint}")  # pragma: no cover - a bug in the dataclasses


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"[{prefix}] must be a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}.{unknown[0]}; allowed in [{prefix}]: {', '.join(names)}"
        )
    return cls(**{k: _coerce(v, hints[k], f"{prefix}.{k}") for k, v in data.items()})


_SECTIONS = {"data": DataConfig, "optim": OptimConfig, "schedule": ScheduleConfig, "train": TrainConfig,
             "experiment": ExperimentConfig}


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build a Config from plain data: ``preset`` names the starting model, ``[model]`` overrides its fields."""
    allowed = ["preset", "model", *_SECTIONS]
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise ConfigError(f"unknown section or key {unknown[0]!r}; allowed at the top level: {', '.join(allowed)}")
    preset = data.get("preset", "")
    if not isinstance(preset, str):
        raise ConfigError(f"preset: expected a preset name, got {preset!r}")
    base = get_preset(preset) if preset else ModelSpec()
    model_data = data.get("model", {})
    if not isinstance(model_data, dict):
        raise ConfigError(f"[model] must be a table, got {model_data!r}")
    merged = {**base.to_dict(), **model_data}
    try:
        hints = typing.get_type_hints(ModelSpec)
        unknown_model = [k for k in model_data if k not in hints]
        if unknown_model:
            raise ConfigError(f"unknown key model.{unknown_model[0]}; allowed in [model]: {', '.join(hints)}")
        spec = ModelSpec(**{k: _coerce(v, hints[k], f"model.{k}") for k, v in merged.items()})
    except SpecError as e:
        raise ConfigError(f"model: {e}") from None
    sections = {name: _build(cls, data.get(name, {}), name) for name, cls in _SECTIONS.items()}
    return Config(model=spec, preset=preset, **sections)


def config_to_dict(config: Config) -> dict[str, Any]:
    out: dict[str, Any] = {"preset": config.preset, "model": config.model.to_dict()}
    for name in _SECTIONS:
        section = dataclasses.asdict(getattr(config, name))
        out[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
    return out


def config_to_toml(config: Config) -> str:
    return tomli_w.dumps(config_to_dict(config))


def parse_override(text: str) -> tuple[str, Any]:
    """``section.key=value``; the value is read as TOML (``0.05``, ``true``, ``[64, 128]``), else as a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = (s.strip() for s in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for text in overrides:
        key, value = parse_override(text)
        parts = key.split(".")
        if len(parts) == 1 and parts[0] == "preset":
            data["preset"] = value
            continue
        if len(parts) != 2 or parts[0] not in ("model", *_SECTIONS):
            raise ConfigError(
                f"override key {key!r} must be section.key with section one of: model, {', '.join(_SECTIONS)}"
            )
        data.setdefault(parts[0], {})[parts[1]] = value
    return data


def load_config(source: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A preset name, a TOML file, or None (the default recipe); then the ``--set`` overrides."""
    if source is None:
        data = config_to_dict(default_config())
        data["model"] = {}  # the preset supplies the model; overrides change single fields
    elif Path(source).suffix == ".toml" or Path(source).is_file():
        data = read_toml(source, ConfigError)
    else:
        get_preset(str(source))  # an unknown name fails here, listing the presets
        data = {"preset": str(source)}
    return config_from_dict(apply_overrides(data, list(overrides)))


def default_config() -> Config:
    """The recipe of ``resbudget train`` with no argument: the ``airres`` net with airbench94's Muon recipe, cut to
    fit about 10 minutes on a 2-core CPU (docs/RESULTS.md has what it reaches and how fast).

    Muon on the convolution filters, Nesterov SGD on biases and the classifier, lr decaying linearly to zero from the
    first step; a frozen 2x2 patch-whitening stem whose bias trains for the first 2 epochs; dirac-initialised
    convolutions; BatchNorm scales frozen at 1; label smoothing 0.2; 2-pixel translations and alternating flips.
    8 epochs, of which only the first sees every image: from the second on, the half with the lowest loss when last
    seen is skipped (``drop_easy``), so the run costs 4.5 full epochs; measured here, this beats 5 epochs of every
    image. The final test accuracy is reported with and without TTA over 4 views (the image, its mirror, the mirror
    shifted up-left, the image shifted down-right; its cost counts in the wall time): on the same 3 nets it matched
    6-view TTA's accuracy for 2 views' fewer passes (~16 s here), and beat 2-view flip TTA by ~0.2 points.
    The SGD lrs are airbench's (summed-loss) values times the batch size, as ours are on the mean loss.
    """
    batch = 1000
    return Config(
        model=get_preset("airres"),
        preset="airres",
        data=DataConfig(crop_padding=2, flip_mode="alternate"),
        optim=OptimConfig(name="muon", lr=0.24, momentum=0.6, nesterov=True, bias_lr=0.053 * batch,
                          head_lr=0.67 * batch, aux_momentum=0.85, weight_decay=2e-6 * batch),
        schedule=ScheduleConfig(name="warmup", warmup_epochs=0.0, decay="linear"),
        train=TrainConfig(epochs=8, batch_size=batch, label_smoothing=0.2, whiten_init=True, freeze_stem=True,
                          stem_bias_epochs=2, freeze_bn_weight=True, dirac_init=True, eval_test_every_epoch=False,
                          tta="flip-shift4", drop_easy=0.5),
    )


def scale_epochs(config: Config, epochs: int) -> Config:
    """The same recipe over ``epochs`` epochs: every schedule length (cosine period, warm-up, milestones, plateau
    patience, small-crop epochs) is scaled by ``epochs / config.train.epochs``, so a 100-epoch study can run at a
    fraction of its cost."""
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    factor = epochs / config.train.epochs
    s = config.schedule
    schedule = dataclasses.replace(
        s,
        t_max=s.t_max * factor,
        warmup_epochs=s.warmup_epochs * factor,
        milestones=tuple(m * factor for m in s.milestones),
        patience=max(0, round(s.patience * factor)),
    )
    d = config.data
    data = dataclasses.replace(d, small_crop_epochs=min(round(d.small_crop_epochs * factor), epochs - 1))
    return dataclasses.replace(config, data=data, schedule=schedule,
                               train=dataclasses.replace(config.train, epochs=epochs))
