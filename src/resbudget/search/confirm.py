"""The one step of a search that reads the test set: retrain its best trials on every training image, over several
seeds, and report final-epoch test accuracy as mean ± std."""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from pathlib import Path
from typing import Any, TextIO

import optuna
from optuna.trial import TrialState

from .._io import write_text
from ..data import Dataset, load_dataset
from ..train import Config, config_from_dict, train_run
from .engine import SearchError


def confirm_configs(study: optuna.Study, top: int, with_base: bool = False) -> list[tuple[str, Config]]:
    """(label, config on every training image) of the ``top`` best finished trials, best first, each with the
    temperature its trial fitted on its validation split; ``with_base`` adds the search's base recipe (its first
    trial's config where it ran, else the stored base)."""
    if top < 1:
        raise SearchError(f"--top must be >= 1, got {top}")
    done = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: -t.value)
    if not done:
        raise SearchError(f"search {study.study_name!r} has no finished trial to confirm yet")
    picked = [(f"trial-{t.number:04d}", t.user_attrs["config"], t.user_attrs.get("temperature")) for t in done[:top]]
    if with_base:
        base = json.loads(study.user_attrs["settings"])["space"]["base"]
        picked.append(("base", base, None))
    out = []
    for label, data, temperature in picked:
        config = config_from_dict(data, stored=True)
        # the temperature the trial fitted on its validation split is that config's (the base keeps its recipe's)
        train = config.train if temperature is None else dataclasses.replace(
            config.train, temperature=temperature, temperature_source=(
                f"search {study.study_name!r}, {label}: fitted on that trial's validation split "
                f"({config.data.val_size:,} images, {config.train.tta} TTA)"))
        out.append((label, dataclasses.replace(config, data=dataclasses.replace(config.data, val_size=0),
                                               train=train)))
    return out


def confirm_search(study: optuna.Study, out_dir: str | os.PathLike, *, top: int = 1, seeds: int = 3,
                   with_base: bool = False, data: Dataset | str | os.PathLike | None = None,
                   stream: TextIO | None = None) -> list[dict[str, Any]]:
    """Train each picked config with seeds 0..seeds-1 into ``out_dir/<label>/seed<N>`` (a finished run is kept, an
    interrupted one resumed) and write ``out_dir/confirm.json``: per-seed and mean ± std test accuracy, with and
    without TTA, and wall time."""
    if seeds < 1:
        raise SearchError(f"--seeds must be >= 1, got {seeds}")
    picked = confirm_configs(study, top, with_base)
    data = load_dataset(data, picked[0][1].model.image_size)
    out_dir, results = Path(out_dir), []
    for label, config in picked:
        runs = []
        for seed in range(seeds):
            run_dir = out_dir / label / f"seed{seed}"
            seeded = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed))
            summary = train_run(seeded, run_dir, data=data, resume=(run_dir / "config.toml").is_file(),
                                progress=False)
            runs.append({"seed": seed, "test_accuracy": summary.test_accuracy,
                         "test_accuracy_tta": summary.test_accuracy_tta, "wall_seconds": summary.wall_seconds,
                         "run_dir": str(run_dir)})
            tta = summary.test_accuracy_tta
            print(f"{label} seed {seed}: test {100 * summary.test_accuracy:.2f}%"
                  + (f" ({100 * tta:.2f}% TTA)" if tta is not None else "")
                  + f"  {summary.wall_seconds:.0f} s", file=stream, flush=True)
        results.append({"label": label, "params": summary.params, "runs": runs, **_stats(runs)})
        print(format_result(results[-1]), file=stream, flush=True)
    write_text(out_dir / "confirm.json", json.dumps(results, indent=2) + "\n")
    return results


def _stats(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def mean_std(key: str) -> tuple[float | None, float | None]:
        values = [100 * r[key] for r in runs if r[key] is not None]
        if len(values) != len(runs):
            return None, None
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    acc, acc_std = mean_std("test_accuracy")
    tta, tta_std = mean_std("test_accuracy_tta")
    walls = [r["wall_seconds"] for r in runs]
    return {"test_mean": acc, "test_std": acc_std, "tta_mean": tta, "tta_std": tta_std,
            "wall_mean": statistics.mean(walls), "wall_max": max(walls)}


def format_result(r: dict[str, Any]) -> str:
    tta = f", {r['tta_mean']:.2f} ± {r['tta_std']:.2f}% with TTA" if r["tta_mean"] is not None else ""
    return (f"{r['label']} ({r['params']:,} params): test {r['test_mean']:.2f} ± {r['test_std']:.2f}%{tta} over "
            f"{len(r['runs'])} seed(s); wall {r['wall_mean']:.0f} s mean, {r['wall_max']:.0f} s max")
