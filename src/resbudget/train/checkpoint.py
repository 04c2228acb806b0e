"""Checkpoints without pickle: weights in safetensors with plain names, training state as safetensors + JSON.

``model.safetensors`` carries the model spec in its metadata, so a checkpoint file alone rebuilds its network.
``state.safetensors`` holds the optimiser, schedule, RNG and epoch for ``--resume``: every tensor of the nested state
under a generated key, and the structure as JSON (with references to those keys) in the file's metadata.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .._io import MAX_BYTES, atomic_path, parse_json, regular_file
from ..data import CIFAR10_NORMALIZATION, CLASSES, Normalization
from ..models import DEFAULT_BUDGET, ModelSpec, ResNet, SpecError, build_model, check_spec
from .calibration import TEMPERATURE_RANGE, temperature_in_range
from .errors import CheckpointError
from .summary import weights_path

FORMAT = "resbudget-weights-v1"
_PREFIXES = ("_orig_mod.", "module.")


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with DataParallel/compile prefixes removed and tensors contiguous on CPU."""
    out = {}
    for name, tensor in model.state_dict().items():
        for prefix in _PREFIXES:
            while name.startswith(prefix):
                name = name[len(prefix):]
        out[name] = tensor.detach().to("cpu").contiguous()
    return out


def save_weights(model: nn.Module, spec: ModelSpec, path: str | os.PathLike,
                 extra: dict[str, str] | None = None) -> None:
    metadata = {"format": FORMAT, "spec": json.dumps(spec.to_dict()), **(extra or {})}
    _write_safetensors(plain_state_dict(model), path, metadata)


def _write_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """One safetensors file, written atomically; a failed write (a full disk) raises ``CheckpointError`` in one line
    and leaves the file it would replace as it was."""
    try:
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
    except Exception as e:  # safetensors raises its own error type for I/O failures
        reason = " ".join(str(e).split())
        if isinstance(e, OSError) and e.strerror:
            reason = e.strerror
        elif "No space left on device" in reason:
            reason = "No space left on device"
        raise CheckpointError(f"{path}: could not be written ({reason[:200]}); any earlier version of it is "
                              "unchanged") from None


def _read(path: Path, missing: str, unreadable: str,
          tensors: bool = True) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a safetensors file (``tensors=False``: the metadata alone, nothing else is read); a
    missing or malformed one raises ``CheckpointError``."""
    if not path.exists() and not path.is_symlink():
        raise CheckpointError(f"{path}: {missing}")
    regular_file(path, CheckpointError, what="a safetensors file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}, ({k: f.get_tensor(k) for k in f.keys()} if tensors else {})
    except Exception as e:  # safetensors raises its own error types for malformed headers
        raise CheckpointError(f"{path}: {unreadable} ({type(e).__name__}: {e})") from None


def read_weights(path: str | os.PathLike) -> tuple[ModelSpec, dict[str, torch.Tensor], dict[str, str]]:
    """(spec, tensors, metadata) of a weights file, the spec checked for its form (not yet for its size)."""
    path = Path(path)
    metadata, tensors = _read(path, "no such checkpoint file", "not a readable safetensors file")
    return _spec(path, metadata), tensors, metadata


def spec_of(path: str | os.PathLike) -> ModelSpec:
    """The spec of a weights file, from its metadata alone (no tensor is read)."""
    path = Path(path)
    return _spec(path, _read(path, "no such checkpoint file", "not a readable safetensors file", tensors=False)[0])


def _spec(path: Path, metadata: dict[str, str]) -> ModelSpec:
    if metadata.get("format") != FORMAT or "spec" not in metadata:
        raise CheckpointError(f"{path}: not a resbudget checkpoint (no model spec in its metadata)")
    if len(metadata["spec"]) > MAX_BYTES["spec"]:
        raise CheckpointError(f"{path}: the model spec in its metadata is over {MAX_BYTES['spec']:,} characters")
    data = parse_json(metadata["spec"], CheckpointError, f"{path}: the model spec in its metadata")
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: the model spec in its metadata is not a JSON object")
    try:
        return ModelSpec.from_dict(data)
    except SpecError as e:
        raise CheckpointError(f"{path}: the model spec in its metadata is not valid: {e}") from None


def temperature_of(path: str | os.PathLike) -> float:
    """The calibration temperature stored with a checkpoint or run folder (1.0 where none was fitted); only the
    file's metadata is read."""
    path = Path(path)
    path = path / "model.safetensors" if path.is_dir() else path
    metadata, _ = _read(path, "no such checkpoint file", "not a readable safetensors file", tensors=False)
    try:
        temperature = float(metadata.get("temperature", 1.0))
    except ValueError:
        raise CheckpointError(f"{path}: its temperature {metadata['temperature']!r:.40} is not a number") from None
    if not temperature_in_range(temperature):
        raise CheckpointError(f"{path}: its temperature {temperature:g} is outside the range "
                              "{:g} to {:g} a calibrated net can have; the file is damaged, or was not written by "
                              "resbudget".format(*TEMPERATURE_RANGE))
    return temperature


def input_metadata(classes: tuple[str, ...], norm: Normalization) -> dict[str, str]:
    """What a checkpoint records of the data its net was trained on: the class names, and the standardisation its
    inputs need (read back by :func:`input_of`)."""
    return {"classes": json.dumps(list(classes)), "normalization": json.dumps(norm.to_dict())}


def input_of(path: str | os.PathLike) -> tuple[tuple[str, ...], Normalization]:
    """The class names and the input standardisation stored with a checkpoint or run folder (CIFAR-10's where the
    file records none, as every checkpoint did before other data sets were read); only the metadata is read."""
    path = Path(path)
    path = path / "model.safetensors" if path.is_dir() else path
    metadata, _ = _read(path, "no such checkpoint file", "not a readable safetensors file", tensors=False)
    try:
        classes = tuple(json.loads(metadata["classes"])) if "classes" in metadata else CLASSES
        norm = (Normalization.from_dict(json.loads(metadata["normalization"])) if "normalization" in metadata
                else CIFAR10_NORMALIZATION)
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path}: its class names or normalisation cannot be read ({e})") from None
    if not all(isinstance(c, str) for c in classes) or len(classes) < 2:
        raise CheckpointError(f"{path}: its class names are not a list of at least 2 names")
    return classes, norm


def model_from_weights(spec: ModelSpec, tensors: dict[str, torch.Tensor], path: Path, *,
                       budget: int = DEFAULT_BUDGET, allow_over_budget: bool = False) -> ResNet:
    """The net of ``spec`` with ``tensors`` loaded, in eval mode: the spec's size is checked from the spec alone
    (``check_spec``) and every tensor's name and shape against it before anything is allocated."""
    check_spec(spec, budget, allow_over_budget, what=f"the net of {path}")
    with torch.device("meta"):
        meta = build_model(spec).state_dict()
    expected = {k: tuple(v.shape) for k, v in meta.items()}
    expected_dtypes = {k: v.dtype for k, v in meta.items()}
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the spec (missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]})")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise CheckpointError(f"{path}: tensor {name} has shape {list(tensors[name].shape)}, the spec needs "
                                  f"{list(shape)}")
        dtype, wanted = tensors[name].dtype, expected_dtypes[name]
        if dtype.is_floating_point != wanted.is_floating_point or dtype.is_complex or dtype == torch.bool:
            raise CheckpointError(f"{path}: tensor {name} is {str(dtype).removeprefix('torch.')}, the net needs "
                                  f"{str(wanted).removeprefix('torch.')}")
        if dtype.is_floating_point and not torch.isfinite(tensors[name]).all():
            raise CheckpointError(f"{path}: tensor {name} holds NaN or infinite values; the net cannot predict")
    model = build_model(spec)
    model.load_state_dict(tensors)
    return model.eval()


def load_model(path: str | os.PathLike, *, budget: int = DEFAULT_BUDGET, allow_over_budget: bool = False,
               allow_unfinished: bool = False) -> tuple[ResNet, ModelSpec]:
    """A run folder (its model.safetensors; the run finished, see :func:`weights_path`) or a .safetensors file ->
    the model in eval mode, and its spec. The file is untrusted: see :func:`model_from_weights`."""
    path = weights_path(path, allow_unfinished)
    spec, tensors, _ = read_weights(path)
    return model_from_weights(spec, tensors, path, budget=budget, allow_over_budget=allow_over_budget), spec


# --- training state -------------------------------------------------------------------------------------------------
def _flatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().to("cpu").contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        # JSON keys are strings; keep the original key types (optimiser state is keyed by int).
        return {"__dict__": [[_flatten(k, tensors), _flatten(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_flatten(v, tensors) for v in obj], "tuple": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise CheckpointError(f"cannot store {type(obj).__name__} in a training state")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            items = [_unflatten(v, tensors) for v in obj["__list__"]]
            return tuple(items) if obj["tuple"] else items
    return obj


def save_state(state: dict[str, Any], path: str | os.PathLike) -> None:
    """One file, written atomically: the tensors, with the JSON structure in the safetensors metadata."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _flatten(state, tensors)
    _write_safetensors(tensors, path, {"format": "resbudget-state-v1", "structure": json.dumps(structure)})


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    metadata, tensors = _read(path, "no training state to resume from", "unreadable training state")
    structure = parse_json(metadata.get("structure", ""), CheckpointError, f"{path}: the state's structure")
    try:
        return _unflatten(structure, tensors)
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable training state ({type(e).__name__}: {e})") from None
