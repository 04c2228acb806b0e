"""Typed run configuration: dataclasses with defaults, TOML files with a base, and checked ``--set`` overrides.

There is one set of defaults: the dataclass defaults below are the recipe ``resbudget train`` runs with no argument,
the base called ``default``. A config file names its base (``base = "default"``, ``"study"``, or another TOML file,
relative to the file) and spells out only what differs; without ``base`` it starts from ``default``. A bare preset
name (``resbudget train shallow``) is that net under the ``study`` base, the study's baseline recipe
(``train/bases/study.toml``). What a run writes (``config.toml``, ``summary.json``) is always the complete resolved
config, so nothing depends on a base file later.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomli_w

from .._io import MAX_DEPTH, check_depth, read_toml
from .._types import coerce, key_text
from ..compat import ADDED_KEYS, MOVED_KEYS, REMOVED_KEYS
from ..models import ModelSpec, SpecError, get_preset, list_presets
from ..models.budget import DEFAULT_BUDGET, MAX_PARAMS
from .calibration import TEMPERATURE_RANGE, temperature_in_range

BASES_DIR = Path(__file__).resolve().parent / "bases"
DEFAULTS = BASES_DIR / "default.toml"  # the base "default": never a file, the defaults are the dataclasses below

STUDY_MODE_NOTE = (
    "the plateau schedule watched TEST accuracy (schedule.monitor='test', as the study did): the test set "
    "influenced training, so test_accuracy is not a clean held-out estimate"
)


class ConfigError(ValueError):
    """An unknown key or a value of the wrong type or range."""


MAX_SEED = 2**32 - 1  # seeds are 32-bit everywhere they are used (torch, numpy, optuna's samplers)
MAX_EPOCHS = 10_000


@dataclass(frozen=True)
class Range:
    """The numbers a config key may hold: ``low`` to ``high``, each end included unless open. Below the low end a
    number means nothing; above the high end it is a typo that would run for years or exhaust the memory."""

    low: float
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False
    means: str = ""  # what the number is, where the range alone does not say

    def holds(self, value: float) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below  # False for NaN

    def describe(self) -> str:
        if self.high == math.inf:
            text = "a positive number" if self.open_low and self.low == 0 else f">= {self.low:,}"
        elif not (self.open_low or self.open_high):
            text = f"between {self.low:,} and {self.high:,}"
        else:
            text = f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"
        return f"{self.means} {text}" if self.means else text


_FRACTION = Range(0, 1, open_high=True)
# The range of every number a config holds, checked when a config is built and when a search space loads.
LIMITS: dict[str, Range] = {
    "train.epochs": Range(1, MAX_EPOCHS),
    "train.batch_size": Range(1, 65_536),
    "train.eval_batch_size": Range(1, 65_536),
    "train.budget": Range(1, MAX_PARAMS),
    "train.seed": Range(0, MAX_SEED),
    "train.stem_bias_epochs": Range(0, MAX_EPOCHS),
    "train.whiten_eps": Range(0, open_low=True),
    "train.drop_easy": Range(0, 1, open_high=True, means="a fraction"),
    "train.ema": Range(0, 1, open_high=True, means="a decay per step (0 = no average)"),
    "train.label_smoothing": _FRACTION,
    "data.val_size": Range(0, 49_000),
    "data.val_seed": Range(0, MAX_SEED),
    "data.crop_padding": Range(0, 16),  # pixels on each side of a 32-pixel image
    "data.cutout": Range(0, 32),  # the side of the square cut out
    "data.rotate_degrees": Range(0, 180),
    "data.noise": Range(0, 1, means="a sigma on the 0-1 pixel scale"),
    "data.train_limit": Range(0, 10_000_000),
    "data.test_limit": Range(0, 10_000_000),
    "optim.lr": Range(0, open_low=True),
    "optim.momentum": _FRACTION,
    "optim.aux_momentum": _FRACTION,
    "optim.weight_decay": Range(0),
    "schedule.patience": Range(0, MAX_EPOCHS),
    "schedule.t_max": Range(0, MAX_EPOCHS),
    "schedule.warmup_epochs": Range(0, MAX_EPOCHS),
    "schedule.factor": Range(0, 1, open_low=True, open_high=True),
}


# Read only with optim.name = "muon": the lrs of the tensors Muon trains with SGD (other recipes may leave them 0).
MUON_LIMITS: dict[str, Range] = {"optim.bias_lr": Range(0, open_low=True), "optim.head_lr": Range(0, open_low=True)}


def check_limit(key: str, value: float, error: type[Exception] = ConfigError, where: str = "") -> None:
    """``error`` naming ``key`` if ``value`` is outside its :data:`LIMITS` (a key without limits passes)."""
    if key in LIMITS and not LIMITS[key].holds(value):
        raise error(f"{where}{key} must be {LIMITS[key].describe()}, got {_shown(value)}")


def _shown(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value}"


@dataclass(frozen=True)
class DataConfig:
    val_size: int = 0  # images carved (seeded, stratified) from the training set for held-out decisions
    val_seed: int = 0
    crop_padding: int = 2
    pad_mode: Literal["reflect", "zero"] = "reflect"
    flip: bool = True
    flip_mode: Literal["random", "alternate"] = "alternate"  # alternate: each image mirrored in every other epoch
    rotate_degrees: float = 0.0
    cutout: int = 0
    noise: float = 0.02  # training images get pixel noise of a sigma uniform in [0, noise] (0-1 scale; 0 = none)
    policy: Literal["none", "trivial"] = "none"  # trivial: one TrivialAugment operation per image (data/policy.py)
    train_limit: int = 0  # use only the first N training images (0 = all): smoke tests, never results
    test_limit: int = 0


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["sgd", "adam", "adamw", "muon"] = "muon"
    lr: float = 0.24  # muon: the lr of the convolution filters
    momentum: float = 0.6  # muon: the filters' momentum
    nesterov: bool = True
    weight_decay: float = 0.002  # muon: decay per step at the peak lr of the SGD-trained tensors (train/muon.py)
    betas: tuple[float, ...] = (0.9, 0.999)
    # muon only: everything that is not a convolution filter takes Nesterov SGD steps with these. airbench's
    # (summed-loss) lrs times the batch of 1,000, as ours are on the mean loss: 0.053 and 0.67 per image
    bias_lr: float = 53.0  # BatchNorm and stem biases, dense-head layers
    head_lr: float = 670.0  # the classifier's weight
    aux_momentum: float = 0.85


@dataclass(frozen=True)
class ScheduleConfig:
    name: Literal["cosine", "plateau", "warmup", "step", "constant"] = "warmup"
    t_max: float = 0.0  # cosine period in epochs; 0 = train.epochs
    min_lr: float = 0.0
    factor: float = 0.1  # plateau: multiply the lr by this (0.1, or 1/sqrt(10) = 0.31622776601683794)
    patience: int = 10  # plateau: epochs without improvement before the lr drops
    monitor: Literal["val", "test"] = "val"  # plateau watches validation accuracy; "test" reproduces the study
    warmup_epochs: float = 0.0  # warmup: linear ramp from 0, then decay (0: decay from the first step)
    decay: Literal["linear", "cosine"] = "linear"
    milestones: tuple[float, ...] = ()  # step: epochs at which the lr is multiplied by gamma
    gamma: float = 0.1


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 8
    batch_size: int = 1000
    eval_batch_size: int = 1000
    label_smoothing: float = 0.2
    seed: int = 0
    device: str = "auto"  # "auto" = CUDA when present, else CPU
    precision: Literal["bf16", "fp32"] = "bf16"
    channels_last: bool = True
    budget: int = DEFAULT_BUDGET
    eval_test_every_epoch: bool = False  # per-epoch test metrics are for curves only; the result is the final epoch
    # also report the final test accuracy averaged over these views (train/tta.py: 1, 2, 4 or 6)
    tta: Literal["none", "flip", "flip-shift4", "flip-shift"] = "flip-shift4"
    whiten_init: bool = True  # first conv = whitening filters of training patches (models/prepare.py)
    whiten_eps: float = 0.01  # added to each patch-covariance eigenvalue before dividing by its root: the larger, the
    # less the stem amplifies the faint (high-frequency) directions of the patches, which pixel noise fills
    freeze_bn_weight: bool = True  # BatchNorm scales stay at 1; only their biases train (airbench)
    freeze_stem: bool = True  # the stem convolution's filters are not trained (with whiten_init: fixed whitening)
    stem_bias_epochs: int = 2  # > 0: the stem conv's bias (stem_norm = false) trains only in the first N epochs;
    # with a frozen stem the first stage then needs no input gradient, the dearest backward pass of the net
    dirac_init: bool = True  # every 3x3 conv after the stem starts with its first in_channels filters as identities
    drop_easy: float = 0.5  # from the second epoch on, skip this fraction of the training images: those with the
    # lowest loss when the net last trained on them (the training pass's own losses: no extra forward pass)
    ema: float = 0.0  # > 0: evaluate and keep an exponential moving average of the weights with this decay per step
    # (train/average.py; 0 = the trained weights themselves)
    # The recipe's calibration temperature, for a run without a validation split of its own (one with a split fits
    # its own): the mean of the temperatures fitted on the validation splits of this recipe's runs (docs/RESULTS.md,
    # "Calibration"). It divides the mean logits over the TTA views. 0 = none measured for the recipe (T = 1).
    temperature: float = 0.43
    temperature_source: str = ""  # where train.temperature comes from, as the summary records it ("": the recipe's)


@dataclass(frozen=True)
class ExperimentConfig:
    """What a run is for, carried into its summary: a name, and the study's reported numbers to compare with."""

    name: str = ""
    description: str = ""
    paper_accuracy: tuple[float, ...] = ()  # the study's reported final test accuracy (%), where it gives one
    paper_note: str = ""  # where the number comes from, and what was read into an ambiguous text


@dataclass(frozen=True)
class Config:
    """The default recipe: the ``airres`` net with airbench94's Muon recipe, cut to fit a few minutes of a 2-core CPU
    and made robust to faint pixel noise (docs/RESULTS.md has what it reaches and how fast).

    Muon on the convolution filters, Nesterov SGD on biases and the classifier, lr decaying linearly to zero from the
    first step; a frozen 2x2 patch-whitening stem whose bias trains for the first epochs; dirac-initialised
    convolutions; BatchNorm scales frozen at 1; label smoothing; small translations and alternating flips. Pixel
    noise on the training images and a whitening floor well above airbench's: without them, faint noise at test time
    costs most of the accuracy (the recipe ``no-noise``). Only the first epoch sees every image: from the second on,
    the half with the lowest loss when last seen is skipped (``drop_easy``), which beat fewer epochs of every image
    at the same cost. The final test accuracy is reported with and without TTA over 4 views (the image, its mirror,
    the mirror shifted up-left, the image shifted down-right; its cost counts in the wall time), which matched 6-view
    TTA for fewer passes and beat 2-view flip TTA (docs/journal.md).
    """

    model: ModelSpec = field(default_factory=lambda: get_preset("airres"))
    preset: str = "airres"  # the preset the model started from, for the record
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)

    @property
    def monitored(self) -> str | None:
        """The value of an epoch's row that the schedule reacts to: the plateau schedule's ``val_acc`` or, as the
        study did, ``test_acc``; None for the schedules that react to nothing."""
        if self.schedule.name != "plateau":
            return None
        return "test_acc" if self.schedule.monitor == "test" else "val_acc"

    @property
    def watches_test(self) -> bool:
        """Whether the schedule reads test accuracy (the study's way; every output of such a run says so)."""
        return self.monitored == "test_acc"

    def __post_init__(self) -> None:
        s, t = self.schedule, self.train
        if s.name == "plateau" and s.monitor == "val" and self.data.val_size == 0:
            raise ConfigError(
                "schedule 'plateau' watches validation accuracy but data.val_size is 0: set data.val_size "
                "(e.g. 5000), or schedule.monitor='test' to reproduce the study, which watched the test set"
            )
        for key, limit in (LIMITS | (MUON_LIMITS if self.optim.name == "muon" else {})).items():
            section, _, name = key.partition(".")
            value = getattr(getattr(self, section), name)
            if not limit.holds(value):
                raise ConfigError(f"{key} must be {limit.describe()}, got {_shown(value)}")
        if any(not 0 <= m <= MAX_EPOCHS for m in s.milestones):
            raise ConfigError(f"schedule.milestones must be epochs between 0 and {MAX_EPOCHS:,}, got "
                              f"{list(s.milestones)}")
        if t.temperature != 0 and not temperature_in_range(t.temperature):
            raise ConfigError("train.temperature must be 0 (none) or between {:g} and {:g}, got {}".format(
                *TEMPERATURE_RANGE, t.temperature))
        if s.name == "warmup" and s.warmup_epochs >= t.epochs:
            raise ConfigError(f"schedule.warmup_epochs ({s.warmup_epochs}) must be below train.epochs ({t.epochs})")
        if list(s.milestones) != sorted(s.milestones):
            raise ConfigError(f"schedule.milestones must be increasing, got {list(s.milestones)}")
        if t.stem_bias_epochs and self.model.stem_norm:
            raise ConfigError("train.stem_bias_epochs needs a stem with a bias: set model.stem_norm = false")
        if len(self.optim.betas) != 2:
            raise ConfigError(f"optim.betas needs two numbers, got {list(self.optim.betas)}")


# --- typed construction ----------------------------------------------------------------------------------------------
def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(f"unknown key {prefix}.{key_text(unknown[0])}; allowed in [{prefix}]: {', '.join(names)}")
    return cls(**{k: coerce(v, hints[k], f"{prefix}.{k}", ConfigError) for k, v in data.items()})


_SECTIONS = {"data": DataConfig, "optim": OptimConfig, "schedule": ScheduleConfig, "train": TrainConfig,
             "experiment": ExperimentConfig}
_TOP_LEVEL = ("base", "preset", "model", *_SECTIONS)

def _merge(resolved: dict[str, Any], layer: dict[str, Any], where: str, stored: bool = False) -> dict[str, Any]:
    """``layer`` (a file's or the overrides' tables) on top of a complete plain config: ``preset`` replaces the whole
    model with that preset's spec, then ``[model]`` and the other tables change single keys."""
    out = copy.deepcopy(resolved)
    unknown = [k for k in layer if k not in _TOP_LEVEL]
    if unknown:
        raise ConfigError(f"{where}: unknown section or key {unknown[0]!r}; allowed at the top level: "
                          f"{', '.join(_TOP_LEVEL)}")
    if "preset" in layer:
        if not isinstance(layer["preset"], str) or not layer["preset"]:
            raise ConfigError(f"{where}: preset: expected a preset name, got {layer['preset']!r}")
        out["preset"], out["model"] = layer["preset"], get_preset(layer["preset"]).to_dict()
    for section in ("model", *_SECTIONS):
        table = layer.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: [{section}] must be a table, got {table!r}")
        for key, value in table.items():
            name = f"{section}.{key}"
            if name in MOVED_KEYS:
                if stored:  # a run folder written before the key left the config: the value is found anew
                    continue
                raise ConfigError(f"{where}: {MOVED_KEYS[name]}")
            if name in REMOVED_KEYS:
                if value != REMOVED_KEYS[name]:
                    raise ConfigError(f"{where}: {name} was removed (measured as not paying: docs/journal.md, "
                                      f"'Tried, not kept'); only its no-op value {REMOVED_KEYS[name]!r} is still read")
                continue
            out[section][key] = value
    train = layer.get("train", {})
    if not stored and "temperature" in train and "temperature_source" not in train and Path(where).parent != BASES_DIR:
        # a temperature the user gives (a file of theirs, --set) is recorded as theirs, not as the recipe's fitted one
        given = "with --set train.temperature" if where == "--set" else f"in {where}"
        out["train"]["temperature_source"] = f"given {given}"
    return out


def named_recipes() -> list[str]:
    """The recipes ``resbudget train NAME`` knows: the defaults and the files under train/bases/."""
    return ["default", *sorted(p.stem for p in BASES_DIR.glob("*.toml"))]


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except ValueError:  # a NUL byte in the name
        raise ConfigError(f"{str(path)!r} is not a valid file name") from None
    except (RuntimeError, OSError):  # Python 3.11-3.12 raise RuntimeError on a loop, later ones OSError
        raise ConfigError(f"{path} is a loop of symbolic links, not a TOML file") from None


def _base_path(base: str, where: Path | None) -> Path:
    if base.endswith(".toml") or "/" in base or "\\" in base:
        path = Path(base).expanduser()
        path = path if path.is_absolute() or where is None else where.parent / path
        return _resolved(path)
    path = BASES_DIR / f"{base}.toml"
    if path == DEFAULTS:
        return path
    if not path.is_file():
        raise ConfigError(f"{where or 'config'}: unknown base {base!r}; use one of {', '.join(named_recipes())}, or "
                          "a .toml file")
    return path


def _resolve(layer: dict[str, Any], where: Path | None, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The complete plain config a file's tables describe: its base resolved first (recursively), then its own."""
    base = layer.get("base", "default")
    if not isinstance(base, str):
        raise ConfigError(f"{where or 'config'}: base: expected a base name or a .toml file, got {base!r}")
    path = _base_path(base, where)
    if path == DEFAULTS:
        resolved = config_to_dict(Config())
    else:
        if path in seen:
            chain = " -> ".join(str(p) for p in (*seen, path))
            raise ConfigError(f"{where}: the bases form a loop: {chain}")
        resolved = _resolve(read_toml(path, ConfigError), path, (*seen, path))
    return _merge(resolved, layer, str(where or "config"))


def _build_config(data: dict[str, Any]) -> Config:
    try:
        spec = ModelSpec.from_dict(data["model"])
    except SpecError as e:
        raise ConfigError(f"model: {e}") from None
    sections = {name: _build(cls, data[name], name) for name, cls in _SECTIONS.items()}
    return Config(model=spec, preset=data["preset"], **sections)


def config_from_dict(data: dict[str, Any], *, stored: bool = False) -> Config:
    """A Config from plain data laid over its base (``base``, by default the default recipe), as a file reads.
    ``stored``: the data is a run folder's own config.toml, which may predate data_dir leaving the config."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a table of sections, got {data!r}")
    if stored:
        older = {}  # the keys this run folder predates, with the values that describe it
        for key, value in ADDED_KEYS.items():
            section, _, name = key.partition(".")
            if isinstance(data.get(section), dict) and name not in data[section]:
                older.setdefault(section, {})[name] = value
        resolved = _merge(config_to_dict(Config()), data, "config.toml", stored=True)
        return _build_config(_merge(resolved, older, "config.toml", stored=True))
    return _build_config(_resolve(data, None))


def config_to_dict(config: Config) -> dict[str, Any]:
    """The complete config as plain data (every key, no base): what a run folder records."""
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
    except RecursionError:
        raise ConfigError(f"override {key}: the value nests lists more than {MAX_DEPTH} deep") from None
    check_depth(value, ConfigError, f"override {key}")
    return key, value


def overrides_layer(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``--set`` overrides as one layer of tables (``preset=NAME`` replaces the model, as a file's ``preset`` does)."""
    layer: dict[str, Any] = {}
    for text in overrides:
        key, value = parse_override(text)
        parts = key.split(".")
        if parts == ["preset"]:
            layer["preset"] = value
            continue
        if len(parts) != 2 or parts[0] not in ("model", *_SECTIONS):
            raise ConfigError(
                f"override key {key!r} must be section.key with section one of: model, {', '.join(_SECTIONS)}"
            )
        layer.setdefault(parts[0], {})[parts[1]] = value
    return layer


def load_config(source: str | Path | dict[str, Any] | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """None or ``"default"``: the default recipe; a TOML file (over its base); a named recipe (``study``, ``best``,
    ``no-noise``: :func:`named_recipes`); a preset name: that net under the
    ``study`` recipe; a dict: a file's tables. Then the ``--set`` overrides."""
    if source is None or isinstance(source, dict) or source == "default":
        resolved = _resolve(source if isinstance(source, dict) else {}, None)
    elif Path(source).suffix == ".toml" or Path(source).is_file():
        path = Path(source)
        resolved = _resolve(read_toml(path, ConfigError), _resolved(path), (_resolved(path),))
    elif (BASES_DIR / f"{source}.toml").is_file():
        resolved = _resolve({"base": str(source)}, None)
    elif str(source) in list_presets():
        resolved = _resolve({"base": "study", "preset": str(source)}, None)
    else:
        raise ConfigError(f"unknown recipe or preset {str(source)!r}: recipes are {', '.join(named_recipes())}; "
                          f"presets are {', '.join(list_presets())}; or give a .toml file")
    return _build_config(_merge(resolved, overrides_layer(overrides), "--set"))


def default_config() -> Config:
    """The recipe of ``resbudget train`` with no argument (the dataclass defaults; see :class:`Config`)."""
    return Config()


def scale_epochs(config: Config, epochs: int) -> Config:
    """The same recipe over ``epochs`` epochs: every schedule length (cosine period, warm-up, milestones, plateau
    patience) is scaled by ``epochs / config.train.epochs``, so a 100-epoch study can run at a fraction of its cost."""
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
    return dataclasses.replace(config, schedule=schedule, train=dataclasses.replace(config.train, epochs=epochs))
