"""A time budget beside the parameter budget: the most accurate measured recipe whose whole run fits in N minutes on
this machine (``resbudget train --minutes N``).

The recipes are the points of ``front.toml``, each with its accuracy over seeds and its run time relative to the
default recipe's on one kind of machine. This machine's speed is measured briefly at the start: a few timed training
steps of the default net at its own batch size give the default's whole run here, and each point's time follows from
its ratio. The most accurate point whose predicted time fits (with a margin) is chosen; where none fits, the cheapest
is cut to the epochs that fit, and its accuracy is then unmeasured (below its point's). Only points that hold under
faint pixel noise as the default does are offered, unless the user says the images will be clean: a recipe trained
for clean images alone can lose most of its accuracy to noise a camera adds. The run itself holds the
limit between steps (:func:`~resbudget.train.run.train_run`'s ``time_limit``), however the prediction erred.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import read_toml
from ..data.load import CIFAR10_TRAIN_IMAGES
from ..models import check_spec
from .config import Config, ConfigError, load_config, parse_override, scale_epochs
from .evaluate import select_device
from .fit import images_kept
from .optim import make_optimizer
from .step import WARMUP_STEPS, TrainStep

FRONT = Path(__file__).resolve().parent / "front.toml"
MARGIN = 0.9  # a point is chosen if its predicted run takes at most this fraction of the time left
TRAIN_IMAGES = CIFAR10_TRAIN_IMAGES  # the front's times were measured on CIFAR-10
EVAL_SHARE = 0.07  # the default's final evaluation (4 TTA views of the test set) against its training steps (CPU)
OVERHEAD_SECONDS = 5.0  # loading the data, whitening, writing the results
ROBUST_NOISE_ACCURACY = 85.0  # a point is offered by default if it keeps this much (%) under Gaussian noise sigma 0.04
PROBE_STEPS = 2  # timed steps of the default net, after the warm-up ones (a CUDA graph's capture among them)
# --set keys that leave the chosen recipe (and its time) as measured
FREE_KEYS = ("train.seed", "train.device")


class TimeBudgetError(ConfigError):
    """A time limit no recipe can keep on this machine; ``record`` (where set) is the plan that found so."""

    def __init__(self, message: str, record: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.record = record


@dataclass(frozen=True)
class Point:
    """One measured recipe of the front (see ``front.toml``)."""

    name: str
    recipe: str
    set: tuple[str, ...]
    accuracy_tta: float
    std: float
    seeds: int
    relative_time: dict[str, float]
    measured: str
    noise_accuracy: float | None = None  # % under Gaussian noise sigma 0.04 (eval --corruptions); None: not measured

    @property
    def robust(self) -> bool:
        """Measured to hold under faint pixel noise (:data:`ROBUST_NOISE_ACCURACY`); an unmeasured point is not."""
        return self.noise_accuracy is not None and self.noise_accuracy >= ROBUST_NOISE_ACCURACY

    def config(self, overrides: tuple[str, ...] = ()) -> Config:
        return load_config(self.recipe, [*self.set, *overrides])


def load_front(path: Path = FRONT) -> list[Point]:
    data = read_toml(path, ConfigError)
    return [Point(p["name"], p["recipe"], tuple(p["set"]), p["accuracy_tta"], p["std"], p["seeds"],
                  dict(p["relative_time"]), p["measured"], p.get("noise_accuracy")) for p in data["point"]]


def effective_epochs(config: Config) -> float:
    """The run's training images in epochs of the full set: every image in the first epoch, then what
    ``train.drop_easy`` keeps."""
    t = config.train
    return 1 + (t.epochs - 1) * images_kept(TRAIN_IMAGES, t.drop_easy) / TRAIN_IMAGES


def default_steps(config: Config) -> int:
    t = config.train
    return TRAIN_IMAGES // t.batch_size + (t.epochs - 1) * (images_kept(TRAIN_IMAGES, t.drop_easy) // t.batch_size)


def probe_step_seconds(device: torch.device, steps: int = PROBE_STEPS, config: Config | None = None) -> float:
    """The seconds one training step of ``config`` (default: the default recipe) takes on ``device``: its net at its
    batch size on random images (speed does not depend on the pixels), timed over ``steps`` steps after the warm-up
    (and, on a GPU, the graph's capture)."""
    from .setup import initial_model

    config = config or Config()
    t = config.train
    model = initial_model(config).to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing, reduction="none")
    # a failed recording is the run's to report (its own step fails the same way): the probe then times eager steps
    step = TrainStep(model, make_optimizer(config, model), criterion, precision=t.precision, say=lambda text: None)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(t.batch_size, 3, 32, 32, generator=g).to(device)
    if t.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (t.batch_size,), generator=g).to(device)
    warm = WARMUP_STEPS + 2 if step.graphed else 1  # the eager warm-up, the recording, one replay

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warm):
        step(x, y)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    sync()
    return (time.perf_counter() - start) / steps


def default_run_seconds(step_seconds: float) -> float:
    """The default recipe's whole run on a machine whose training step takes ``step_seconds``."""
    return default_steps(Config()) * step_seconds * (1 + EVAL_SHARE) + OVERHEAD_SECONDS


def predicted_seconds(point: Point, config: Config, device_kind: str, default_seconds: float) -> float:
    """The whole run of ``config`` (``point``'s recipe, perhaps at other epochs) on this machine: the point's ratio
    to the default here, its training part scaled by the effective epochs."""
    full = point.config()
    measured = point.relative_time[device_kind] * default_seconds
    fixed = OVERHEAD_SECONDS + EVAL_SHARE * (measured - OVERHEAD_SECONDS) / (1 + EVAL_SHARE)
    return fixed + (measured - fixed) * effective_epochs(config) / effective_epochs(full)


@dataclass(frozen=True)
class Machine:
    """What :func:`plan` knows of the machine: its ``device`` (default: the one ``train.device`` names), the default's
    step time there if known (``step_seconds``; else measured by ``probe``, whose time counts too)."""

    device: torch.device | None = None
    step_seconds: float | None = None
    probe: Callable[[torch.device], float] | None = None


def plan(minutes: float, *, machine: Machine = Machine(), budget: int | None = None,
         overrides: tuple[str, ...] = (), elapsed: float = 0.0, train_images: int = TRAIN_IMAGES,
         clean_images: bool = False) -> tuple[Config, dict[str, Any]]:
    """(config, record) for a run that must end within ``minutes`` of its start, ``elapsed`` seconds of which are
    spent (the process's start, the data). ``budget``: only recipes with at most that many parameters. ``overrides``:
    ``--set`` values among :data:`FREE_KEYS`. ``train_images``: the data set's (a run's time grows with them; the
    front was measured on CIFAR-10's). ``clean_images``: also offer the points that do not hold under faint noise
    (:attr:`Point.robust`). The record says what was chosen, why, and what it predicted."""
    if not (minutes > 0 and math.isfinite(minutes)):
        raise TimeBudgetError(f"--minutes must be a positive number, got {minutes}")
    for text in overrides:
        key, _ = parse_override(text)
        if key not in FREE_KEYS:
            raise TimeBudgetError(f"--minutes chooses the recipe for the time: --set may change only "
                                  f"{', '.join(FREE_KEYS)}, not {key}")
    device = machine.device or select_device(load_config(None, overrides).train.device)
    kind = "cuda" if device.type == "cuda" else "cpu"
    within = []  # the points within the parameter budget, before any time is spent on the probe
    fragile = []  # the points left out for not holding under faint noise, for the table
    for point in load_front():
        if kind not in point.relative_time:  # measured on the other kind of machine only
            continue
        if not (point.robust or clean_images):
            fragile.append(point)
            continue
        config = point.config(overrides)
        params = check_spec(config.model, budget or config.train.budget, allow_over_budget=True)
        if budget is None or params <= budget:
            within.append((point, config, params))
    if not within:
        robust = "" if clean_images else " that holds under faint noise"
        raise TimeBudgetError(f"no recipe of the front{robust} has at most {budget:,} parameters" + (
            "" if clean_images else " (--clean-images also offers those that do not)"))
    start = time.perf_counter()
    step_seconds = machine.step_seconds
    if step_seconds is None:
        step_seconds = (machine.probe or probe_step_seconds)(device)
    elapsed += time.perf_counter() - start
    default_seconds = default_run_seconds(step_seconds) * train_images / TRAIN_IMAGES
    left = minutes * 60 - elapsed
    candidates = [(p, c, n, predicted_seconds(p, c, kind, default_seconds)) for p, c, n in within]
    fitting = [c for c in candidates if c[3] <= MARGIN * left]
    record: dict[str, Any] = {
        "minutes": minutes, "device_kind": kind, "probe_step_seconds": round(step_seconds, 4),
        "default_run_seconds": round(default_seconds, 1), "seconds_before_training": round(elapsed, 1),
        "train_images": train_images, "clean_images": clean_images,
        "candidates": [{"name": p.name, "params": n, "accuracy_tta": p.accuracy_tta,
                        "noise_accuracy": p.noise_accuracy, "predicted_seconds": round(s, 1)}
                       for p, _, n, s in candidates],
        "not_offered": [{"name": p.name, "accuracy_tta": p.accuracy_tta, "noise_accuracy": p.noise_accuracy}
                        for p in fragile],
    }
    if fitting:
        point, config, params, seconds = max(fitting, key=lambda c: c[0].accuracy_tta)
        why = (f"the most accurate measured recipe predicted to fit: {seconds:.0f} s of the {left:.0f} s left "
               f"(at most {MARGIN:.0%} of them)")
        expected = f"{point.accuracy_tta:.2f} ± {point.std:.2f}% with TTA over {point.seeds} seeds" + (
            " on CIFAR-10" if train_images != TRAIN_IMAGES else "")
    else:
        point, config, params, seconds = min(candidates, key=lambda c: c[3])
        config, seconds = cut_to_fit(point, config, kind, default_seconds, MARGIN * left)
        if seconds > MARGIN * left:  # not even one epoch of the fastest: refused, with the least limit that holds
            least = math.ceil(10 * (seconds / MARGIN + elapsed) / 60) / 10  # minutes, rounded up to a tenth
            record.update(chosen=None, least_minutes=least)
            raise TimeBudgetError(
                f"--minutes {minutes:g} cannot be kept on this machine: the shortest run, {point.name} cut to 1 epoch, "
                f"is predicted to take {seconds:.0f} s with its evaluation, and {elapsed:.0f} s are spent before it; "
                f"give --minutes {least:g} or more", record)
        epochs = config.train.epochs
        why = (f"no measured recipe fits {left:.0f} s; the fastest, {point.name}, cut from "
               f"{point.config().train.epochs} to {epochs} epoch{'s' if epochs != 1 else ''} ({seconds:.0f} s "
               "predicted)")
        expected = f"not measured: below the {point.accuracy_tta:.2f}% of its {point.config().train.epochs} epochs"
    record.update(chosen=point.name, recipe=point.recipe, set=list(point.set), epochs=config.train.epochs,
                  params=params, predicted_seconds=round(seconds, 1), why=why, expected_accuracy=expected,
                  measured=point.measured)
    return config, record


def format_plan(record: dict[str, Any]) -> str:
    """:func:`plan`'s record as a table a user reads: every candidate's predicted time here, and the choice."""
    left = record["minutes"] * 60 - record["seconds_before_training"]
    width = max(12, *(len(c["name"]) for c in record["candidates"]))
    lines = [f"this machine: a default step in {record['probe_step_seconds']:.3g} s, so the default's run "
             f"~{record['default_run_seconds']:.0f} s; "
             + (f"{left:.0f} s of the {record['minutes']:g} minutes are left for the run" if left > 0 else
                f"nothing of the {record['minutes']:g} minutes is left for the run"),
             f"{'recipe':<{width}} {'params':>10} {'with TTA':>9} {'noise 0.04':>10} {'predicted here':>15}"]
    for c in record["candidates"]:
        mark = "  <- chosen" if c["name"] == record["chosen"] else ""
        lines.append(f"{c['name']:<{width}} {c['params']:>10,} {c['accuracy_tta']:>8.2f}% {_noise(c):>10} "
                     f"{c['predicted_seconds']:>13.0f} s{mark}")
    if record.get("not_offered"):
        names = ", ".join(f"{c['name']} ({c['accuracy_tta']:.2f}%, {_noise(c)} under noise)"
                          for c in record["not_offered"])
        lines.append(f"not offered, below {ROBUST_NOISE_ACCURACY:g}% under noise 0.04 or not measured there "
                     f"(--clean-images offers them): {names}")
    if record["chosen"] is None:
        return "\n".join(lines)
    epochs = f"{record['epochs']} epoch{'s' if record['epochs'] != 1 else ''}"
    lines.append(f"chosen: {record['chosen']}, {epochs}: {record['why']}; expected "
                 f"{record['expected_accuracy']}")
    return "\n".join(lines)


def _noise(candidate: dict[str, Any]) -> str:
    accuracy = candidate.get("noise_accuracy")
    return "unmeasured" if accuracy is None else f"{accuracy:.1f}%"


def cut_to_fit(point: Point, config: Config, kind: str, default_seconds: float,
               seconds: float) -> tuple[Config, float]:
    """``config`` at the most epochs (at least 1) whose predicted run takes at most ``seconds``, its schedule scaled
    to them."""
    for epochs in range(config.train.epochs, 0, -1):
        cut = scale_epochs(config, epochs) if epochs != config.train.epochs else config
        if cut.schedule.name == "warmup" and cut.schedule.warmup_epochs >= epochs:
            continue
        predicted = predicted_seconds(point, cut, kind, default_seconds)
        if predicted <= seconds or epochs == 1:
            return cut, predicted
    return config, predicted_seconds(point, config, kind, default_seconds)
