"""Run a set of experiment configs (a "study"), each over several seeds, resumably, optionally at a reduced budget."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from .._defaults import HEARTBEAT_SECONDS
from .._io import write_text
from ..data import CIFAR10, load_cifar10
from ..train import Config, ConfigError, DivergedError, load_config, scale_epochs, train_run

# A source checkout keeps its studies in <repo>/experiments/<name>/; the current folder's experiments/ comes first.
_REPO_EXPERIMENTS = Path(__file__).resolve().parents[3] / "experiments"


class StudyError(ValueError):
    pass


def find_study(study: str | os.PathLike) -> Path:
    """A folder of experiment TOML files, given by path or by name (``paper``)."""
    path = Path(study)
    candidates = [path, Path("experiments") / path, _REPO_EXPERIMENTS / path]
    for c in candidates:
        if c.is_dir() and any(c.glob("*.toml")):
            return c
    looked = ", ".join(str(c) for c in candidates)
    raise StudyError(f"no study {str(study)!r}: no folder of experiment .toml files at {looked}")


def load_study(study: str | os.PathLike, only: list[str] | tuple[str, ...] = ()) -> list[tuple[str, Config]]:
    """(name, config) per experiment file, sorted by name; ``only`` keeps the named ones (unknown names are errors)."""
    folder = find_study(study)
    experiments = []
    for path in sorted(folder.glob("*.toml")):
        try:
            config = load_config(path)
        except (ConfigError, ValueError) as e:
            raise StudyError(f"{path}: {e}") from None
        experiments.append((config.experiment.name or path.stem, config))
    names = [n for n, _ in experiments]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise StudyError(f"unknown experiment {unknown[0]!r} in {folder}; available: {', '.join(names)}")
    return [(n, c) for n, c in experiments if not only or n in only]


def study_configs(study: str | os.PathLike, *, only: list[str] | tuple[str, ...] = (), epochs: int | None = None,
                  seeds: int = 1) -> list[tuple[str, int, Config]]:
    """Every (experiment, seed, resolved config) of the study, at ``epochs`` if given."""
    if seeds < 1:
        raise StudyError(f"seeds must be >= 1, got {seeds}")
    runs = []
    for name, config in load_study(study, only):
        if epochs is not None:
            config = scale_epochs(config, epochs)
        for seed in range(seeds):
            runs.append((name, seed, dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed))))
    return runs


def run_study(study: str | os.PathLike, out_dir: str | os.PathLike, *, only: list[str] | tuple[str, ...] = (),
              epochs: int | None = None, seeds: int = 1, data_dir: str | os.PathLike | None = None,
              data: CIFAR10 | None = None, storage: str | None = None, heartbeat: float = HEARTBEAT_SECONDS,
              progress: bool = True, stream: TextIO | None = None) -> list[dict[str, Any]]:
    """Train every run into ``out_dir/<experiment>/seed<N>``. A finished run is skipped, an interrupted one resumed;
    a folder holding a run of another config is an error (choose another --out).

    ``storage`` (an SQLAlchemy URL): the runs are shared by every process started with the same study, options and
    storage, on this machine or others (resbudget.search.queue); each writes the runs it does to its own ``out_dir``,
    and ``study.json`` lists every finished run of all of them."""
    runs = study_configs(study, only=only, epochs=epochs, seeds=seeds)
    out_dir = Path(out_dir)
    if storage is not None:
        return _run_shared(study, runs, out_dir, storage, heartbeat, data_dir, data, progress, stream)
    summaries = []
    for i, (name, seed, config) in enumerate(runs, 1):
        run_dir = out_dir / name / f"seed{seed}"
        if progress:
            print(f"[{i}/{len(runs)}] {name} seed {seed} -> {run_dir}", file=stream, flush=True)
        if data is None:  # loaded and verified once for the whole study
            data = load_cifar10(data_dir)
        summary = _train(config, run_dir, data, progress, stream)
        summaries.append({"experiment": name, "seed": seed, "run_dir": str(run_dir), **summary})
    return _write_study_json(out_dir, summaries)


def _train(config: Config, run_dir: Path, data: CIFAR10, progress: bool, stream: TextIO | None) -> dict[str, Any]:
    """One run of the study, started, resumed (a finished one returns at once) or found diverged: a diverged run is
    a result (its summary says where), said in one line, and the study goes on."""
    started = (run_dir / "config.toml").is_file()
    try:
        return train_run(config, run_dir, resume=started, data=data, progress=progress, stream=stream)
    except DivergedError as e:
        print(f"warning: {run_dir}: {e}", file=stream or sys.stderr, flush=True)
        return e.summary


def _write_study_json(out_dir: Path, summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "study.json", json.dumps(
        [{k: v for k, v in s.items() if k != "config"} for s in summaries], indent=2) + "\n")
    return summaries


def _run_shared(study: str | os.PathLike, runs: list[tuple[str, int, Config]], out_dir: Path, storage: str,
                heartbeat: float, data_dir: str | os.PathLike | None, data: CIFAR10 | None, progress: bool,
                stream: TextIO | None) -> list[dict[str, Any]]:
    from ..search.queue import run_queue  # optuna: only for a shared study

    by_job = {(name, seed): config for name, seed, config in runs}
    epochs = {config.train.epochs for _, _, config in runs}
    queue = f"study-{Path(study).name}-e{'-'.join(map(str, sorted(epochs)))}"
    loaded: list[CIFAR10] = [data] if data is not None else []

    def work(job: dict[str, Any]) -> dict[str, Any]:
        name, seed = job["experiment"], job["seed"]
        run_dir = out_dir / name / f"seed{seed}"
        if progress:
            print(f"{name} seed {seed} -> {run_dir}", file=stream, flush=True)
        if not loaded:
            loaded.append(load_cifar10(data_dir))
        summary = _train(by_job[(name, seed)], run_dir, loaded[0], progress, stream)
        return {"experiment": name, "seed": seed, "run_dir": str(run_dir), **summary}

    jobs = [{"experiment": name, "seed": seed} for name, seed, _ in runs]
    results = run_queue(queue, storage, jobs, work, heartbeat=heartbeat,
                        say=lambda text: print(text, file=stream, flush=True))
    return _write_study_json(out_dir, [results[k] for k in (json.dumps(j, sort_keys=True) for j in jobs)
                                       if k in results])
