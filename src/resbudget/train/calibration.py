"""Calibrated probabilities: temperature scaling (Guo et al. 2017) fitted on held-out validation images, never the
test set; negative log-likelihood and the expected calibration error to judge it.

A net's softmax(logits / T) with one temperature T fitted to minimise the validation NLL keeps every prediction (the
argmax does not change) and makes the stated confidence match the observed accuracy. The temperature is stored in
``model.safetensors``'s metadata (``temperature``) and used by ``predict``, ``export`` and ``eval``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._io import read_toml, write_text
from ..data import CIFAR10, Split, load_cifar10, stratified_split
from .checkpoint import CheckpointError, load_model, read_weights, save_weights
from .config import config_from_dict
from .evaluate import batched_outputs, select_device

ECE_BINS = 15


def model_logits(model: nn.Module, split: Split, batch_size: int = 1000) -> torch.Tensor:
    """fp32 logits of ``model`` (in eval mode) on ``split`` (on the model's device)."""
    was_training = model.training
    model.eval()
    out = torch.cat([y for y, _ in batched_outputs(model, split, batch_size=batch_size, precision="fp32")])
    model.train(was_training)
    return out


def calibration_metrics(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                        bins: int = ECE_BINS) -> dict[str, float]:
    """``nll``: mean negative log-likelihood of softmax(logits / T); ``ece``: the expected calibration error over
    ``bins`` equal-width confidence bins (the gap between mean confidence and accuracy, weighted by bin size)."""
    probs = (logits.double() / temperature).softmax(-1)
    confidence, predicted = probs.max(-1)
    correct = (predicted == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64, device=logits.device)
    ece = torch.zeros((), dtype=torch.float64, device=logits.device)
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            ece += inside.double().mean() * (confidence[inside].mean() - correct[inside].mean()).abs()
    nll = F.nll_loss(probs.clamp_min(1e-300).log(), labels)
    return {"nll": float(nll), "ece": float(ece), "accuracy": float(correct.mean())}


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 that minimises the NLL of softmax(logits / T): a golden-section search on log T in [-5, 5] (the NLL
    is smooth and unimodal in log T), to 1e-6."""
    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logits.double() / math.exp(log_t), labels))

    low, high = -5.0, 5.0
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(a), nll(b)
    while high - low > 1e-6:
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(b)
    return math.exp((low + high) / 2)


def temperature_of(path: str | os.PathLike) -> float:
    """The temperature stored with a checkpoint (1.0 where none was fitted)."""
    path = Path(path)
    _, _, metadata = read_weights(path / "model.safetensors" if path.is_dir() else path)
    try:
        temperature = float(metadata.get("temperature", 1.0))
    except ValueError:
        raise CheckpointError(f"{path}: its temperature {metadata['temperature']!r:.40} is not a number") from None
    if not (math.isfinite(temperature) and temperature > 0):
        raise CheckpointError(f"{path}: its temperature {temperature} is not a positive number")
    return temperature


def fit_and_report(model: nn.Module, val: Split) -> dict[str, Any]:
    """The temperature fitted on ``val`` and the validation NLL / ECE before and after."""
    logits = model_logits(model, val)
    temperature = fit_temperature(logits, val.labels)
    before, after = calibration_metrics(logits, val.labels), calibration_metrics(logits, val.labels, temperature)
    return {"temperature": temperature, "val_images": len(val), "val_nll": before["nll"], "val_ece": before["ece"],
            "val_nll_calibrated": after["nll"], "val_ece_calibrated": after["ece"]}


def calibrate_run(run_dir: str | os.PathLike, *, data_dir: str | os.PathLike | None = None,
                  data: CIFAR10 | None = None, device: str = "auto") -> dict[str, Any]:
    """Fit the temperature of a finished run on its own validation split (``data.val_size`` images carved from the
    training set with ``data.val_seed``, exactly as training carved them) and store it in its ``model.safetensors``
    and ``summary.json``. A run that trained on every training image has no held-out images: refused."""
    run_dir = Path(run_dir)
    config = config_from_dict(read_toml(run_dir / "config.toml", CheckpointError), stored=True)
    if not config.data.val_size:
        raise CheckpointError(f"{run_dir}: this run trained on every training image, so no held-out images are left "
                              "to fit a temperature on (the test set is never used); train with data.val_size=N "
                              "(e.g. 2000) to calibrate")
    model, spec = load_model(run_dir, allow_over_budget=True)
    data = data if data is not None else load_cifar10(data_dir)
    _, val_idx = stratified_split(data.train.labels, config.data.val_size, config.data.val_seed)
    dev = select_device(device)
    result = fit_and_report(model.to(dev), data.train.subset(val_idx).to(dev))
    _, _, metadata = read_weights(run_dir / "model.safetensors")
    extra = {k: v for k, v in metadata.items() if k not in ("format", "spec")}
    save_weights(model, spec, run_dir / "model.safetensors", extra={**extra, "temperature": repr(result["temperature"])})
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        write_text(summary_path, json.dumps({**summary, "calibration": result}, indent=2) + "\n")
    return result
