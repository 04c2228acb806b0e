"""A run's temperature: fitted at the end of the run on its validation split, taken from its recipe, or fitted (or
given) later by ``resbudget calibrate`` and written into the finished run's files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .._io import read_toml
from ..data import Dataset, Split, stratified_split
from ..models import ResNet
from .calibration import TEMPERATURE_RANGE, before_and_after, fit_temperature, temperature_in_range
from .checkpoint import CheckpointError, input_of, model_from_weights, read_weights, save_weights
from .config import TrainConfig, config_from_dict
from .evaluate import eval_options, select_device, view_logits
from .folder import lock_run_folder
from .summary import load_run_data, read_summary, weights_path, write_summary

RECIPE_SOURCE = "the recipe's (train.temperature: fitted on validation splits of runs of this recipe)"


def run_calibration(model: ResNet, t: TrainConfig, val: Split | None, final: dict[str, Any]) -> dict[str, Any] | None:
    """The finished run's temperature: fitted on its own validation split where it has one, else the recipe's
    (``train.temperature``, from where ``train.temperature_source`` says; None where the recipe has none). Where the
    run was scored on the test set, the test NLL and ECE of its probabilities, with and without the temperature, are
    reported beside it (never fitted on)."""
    if val is not None:
        calibration = fit_and_report(model, val, t, final["logits"] if final["split"] == "validation" else None,
                                     final["tta"])
    elif t.temperature:
        calibration = {"temperature": t.temperature, "source": t.temperature_source or RECIPE_SOURCE}
    else:
        return None
    if final["split"] == "test":  # what the temperature is worth on the test set, reported only
        calibration |= before_and_after(final["logits"], final["labels"], calibration["temperature"], "test")
    return calibration


def fit_and_report(model: ResNet, val: Split, t: TrainConfig, logits: torch.Tensor | None = None,
                   tta: str | None = None) -> dict[str, Any]:
    """The temperature fitted on the validation images ``val`` and their NLL / ECE before and after, for the
    probabilities every command gives: the mean logits over the run's TTA views (``tta``, default the recipe's),
    scored as the run scores, or ``logits`` where the run has them already."""
    tta = tta or t.tta
    if logits is None:
        logits = view_logits(model, val, tta=tta, **eval_options(t)).mean(0)
    temperature = fit_temperature(logits, val.labels)
    return {"temperature": temperature, "source": f"validation split ({len(val):,} images, {tta} TTA)",
            "val_images": len(val), **before_and_after(logits, val.labels, temperature, "val")}


def calibrate_run(run_dir: str | os.PathLike, *, data: Dataset | str | os.PathLike | None = None,
                  device: str = "auto", allow_unfinished: bool = False,
                  temperature: float | None = None) -> dict[str, Any]:
    """Fit the temperature of a finished run on its own validation split (``data.val_size`` images carved from the
    training set with ``data.val_seed``, as :func:`prepare_splits` carved them), or store the given ``temperature``
    (e.g. its recipe's, for a run trained before recipes carried one), in its ``model.safetensors`` and
    ``summary.json``. Without ``temperature``, a run that trained on every training image has no held-out images:
    refused, rather than calibrated on the test set. The run folder's lock is held throughout (a run still training
    there, or another command writing, is refused); an unfinished run is refused unless ``allow_unfinished``. Every
    file is read and checked before either is written."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is not a run folder")
    if temperature is not None and not temperature_in_range(temperature):
        raise CheckpointError("--temperature must be between {:g} and {:g}, got {:g}".format(*TEMPERATURE_RANGE,
                                                                                              temperature))
    with lock_run_folder(run_dir):
        weights = weights_path(run_dir, allow_unfinished)
        config = config_from_dict(read_toml(run_dir / "config.toml", CheckpointError), stored=True)
        if temperature is None and not config.data.val_size:
            raise CheckpointError(f"{run_dir}: this run trained on every training image, so no held-out images are "
                                  "left to fit a temperature on (the test set is never used); give its recipe's "
                                  f"temperature with --temperature T (the default recipe's is "
                                  f"{TrainConfig().temperature:g}), or train with data.val_size=N to fit one")
        summary_path = run_dir / "summary.json"
        summary = read_summary(summary_path) if summary_path.exists() else None
        spec, tensors, metadata = read_weights(weights)
        model = model_from_weights(spec, tensors, weights, allow_over_budget=True)
        if temperature is None:
            train = load_run_data(run_dir, data, spec.image_size).train
            _, val_idx = stratified_split(train.labels, config.data.val_size, config.data.val_seed)
            val = Split(train.images[val_idx], train.labels[val_idx], input_of(weights)[1])  # as the net was trained
            dev = select_device(device)
            result = fit_and_report(model.to(dev), val.to(dev), config.train)
        else:
            result = {"temperature": temperature, "source": "given (resbudget calibrate --temperature)"}
        extra = {k: v for k, v in metadata.items() if k not in ("format", "spec")}
        save_weights(model, spec, weights, extra={**extra, "temperature": repr(result["temperature"])})
        if summary is not None:
            write_summary(summary_path, summary.replace(calibration=result))
    return result
