"""What a search draws: config keys and their ranges, a TOML file that fixes or narrows them, and the checks that
reject a drawn net from its spec alone.

A parameter is a config key (``optim.lr``, ``model.block``) with one of three forms:

- a plain value: fixed (``"train.epochs" = 12``; a list for a per-stage key: ``"model.stage_widths" = [64, 256, 256]``);
- ``{choices = [...]}``: one of these;
- ``{low = a, high = b}``, with ``log = true`` or ``step = s``: a number in the range (whole numbers when both ends
  are integers).

``model.stages`` is the number of stages; the per-stage keys (``model.stage_widths``, ``model.stage_blocks``,
``model.stage_strides``) are then drawn once per stage. A space file holds ``base`` (the recipe trials start from: a
base name or a config file, as in a config's ``base``) and a ``[params]`` table laid over :data:`DEFAULT_SPACE`: a key
it names replaces the default's range, a key the default lacks is added.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._io import read_toml
from .._types import coerce, key_text, type_name
from ..models import (
    BudgetError,
    ModelSpec,
    SpecError,
    check_spec,
    collapsed_stage,
    count_macs,
)
from ..train import Config, ConfigError, config_from_dict, config_to_dict, load_config
from ..train.config import check_limit

PER_STAGE = ("model.stage_widths", "model.stage_blocks", "model.stage_strides")
STAGES = "model.stages"
MAX_STAGES = 8

# The builder's and the recipe's knobs, around the default recipe (the airres net and airbench's Muon recipe).
DEFAULT_SPACE: dict[str, Any] = {
    "model.stem_kernel": {"choices": [2, 3]},
    "model.stem_width": {"choices": [24, 32, 48, 64]},
    STAGES: {"choices": [2, 3, 4]},
    "model.stage_widths": {"choices": [32, 64, 96, 128, 192, 256, 384, 512]},
    "model.stage_blocks": {"choices": [1, 2, 3]},
    "model.stage_strides": {"choices": [1, 2]},
    "model.stage_entry": {"choices": ["conv-pool", "block"]},
    "model.block": {"choices": ["single", "basic"]},
    "model.shortcut": {"choices": ["identity", "conv1x1"]},
    "model.head_hidden": {"choices": [[], [256]]},
    "train.epochs": {"low": 6, "high": 20},
    "optim.lr": {"low": 0.1, "high": 0.5, "log": True},
    "optim.momentum": {"low": 0.5, "high": 0.9},
    "train.label_smoothing": {"low": 0.0, "high": 0.3},
    "train.drop_easy": {"low": 0.0, "high": 0.7},
    "train.batch_size": {"choices": [500, 1000, 1500]},
    "train.tta": {"choices": ["none", "flip", "flip-shift4", "flip-shift"]},
}


class SpaceError(ValueError):
    """A search space that cannot be drawn from."""


class Rejected(Exception):
    """A drawn config that is not trained: over a budget, or an invalid net (the reason is the message)."""


@dataclass(frozen=True)
class Param:
    key: str
    fixed: Any = None
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    @property
    def is_fixed(self) -> bool:
        return not self.choices and self.low is None

    def to_value(self) -> Any:
        if self.is_fixed:
            return self.fixed
        if self.choices:
            return {"choices": list(self.choices)}
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out

    def suggest(self, trial: Any, name: str) -> Any:
        if self.is_fixed:
            return self.fixed
        if self.choices:
            # optuna stores plain scalars only: a list choice (a dense head) is drawn as its JSON text
            encoded = [json.dumps(c) if isinstance(c, list) else c for c in self.choices]
            value = trial.suggest_categorical(name, encoded)
            return json.loads(value) if isinstance(value, str) and value.startswith("[") else value
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(name, self.low, self.high, log=self.log, step=int(self.step or 1))
        return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)


def parse_param(key: str, value: Any) -> Param:
    where = f"search space: {key_text(key)}"
    if not isinstance(value, dict):
        return Param(key, fixed=value)
    unknown = sorted(set(value) - {"choices", "low", "high", "log", "step"})
    if unknown:
        raise SpaceError(f"{where}: unknown field {unknown[0]!r}; a range is {{low, high, log, step}}, a set of "
                         "values {choices = [...]}, anything else a fixed value")
    if "choices" in value:
        if set(value) != {"choices"}:
            raise SpaceError(f"{where}: choices cannot be mixed with low/high/log/step")
        choices = value["choices"]
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{where}: choices must be a non-empty list, got {choices!r}")
        if any(not isinstance(c, (bool, int, float, str, list)) for c in choices):
            raise SpaceError(f"{where}: choices must be numbers, strings, booleans or lists, got {choices!r}")
        if len({json.dumps(c) for c in choices}) != len(choices):
            raise SpaceError(f"{where}: choices repeat a value: {choices!r}")
        return Param(key, choices=tuple(choices))
    low, high = value.get("low"), value.get("high")
    for name, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise SpaceError(f"{where}: a range needs numbers low and high, got {name} = {v!r}")
    if not low < high:
        raise SpaceError(f"{where}: low ({low}) must be below high ({high})")
    log, step = value.get("log", False), value.get("step")
    if not isinstance(log, bool):
        raise SpaceError(f"{where}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise SpaceError(f"{where}: a log range needs low > 0, got {low}")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        raise SpaceError(f"{where}: step must be a positive number, got {step!r}")
    if log and step is not None:
        raise SpaceError(f"{where}: a range is either log or stepped, not both")
    return Param(key, low=low, high=high, log=log, step=step)


@dataclass(frozen=True)
class Space:
    """The base recipe (a complete config, as plain data) and the parameters drawn over it."""

    base: dict[str, Any]
    params: tuple[Param, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        keys = [p.key for p in self.params]
        base = config_from_dict(self.base, stored=True)
        for key in keys:
            if key == STAGES:
                continue
            section, _, name = key.partition(".")
            if section not in ("model", "data", "optim", "schedule", "train") or not name:
                raise SpaceError(f"search space: {key!r} is not a config key (section.key, e.g. optim.lr)")
            if not hasattr(getattr(base, section), name):
                raise SpaceError(f"search space: unknown config key {key!r}")
        stages = self.param(STAGES)
        for p in self.params:
            _check_types(p, base, per_stage=stages is not None)
        if stages is not None:
            fixed = [p.key for p in self.params if p.key in PER_STAGE and p.is_fixed]
            drawn = [k for k in PER_STAGE if k not in keys]
            if not stages.is_fixed and fixed:
                raise SpaceError(f"search space: {fixed[0]} is fixed to one list while model.stages is drawn; give it "
                                 "choices or a range (drawn per stage) or fix model.stages too")
            if drawn:
                raise SpaceError(f"search space: model.stages is set but {drawn[0]} is not: give every per-stage key "
                                 "(stage_widths, stage_blocks, stage_strides) a range, choices or a fixed list")

    def param(self, key: str) -> Param | None:
        return next((p for p in self.params if p.key == key), None)

    def to_dict(self) -> dict[str, Any]:
        return {"base": self.base, "params": {p.key: p.to_value() for p in self.params}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Space:
        return cls(base=data["base"], params=tuple(parse_param(k, v) for k, v in data["params"].items()))

    def suggest(self, trial: Any) -> dict[str, Any]:
        """The config keys a trial sets: drawn through ``trial`` (an optuna trial), fixed ones as given."""
        values: dict[str, Any] = {}
        stages = self.param(STAGES)
        n = stages.suggest(trial, STAGES) if stages is not None else None
        for p in self.params:
            if p.key == STAGES:
                continue
            if p.key in PER_STAGE and n is not None and not p.is_fixed:
                values[p.key] = [p.suggest(trial, f"{p.key}.{i}") for i in range(n)]
            else:
                values[p.key] = p.suggest(trial, p.key)
        return values

    def base_params(self) -> dict[str, Any] | None:
        """The base recipe's values of the drawn parameters, if the space holds them (a search tries them first;
        fixed parameters keep their fixed values)."""
        base = config_from_dict(self.base, stored=True)
        out: dict[str, Any] = {}

        def value_of(key: str) -> Any:
            section, _, name = key.partition(".")
            v = getattr(getattr(base, section), name)
            return list(v) if isinstance(v, tuple) else v

        n = len(base.model.stage_widths)
        stages = self.param(STAGES)
        if stages is not None and not stages.is_fixed:
            out[STAGES] = n
        elif stages is not None and stages.fixed != n:
            return None
        for p in self.params:
            if p.key == STAGES or p.is_fixed:
                continue
            if p.key in PER_STAGE and stages is not None:
                for i, v in enumerate(value_of(p.key)):
                    out[f"{p.key}.{i}"] = v
            else:
                out[p.key] = value_of(p.key)
        for name, v in out.items():
            p = self.param(name.rsplit(".", 1)[0] if name.count(".") == 2 else name)
            if not _holds(p, v):
                return None
        return {k: json.dumps(v) if isinstance(v, list) else v for k, v in out.items()}


def _check_types(p: Param, base: Config, per_stage: bool) -> None:
    """Every value ``p`` can give (fixed, each choice, both ends of a range) checked against its config key's type
    and range (:data:`LIMITS`), so that a space that could only draw invalid configs fails when it loads, before any
    data is read."""
    where = f"search space: {key_text(p.key)}"
    if p.key == STAGES:
        hint: Any = int
    else:
        section, _, name = p.key.partition(".")
        hint = typing.get_type_hints(type(getattr(base, section)))[name]
        if p.key in PER_STAGE and per_stage and not p.is_fixed:  # drawn once per stage: each value is one stage's
            hint = typing.get_args(hint)[0]
    if p.is_fixed:
        values = [p.fixed]
    elif p.choices:
        values = list(p.choices)
    else:
        if hint not in (int, float):
            raise SpaceError(f"{where}: a range needs a number key, this one is a {type_name(hint)}")
        if hint is int and not (isinstance(p.low, int) and isinstance(p.high, int)):
            raise SpaceError(f"{where} takes whole numbers: give the range integer ends, got {p.low!r} to {p.high!r}")
        values = [p.low, p.high]
    for v in values:
        coerce(v, hint, where, SpaceError)
        if p.key == STAGES and not 1 <= v <= MAX_STAGES:
            raise SpaceError(f"{where} must be between 1 and {MAX_STAGES}, got {v}")
        check_limit(p.key, v, SpaceError, "search space: ")


def _holds(p: Param, v: Any) -> bool:
    if p.choices:
        return any(json.dumps(c) == json.dumps(v) for c in p.choices)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    if isinstance(p.low, int) and isinstance(p.high, int) and not isinstance(v, int):
        return False
    return p.low <= v <= p.high


def load_space(path: str | os.PathLike | None = None) -> Space:
    """The default space over the default recipe, with a space file's ``base`` and ``[params]`` laid over it."""
    data = read_toml(path, SpaceError) if path is not None else {}
    unknown = sorted(set(data) - {"base", "params"})
    if unknown:
        raise SpaceError(f"{path}: unknown key {unknown[0]!r}; a space file holds base and [params]")
    base = data.get("base", "default")
    if not isinstance(base, str):
        raise SpaceError(f"{path}: base must be a base name or a config .toml file, got {base!r}")
    params = data.get("params", {})
    if not isinstance(params, dict):
        raise SpaceError(f"{path}: [params] must be a table of config keys")
    try:
        if base.endswith(".toml") and path is not None and not Path(base).is_absolute():
            base = str(Path(path).parent / base)
        config = load_config({"base": base} if not base.endswith(".toml") else base)
    except (ConfigError, SpecError, ValueError) as e:
        raise SpaceError(f"{path}: base: {e}") from None
    merged = {**DEFAULT_SPACE, **params}
    return Space(base=config_to_dict(config), params=tuple(parse_param(k, v) for k, v in merged.items()))


def trial_config(space: Space, values: dict[str, Any], *, val_size: int, seed: int, budget: int) -> Config:
    """The complete config of a trial: the base with the drawn values, a validation split and the search's seed."""
    data = copy.deepcopy(space.base)
    for key, value in values.items():
        section, _, name = key.partition(".")
        data[section][name] = value
    data["data"]["val_size"] = val_size
    data["train"]["seed"] = seed
    data["train"]["budget"] = budget
    try:
        return config_from_dict(data, stored=True)
    except (ConfigError, SpecError) as e:
        raise Rejected(f"not a valid recipe: {e}") from None


def check_trial(config: Config, macs_budget: int | None) -> tuple[int, int]:
    """(parameters, MACs) of the trial's net, from its spec alone; :class:`Rejected` if over a budget or if its maps
    collapse to 1x1 before the last stage."""
    spec = config.model
    try:
        params = check_spec(spec, config.train.budget)
    except BudgetError as e:
        raise Rejected(e.reason) from None
    stage = collapsed_stage(spec)
    if stage is not None:
        raise Rejected(f"the feature map collapses to 1x1 at stage {stage} of {len(spec.stage_widths)}")
    macs = count_macs(spec)
    if macs_budget is not None and macs > macs_budget:
        raise Rejected(f"the model has {macs:,} MACs per image, over the MACs budget of {macs_budget:,}")
    return params, macs


def fill_budget(spec: ModelSpec, budget: int, macs_budget: int | None = None, multiple: int = 8) -> ModelSpec:
    """``spec`` with its stage widths and dense head scaled up by one common factor, as far as the parameter (and
    MACs) budget allows; each width rounded down to a multiple of ``multiple``. The spec itself if it is already at
    the budget."""
    def scaled(factor: float) -> ModelSpec:
        def w(v: int) -> int:  # never below the drawn width
            return max(v, int(v * factor) // multiple * multiple)
        return dataclasses.replace(spec, stage_widths=tuple(w(v) for v in spec.stage_widths),
                                   head_hidden=tuple(w(v) for v in spec.head_hidden))

    def fits(s: ModelSpec) -> bool:
        try:
            check_spec(s, budget)
        except BudgetError:
            return False
        return macs_budget is None or count_macs(s) <= macs_budget

    if not fits(scaled(1.0)):
        return spec
    low, high = 1.0, 2.0
    while fits(scaled(high)) and high < 64:
        low, high = high, high * 2
    for _ in range(20):
        mid = (low + high) / 2
        low, high = (mid, high) if fits(scaled(mid)) else (low, mid)
    best = scaled(low)
    return best if fits(best) else spec
