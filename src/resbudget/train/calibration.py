"""Calibrated probabilities: temperature scaling (Guo et al. 2017) fitted on held-out validation images, never the
test set; negative log-likelihood and the expected calibration error to judge it.

A net's softmax(logits / T) with one temperature T fitted to minimise the validation NLL keeps every prediction (the
argmax does not change) and makes the stated confidence match the observed accuracy. A run fits it when training
ends, or ``resbudget calibrate`` does later (``train/run.py``); it is stored in ``model.safetensors``'s metadata
(``checkpoint.temperature_of``) and used by ``predict``, ``export`` and ``eval``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ECE_BINS = 15
# The temperatures a net may carry: a fitted one is near 1 (0.4-3 in every run measured); outside this range the
# probabilities would be meaningless (all one class, or all 10%), so such a value is refused where it is read.
TEMPERATURE_RANGE = (0.01, 100.0)


def temperature_in_range(temperature: float) -> bool:
    """Whether ``temperature`` is one a net may carry: finite and within :data:`TEMPERATURE_RANGE`."""
    low, high = TEMPERATURE_RANGE
    return math.isfinite(temperature) and low <= temperature <= high


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


def before_and_after(logits: torch.Tensor, labels: torch.Tensor, temperature: float, split: str) -> dict[str, float]:
    """NLL and ECE of the probabilities of ``logits`` on ``split`` ("val", "test") without and with ``temperature``:
    ``{split}_nll``, ``{split}_ece``, ``{split}_nll_calibrated``, ``{split}_ece_calibrated``."""
    before, after = calibration_metrics(logits, labels), calibration_metrics(logits, labels, temperature)
    return {f"{split}_nll": before["nll"], f"{split}_ece": before["ece"], f"{split}_nll_calibrated": after["nll"],
            f"{split}_ece_calibrated": after["ece"]}


COVERAGES = (0.5, 0.8, 0.9)


def reliability(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                bins: int = ECE_BINS) -> list[dict[str, float]]:
    """The reliability diagram's data: for each of ``bins`` equal-width confidence bins that holds images, their
    ``count``, mean ``confidence`` and ``accuracy`` (a calibrated net has the two equal in every bin)."""
    confidence, predicted = (logits.double() / temperature).softmax(-1).max(-1)
    correct = (predicted == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64, device=logits.device)
    out = []
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            out.append({"low": float(low), "high": float(high), "count": int(inside.sum()),
                        "confidence": float(confidence[inside].mean()), "accuracy": float(correct[inside].mean())})
    return out


def accuracy_at_coverage(logits: torch.Tensor, labels: torch.Tensor,
                         coverages: tuple[float, ...] = COVERAGES) -> dict[str, float]:
    """The accuracy on the most confident fraction of the images, for each fraction in ``coverages`` (a temperature
    does not change the order, so none is needed): what a user who acts only on the surest predictions gets."""
    confidence, predicted = logits.double().softmax(-1).max(-1)
    order = confidence.argsort(descending=True, stable=True)
    correct = (predicted == labels)[order].double()
    return {f"{c:g}": float(correct[:max(1, round(c * len(correct)))].mean()) for c in coverages}


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T in :data:`TEMPERATURE_RANGE` that minimises the NLL of softmax(logits / T): a golden-section search on
    log T (the NLL is smooth and unimodal in log T), to 1e-6. Logits that are not finite are refused."""
    if not torch.isfinite(logits).all():
        raise ValueError("the net gives logits that are not finite numbers (NaN or inf): no temperature can be fitted")

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logits.double() / math.exp(log_t), labels))

    low, high = (math.log(t) for t in TEMPERATURE_RANGE)
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
