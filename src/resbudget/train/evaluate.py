"""Evaluation, public to every layer above the loop: device choice, autocast, batched outputs, plain and TTA accuracy,
and the test accuracy of a saved checkpoint."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._io import read_toml
from ..data import CLASSES, Dataset, Split, normalize
from ..data.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from ..models import DEFAULT_BUDGET, ModelSpec, count_params
from .calibration import accuracy_at_coverage, before_and_after, calibration_metrics, reliability
from .checkpoint import input_of, load_model, spec_of, temperature_of
from .config import STUDY_MODE_NOTE, ConfigError, TrainConfig, config_from_dict
from .errors import CheckpointError
from .summary import load_run_data, read_summary, weights_path
from .tta import VIEWS, mode_of_views, tta_view_logits


def eval_options(t: TrainConfig) -> dict[str, Any]:
    """How a run's net is scored, during training and by every command after it: its batch, precision and memory
    layout (keyword arguments of :func:`evaluate`)."""
    return dict(batch_size=t.eval_batch_size, precision=t.precision, channels_last=t.channels_last)


def run_train_config(path: str | os.PathLike) -> TrainConfig:
    """The training config of the run that wrote ``path`` (a run folder, or the model.safetensors in one); a
    checkpoint outside a run folder gets the default recipe's."""
    path = Path(path)
    stored = (path if path.is_dir() else path.parent) / "config.toml"
    if stored.is_file() and (path.is_dir() or path.name == "model.safetensors"):
        return config_from_dict(read_toml(stored, ConfigError), stored=True).train
    return TrainConfig()


def tta_mode(path: str | os.PathLike, views: int | None = None) -> str:
    """The TTA mode a checkpoint is scored with: its run's (:func:`run_train_config`), or the mode of ``views``."""
    return run_train_config(path).tta if views is None else mode_of_views(views)


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but CUDA is not available here; use auto or cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"train.device: {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def batched_outputs(fn: Callable[[torch.Tensor], torch.Tensor], split: Split, *, batch_size: int = 1000,
                    precision: str = "bf16", channels_last: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(fn(normalised images), labels) batch by batch over ``split``, which must be on fn's device."""
    device = split.images.device
    for start in range(0, len(split), batch_size):
        x = normalize(split.images[start:start + batch_size], split.norm)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            out = fn(x)
        yield out.float(), split.labels[start:start + batch_size]


def images_per_pass(batch_size: int, tta: str) -> int:
    """How many images of a split go through the net together when each brings ``VIEWS[tta]`` views, so that one pass
    holds at most ``batch_size`` (at least one image). A pass of several thousand views needs gigabytes of
    activations at once, which the C allocator hands back to the system after each pass (above its trim
    threshold) and faults in again; a pass of the training batch's size reuses the memory training used. In eval
    mode BatchNorm uses its running statistics, so an image's logits do not depend on the others in its pass."""
    return max(1, batch_size // VIEWS[tta])


def view_logits(model: nn.Module, split: Split, *, tta: str = "none", batch_size: int = 1000,
                precision: str = "fp32", channels_last: bool = True) -> torch.Tensor:
    """The fp32 logits of ``model`` (put in eval mode) on each TTA view of all of ``split``: (views, N, classes),
    view 0 the image itself; the mean over views is the TTA prediction. The views of a batch go through the net
    together, as during training's own evaluation, so the numbers are the run's; ``batch_size`` counts the images
    of one pass, views included (:func:`images_per_pass`)."""
    was_training = model.training
    model.eval()
    out = torch.cat([y for y, _ in batched_outputs(lambda x: tta_view_logits(model, x, tta), split,
                                                   batch_size=images_per_pass(batch_size, tta), precision=precision,
                                                   channels_last=channels_last)], dim=1)
    model.train(was_training)
    return out


def evaluate(model: nn.Module, split: Split, *, tta: str = "none", batch_size: int = 1000, precision: str = "bf16",
             channels_last: bool = True) -> dict[str, float]:
    """``loss`` (mean cross-entropy) and ``accuracy`` over ``split`` (on the model's device), and with a ``tta`` mode
    ``accuracy_tta`` from the same pass: the plain numbers are those of view 0, the image itself. ``batch_size``: as
    :func:`view_logits` counts it."""
    was_training = model.training
    model.eval()
    device = split.images.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    correct_tta = torch.zeros((), device=device, dtype=torch.int64)
    fn = model if tta == "none" else (lambda x: tta_view_logits(model, x, tta))
    for logits, y in batched_outputs(fn, split, batch_size=images_per_pass(batch_size, tta), precision=precision,
                                     channels_last=channels_last):
        views = logits if tta != "none" else logits[None]
        loss_sum += F.cross_entropy(views[0], y, reduction="sum")
        correct += (views[0].argmax(1) == y).sum()
        correct_tta += (views.mean(0).argmax(1) == y).sum()
    model.train(was_training)
    n = max(len(split), 1)
    out = {"loss": float(loss_sum) / n, "accuracy": int(correct) / n}
    if tta != "none":
        out["accuracy_tta"] = int(correct_tta) / n
    return out


def class_report(logits: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...] = CLASSES) -> dict[str, Any]:
    """``per_class`` (each class's name, test images and accuracy) and ``confusion`` (rows the true class, columns the
    predicted one: counts) of the predictions ``logits`` give; the matrix sums to the images and its diagonal to the
    correct ones."""
    n = len(classes)
    pred = logits.argmax(1).cpu()
    confusion = torch.bincount(labels.cpu() * n + pred, minlength=n * n).reshape(n, n)
    totals = confusion.sum(1)
    per_class = [{"class": name, "images": int(totals[i]),
                  "accuracy": float(confusion[i, i] / totals[i]) if totals[i] else None}
                 for i, name in enumerate(classes)]
    return {"per_class": per_class, "confusion": confusion.tolist()}


@dataclass(frozen=True)
class CorruptionTest:
    """The corruption table's images (the first ``images`` test images) and the seed of its noise."""

    images: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.images < 1:
            raise ValueError(f"--images must be a positive number of test images, got {self.images}")


MISTAKES = 16  # the most confident mistakes eval lists (and draws)
# an ensemble is scored at the spec's default input size (its members are trained at it)
ENSEMBLE_IMAGE_SIZE = next(f.default for f in dataclasses.fields(ModelSpec) if f.name == "image_size")


def confident_mistakes(logits: torch.Tensor, labels: torch.Tensor, temperature: float, classes: tuple[str, ...],
                       count: int = MISTAKES) -> list[dict[str, Any]]:
    """The ``count`` wrong predictions made with the highest probability (``logits`` divided by ``temperature``, as
    ``predict`` scores): each image's index in the split, its true and predicted class, and that probability."""
    probs = (logits.float() / temperature).softmax(-1).cpu()
    top, predicted = probs.max(-1)
    wrong = (predicted != labels.cpu()).nonzero().squeeze(1)
    order = wrong[torch.argsort(top[wrong], descending=True, stable=True)][:count]
    return [{"index": int(i), "true": classes[int(labels[i])], "predicted": classes[int(predicted[i])],
             "probability": float(top[i])} for i in order]


def checkpoint_data(source: str | os.PathLike, data: Dataset | str | os.PathLike | None = None, *,
                    ensemble: bool = False, allow_unfinished: bool = False) -> Dataset:
    """The data set a run folder, checkpoint or (``ensemble``) ensemble folder is evaluated on, loaded at its net's
    input size: ``data``, else what its run recorded (:func:`load_run_data`)."""
    if ensemble:
        return load_run_data(source, data, ENSEMBLE_IMAGE_SIZE)
    weights = weights_path(source, allow_unfinished)
    return load_run_data(weights, data, spec_of(weights).image_size)


def evaluate_checkpoint(path: str | os.PathLike, *, data: Dataset | str | os.PathLike | None = None,
                        device: str = "auto", precision: str | None = None, model: nn.Module | None = None,
                        budget: int | None = DEFAULT_BUDGET, allow_unfinished: bool = False,
                        corruptions: CorruptionTest | None = None) -> dict[str, Any]:
    """Test loss and accuracy of a run folder or a .safetensors checkpoint on the test set of ``data`` (None: the
    data its run recorded, if it is still there with the same checksums, else $RESBUDGET_DATA_DIR) (``model``:
    already loaded from ``path``, e.g. an ensemble, whose forward gives log-probabilities). A checkpoint over
    ``budget`` parameters is refused (None: any size is read). ``corruptions`` adds the table of
    :func:`evaluate_corruptions` on the first test images. The net is scored as its
    run scored it (:func:`eval_options` of its config: batch, layout, TTA views and, unless ``precision`` is given,
    precision), so a finished run's numbers are reproduced: ``test_accuracy`` and ``test_loss`` of the image alone,
    ``test_accuracy_tta`` over the views. ``calibration`` judges the probabilities ``predict`` gives (the mean logits
    over the views, divided by the temperature): NLL and 15-bin ECE with and without the temperature, the accuracy
    at coverage and the reliability diagram's bins. ``per_class`` and ``confusion`` (:func:`class_report`) are of the
    image alone, as ``test_accuracy`` is; ``mistakes`` (:func:`confident_mistakes`) of the probabilities predict
    gives."""
    is_ensemble_model, image_size = model is not None, ENSEMBLE_IMAGE_SIZE
    if model is None:
        path = weights_path(path, allow_unfinished)
        model, spec = load_model(path, budget=budget or DEFAULT_BUDGET, allow_over_budget=budget is None)
        image_size = spec.image_size
    dev = select_device(device)
    run = run_train_config(path)
    opts = eval_options(run) | ({"precision": precision} if precision is not None else {})
    tta = "none" if is_ensemble_model else run.tta
    model = model.to(dev)
    if opts["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    temperature = 1.0 if is_ensemble_model else temperature_of(path)  # checked before the data loads
    data = load_run_data(path, data, image_size)
    if not is_ensemble_model:  # the net's own class names and input standardisation, as it was trained
        classes, norm = input_of(path)
        if len(classes) != len(data.classes):
            raise CheckpointError(f"{path}: the net tells {len(classes)} classes apart, the data set has "
                                  f"{len(data.classes)}; give the data it was trained on (--data-dir)")
        data = dataclasses.replace(data, classes=classes, train=Split(data.train.images, data.train.labels, norm))
    test = data.test.to(dev)
    # one pass over the test set gives everything: an ensemble's outputs are log-probabilities, whose softmax is
    # its probabilities, so the same metrics hold for it (it has no temperature of its own)
    views = view_logits(model, test, tta=tta, **opts)
    logits = views.mean(0)  # what predict scores
    alone = calibration_metrics(views[0], test.labels)
    tta_accuracy = float((logits.argmax(1) == test.labels).double().mean())
    result = {"checkpoint": str(path), "test_accuracy": alone["accuracy"], "test_loss": alone["nll"],
              "test_accuracy_tta": tta_accuracy if tta != "none" else None, "tta": tta,
              "views": len(views), "params": count_params(model), "images": len(data.test),
              "data_path": data.path,
              "precision": opts["precision"], "device": str(dev), "notes": [],
              "calibration": {"temperature": temperature, "views": len(views),
                              **before_and_after(logits, test.labels, temperature, "test"),
                              "accuracy_at_coverage": accuracy_at_coverage(logits, test.labels),
                              "reliability": reliability(logits, test.labels, temperature)}}
    result |= class_report(views[0], test.labels, data.classes)
    result["mistakes"] = confident_mistakes(logits, test.labels, temperature, data.classes)
    if corruptions is not None:
        test = data.test.subset(slice(0, corruptions.images)).to(dev)
        result["robustness"] = evaluate_corruptions(model, test, seed=corruptions.seed, **opts)
    summary_path = Path(path) / "summary.json" if Path(path).is_dir() else Path(path).parent / "summary.json"
    if summary_path.is_file() and read_summary(summary_path).plateau_watched_test:
        result["notes"].append(STUDY_MODE_NOTE)
    return result


def evaluate_corruptions(model: nn.Module, split: Split, *, names: list[str] | tuple[str, ...] = tuple(CORRUPTIONS),
                         seed: int = 0, batch_size: int = 1000, precision: str = "fp32",
                         channels_last: bool = True) -> dict[str, Any]:
    """Accuracy on ``split`` (on the model's device) clean and under each corruption at severities 1-5
    (``data/corruptions.py``, seeded by ``seed``): ``{"clean", "corruptions": {name: [5 accuracies]}, "mean"}``."""
    opts = dict(batch_size=batch_size, precision=precision, channels_last=channels_last)
    table = {}
    for name in names:
        table[name] = [evaluate(model, Split(corrupt(split.images, name, s, seed), split.labels, split.norm),
                                **opts)["accuracy"] for s in SEVERITIES]
    every = [a for accs in table.values() for a in accs]
    return {"images": len(split), "seed": seed, "clean": evaluate(model, split, **opts)["accuracy"],
            "corruptions": table, "mean": sum(every) / len(every) if every else None}
