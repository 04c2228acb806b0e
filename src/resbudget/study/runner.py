"""Run a set of experiment configs (a "study"), each over several seeds, resumably, optionally at a reduced budget."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from .._defaults import SharedStorage
from .._io import write_text
from ..data import Dataset, load_dataset
from ..train import Config, ConfigError, DivergedError, RunSummary, load_config, scale_epochs, train_run

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


@dataclasses.dataclass(frozen=True)
class StudyRun:
    """One finished (or diverged) run of a study: its experiment, seed, folder and summary."""

    experiment: str
    seed: int
    run_dir: str
    summary: RunSummary

    def to_dict(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "seed": self.seed, "run_dir": self.run_dir, **self.summary.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudyRun:
        return cls(data["experiment"], data["seed"], data["run_dir"], RunSummary.from_dict(data))


def run_study(study: str | os.PathLike, out_dir: str | os.PathLike, *, only: list[str] | tuple[str, ...] = (),
              epochs: int | None = None, seeds: int = 1, data: Dataset | str | os.PathLike | None = None,
              storage: SharedStorage | None = None, progress: bool | TextIO = True) -> list[StudyRun]:
    """Train every run into ``out_dir/<experiment>/seed<N>``. A finished run is skipped, an interrupted one resumed;
    a folder holding a run of another config is an error (choose another --out). ``data``: loaded once for the whole
    study (or given loaded); ``progress`` as :func:`train_run`'s, with a line per run.

    ``storage``: the runs are shared by every process started with the same study, options and storage, on this
    machine or others (resbudget.search.queue); each writes the runs it does to its own ``out_dir``, and
    ``study.json`` lists every finished run of all of them."""
    runs = study_configs(study, only=only, epochs=epochs, seeds=seeds)
    out_dir = Path(out_dir)
    loaded: list[Dataset] = []

    def train(name: str, seed: int, config: Config, header: str) -> StudyRun:
        run_dir = out_dir / name / f"seed{seed}"
        if progress is not False:
            print(f"{header}{name} seed {seed} -> {run_dir}", file=_stream(progress), flush=True)
        if not loaded:  # loaded and verified once for the whole study, when the first run needs it
            loaded.append(load_dataset(data, config.model.image_size))
        return StudyRun(name, seed, str(run_dir), _train(config, run_dir, loaded[0], progress))

    if storage is not None:
        return _run_shared(study, runs, out_dir, storage, train, progress)
    return _write_study_json(out_dir, [train(name, seed, config, f"[{i}/{len(runs)}] ")
                                       for i, (name, seed, config) in enumerate(runs, 1)])


def _stream(progress: bool | TextIO) -> TextIO | None:
    return None if isinstance(progress, bool) else progress


def _train(config: Config, run_dir: Path, data: Dataset, progress: bool | TextIO) -> RunSummary:
    """One run of the study, started, resumed (a finished one returns at once) or found diverged: a diverged run is
    a result (its summary says where), said in one line, and the study goes on."""
    started = (run_dir / "config.toml").is_file()
    try:
        return train_run(config, run_dir, resume=started, data=data, progress=progress)
    except DivergedError as e:
        print(f"warning: {run_dir}: {e}", file=_stream(progress) or sys.stderr, flush=True)
        return e.summary


def _write_study_json(out_dir: Path, runs: list[StudyRun]) -> list[StudyRun]:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "study.json", json.dumps(
        [{k: v for k, v in r.to_dict().items() if k != "config"} for r in runs], indent=2) + "\n")
    return runs


def _run_shared(study: str | os.PathLike, runs: list[tuple[str, int, Config]], out_dir: Path,
                storage: SharedStorage, train: Callable[[str, int, Config, str], StudyRun],
                progress: bool | TextIO) -> list[StudyRun]:
    from ..search.queue import run_queue  # optuna: only for a shared study

    by_job = {(name, seed): config for name, seed, config in runs}
    epochs = {config.train.epochs for _, _, config in runs}
    queue = f"study-{Path(study).name}-e{'-'.join(map(str, sorted(epochs)))}"

    def work(job: dict[str, Any]) -> dict[str, Any]:
        name, seed = job["experiment"], job["seed"]
        return train(name, seed, by_job[(name, seed)], "").to_dict()

    jobs = [{"experiment": name, "seed": seed} for name, seed, _ in runs]
    results = run_queue(queue, storage.url, jobs, work, heartbeat=storage.heartbeat,
                        say=lambda text: print(text, file=_stream(progress), flush=True))
    return _write_study_json(out_dir, [StudyRun.from_dict(results[k]) for k in
                                       (json.dumps(j, sort_keys=True) for j in jobs) if k in results])
