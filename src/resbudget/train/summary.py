"""A run's summary (``summary.json``) as a typed value: each field is documented once, here, and read by name.

The JSON file stays a plain object with these keys in this order; a key that only some runs have
(``val_accuracy_tta`` and ``test_set_used`` of a run scored on its validation split, ``time_plan`` of a run whose
recipe was chosen for a time limit) is left out where the run has none. A summary written by an older version reads
with the keys it lacks as None.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .._io import read_json, write_text
from ..data import Dataset, load_dataset
from ..version import __version__
from .config import STUDY_MODE_NOTE, Config, config_to_dict
from .errors import CheckpointError
from .provenance import git_state, host_cpu

if TYPE_CHECKING:
    from .fit import TrainingState
    from .setup import Prepared

@dataclass(frozen=True)
class Divergence:
    """Where training stopped being finite: the epoch and step (1-based), and the one-line reason."""

    epoch: int
    step: int
    reason: str


@dataclass(frozen=True)
class RunSummary:
    """What a run reached (the finished net on its held-out split), what it cost, and everything needed to trace it
    (code, machine, data, config). A run that diverged reached nothing: its accuracies are None."""

    resbudget_version: str | None = None
    date: str | None = None  # when the run ended, UTC, ISO 8601
    preset: str | None = None  # the preset the model started from
    params: int | None = None
    macs: int | None = None  # multiply-accumulates per image, forward
    budget: int | None = None  # the parameter budget the run was checked against
    over_budget: bool | None = None
    epochs: int | None = None  # the recipe's epochs (a time limit may have stopped training before the last)
    test_accuracy: float | None = None  # the image alone; None for a run that never saw the test set
    test_loss: float | None = None
    test_accuracy_tta: float | None = None  # the mean logits over the views of ``tta``
    tta: str | None = None  # the recipe's TTA mode, or one of fewer views where a time limit cut it
    val_accuracy: float | None = None  # the last epoch's validation accuracy, where there is a split
    val_accuracy_tta: float | None = None  # a run scored on its validation split (a search trial): with TTA
    test_set_used: bool | None = None  # False for a run that never saw the test set; absent otherwise
    train_accuracy: float | None = None  # the last epoch's, on its augmented images
    diverged: Divergence | None = None  # where training stopped being finite, or None
    calibration: dict[str, Any] | None = None  # the temperature and the metrics before and after it
    wall_seconds: float | None = None  # the whole run, over all its processes
    time_limit: float | None = None  # seconds the whole run was given (train --minutes, search --trial-minutes)
    stopped: str | None = None  # why training ended early (the time limit), or None: it ran every epoch
    train_seconds: float | None = None  # the training steps alone
    # The time as GPU speed records count it (airbench): whitening + training steps + the final evaluation with its
    # TTA, with the data already on the device; build, checkpoints and per-epoch evaluations are left out.
    whiten_seconds: float | None = None
    final_eval_seconds: float | None = None
    mean_images_per_s: float | None = None
    step_graph: bool | None = None  # the training step recorded as a CUDA graph (train/step.py)
    graph_captures: int | None = None
    capture_seconds: float | None = None
    graph_fallback: str | None = None  # why recording failed and the run went on eagerly, if it did
    device: str | None = None
    host_cpu: str | None = None
    torch_version: str | None = None
    seed: int | None = None
    git_commit: str | None = None
    git_dirty: bool | None = None  # uncommitted changes: git_commit alone does not name the code that ran
    data_source: str | None = None  # where the data was read from, in words
    data_path: str | None = None  # the absolute path it was read from: what eval reads when given no data
    data_checksums: dict[str, str] | None = None  # file -> "algorithm:digest", each verified when it was read
    classes: list[str] | None = None  # the data's class names: label i is classes[i]
    normalization: dict[str, list[float]] | None = None  # the per-channel mean and std its images were standardised by
    plateau_watched_test: bool | None = None  # the schedule read test accuracy (the study's way)
    notes: list[str] = dataclasses.field(default_factory=list)  # what limits how far the numbers can be trusted
    warnings: list[str] = dataclasses.field(default_factory=list)  # the net's (models/budget.py)
    config: dict[str, Any] = dataclasses.field(default_factory=dict)  # the complete resolved config
    time_plan: dict[str, Any] | None = None  # how the recipe was chosen for a time limit (train/timed.py)

    @property
    def finished_accuracy(self) -> float | None:
        """The result: the test accuracy, or (a run that never saw the test set) the validation accuracy with TTA,
        else without."""
        if self.test_accuracy is not None:
            return self.test_accuracy
        return self.val_accuracy_tta if self.val_accuracy_tta is not None else self.val_accuracy

    @property
    def temperature(self) -> float | None:
        """The calibration temperature fitted or given for the run, if it has one."""
        return None if self.calibration is None else self.calibration.get("temperature")

    @property
    def validation_only(self) -> bool:
        """Scored on its validation split, never having seen the test set (a search trial)."""
        return self.test_set_used is False

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["diverged"] = dataclasses.asdict(self.diverged) if self.diverged is not None else None
        if self.test_set_used is None:  # scored on the test set: it has no validation result with TTA
            del out["val_accuracy_tta"], out["test_set_used"]
        if self.time_plan is None:
            del out["time_plan"]
        return out

    @staticmethod
    def is_summary(data: Any) -> bool:
        """Whether JSON data is a run's summary (every version wrote these keys)."""
        return isinstance(data, dict) and "config" in data and "test_accuracy" in data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSummary:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        where = values.get("diverged")
        if where is not None:
            where = where if isinstance(where, dict) else {}
            values["diverged"] = Divergence(int(where.get("epoch", 0)), int(where.get("step", 0)),
                                            str(where.get("reason", "the run diverged")))
        return cls(**values)

    def replace(self, **changes: Any) -> RunSummary:
        return dataclasses.replace(self, **changes)


def read_summary(path: str | os.PathLike) -> RunSummary:
    """A run's summary.json, which must be a JSON object."""
    data = read_json(path, CheckpointError)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a resbudget run summary (a JSON object)")
    try:
        return RunSummary.from_dict(data)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a resbudget run summary ({e})") from None


def write_summary(path: str | os.PathLike, summary: RunSummary) -> None:
    write_text(path, json.dumps(summary.to_dict(), indent=2) + "\n")


def recorded_data(source: str | os.PathLike) -> RunSummary | None:
    """The summary of the run that ``source`` (a run folder, or a checkpoint inside one) belongs to, where it records
    a data path that still exists: the data to evaluate it on when none is given."""
    source = Path(source)
    summary = source / "summary.json" if source.is_dir() else source.parent / "summary.json"
    if not summary.is_file():
        return None
    s = read_summary(summary)
    return s if s.data_path and Path(s.data_path).exists() else None


def load_run_data(source: str | os.PathLike, data: Dataset | str | os.PathLike | None, image_size: int) -> Dataset:
    """``data`` loaded at ``image_size``; where it is None, the data the run of ``source`` recorded (if it is still
    there, else $RESBUDGET_DATA_DIR), refused where its checksums are no longer the recorded ones."""
    recorded = recorded_data(source) if data is None else None
    loaded = load_dataset(recorded.data_path if recorded is not None else data, image_size)
    if recorded is not None and recorded.data_checksums and loaded.checksums != recorded.data_checksums:
        raise CheckpointError(f"{recorded.data_path} is no longer the data the run was trained on (its checksums "
                              "differ); give the data to evaluate on with --data-dir")
    return loaded


def weights_path(source: str | os.PathLike, allow_unfinished: bool = False) -> Path:
    """The weights file of a checkpoint, or of a run folder (its model.safetensors). A run folder must be finished
    (its summary.json written, as the run's last act): an unfinished one's weights are those of an epoch before the
    end, used only with ``allow_unfinished``."""
    source = Path(source)
    if not source.is_dir():
        return source
    weights, summary = source / "model.safetensors", source / "summary.json"
    if summary.exists():
        diverged = read_summary(summary).diverged
        if diverged is not None and not allow_unfinished:
            offer = ("; pass --allow-unfinished to use the weights of its last finite epoch" if weights.exists() else
                     ", nor an epoch that ended before it did")
            raise CheckpointError(f"{source}: the run diverged (epoch {diverged.epoch}, step {diverged.step}): there "
                                  f"is no trained net{offer}")
    elif not allow_unfinished:
        how = (f"resume it (resbudget train --resume --out {source})" if (source / "state.safetensors").exists()
               else "it has no training state either")
        raise CheckpointError(f"{source}: the run has not finished (no summary.json); {how}, or pass "
                              "--allow-unfinished to use the weights of its last finished epoch")
    if not weights.exists() and allow_unfinished:
        raise CheckpointError(f"{source}: the run has no weights yet (it ended before its first epoch did)")
    return weights


def run_notes(config: Config) -> list[str]:
    """What every output of the run must say about how far its numbers can be trusted."""
    return [STUDY_MODE_NOTE] if config.watches_test else []


def summarize_run(run: Prepared, state: TrainingState, rows: list[dict[str, Any]], final: dict[str, Any] | None,
                  calibration: dict[str, Any] | None, wall_seconds: float, time_limit: float | None = None,
                  diverged: Divergence | None = None) -> RunSummary:
    """The summary of ``run`` after training: ``final``, the finished net on its held-out split (None where training
    diverged, ``diverged`` saying where), the metrics ``rows`` and the training ``state``."""
    config, last, device = run.config, (rows[-1] if rows else {}), run.train.images.device
    final = final or {"split": run.held_out[1], "loss": None, "accuracy": None, "accuracy_tta": None,
                      "tta": config.train.tta, "seconds": 0.0}
    on_test = final["split"] == "test"
    commit, dirty = git_state()
    return RunSummary(
        resbudget_version=__version__, date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        preset=config.preset, params=run.params, macs=run.model_summary.macs, budget=config.train.budget,
        over_budget=run.params > config.train.budget, epochs=config.train.epochs,
        test_accuracy=final["accuracy"] if on_test else None, test_loss=final["loss"] if on_test else None,
        test_accuracy_tta=final["accuracy_tta"] if on_test else None, tta=final["tta"],
        val_accuracy=last.get("val_acc"),
        val_accuracy_tta=None if on_test else final["accuracy_tta"], test_set_used=None if on_test else False,
        train_accuracy=last.get("train_acc"), diverged=diverged, calibration=calibration,
        wall_seconds=wall_seconds, time_limit=time_limit, stopped=state.stopped,
        train_seconds=round(sum(r.get("train_seconds") or 0.0 for r in rows), 3),
        whiten_seconds=round(run.whiten_seconds, 4), final_eval_seconds=round(final["seconds"], 4),
        mean_images_per_s=sum(r["images_per_s"] for r in rows) / len(rows) if rows else None,
        step_graph=state.step.graphed, graph_captures=state.step.captures,  # fit makes the step, even with no epoch
        capture_seconds=round(state.step.capture_seconds, 4), graph_fallback=state.step.fallback,
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        host_cpu=host_cpu(), torch_version=torch.__version__, seed=config.train.seed,
        git_commit=commit, git_dirty=dirty, data_source=run.data.source, data_path=run.data.path,
        data_checksums=run.data.checksums,
        classes=list(run.data.classes), normalization=run.data.norm.to_dict(),
        plateau_watched_test=config.watches_test, notes=run_notes(config), warnings=run.model_summary.warnings,
        config=config_to_dict(config))
