"""Train K members under one budget and save them as one ensemble folder."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, TextIO

from .._io import write_text
from ..compat import REMOVED_ENSEMBLE_MODES
from ..data import Dataset, load_dataset
from ..models import DEFAULT_BUDGET, ModelSpec, build_model, count_params
from ..train import Config, load_model, train_run
from ..train.setup import fit_to_data
from .evaluate import evaluate_ensemble
from .model import check_ensemble_budget, save_ensemble


def widest_member(spec: ModelSpec, budget: int) -> ModelSpec:
    """The largest uniform width multiple of ``spec`` (stem, stages and dense head scaled together, rounded to
    whole channels) whose parameter count fits ``budget``."""

    def scaled(f: float) -> ModelSpec:
        r = lambda w: max(1, round(w * f))  # noqa: E731
        return dataclasses.replace(spec, stem_width=r(spec.stem_width),
                                   stage_widths=tuple(r(w) for w in spec.stage_widths),
                                   head_hidden=tuple(r(h) for h in spec.head_hidden))

    def fits(f: float) -> bool:
        return count_params(build_model(scaled(f))) <= budget

    if not fits(1e-9):
        raise ValueError(f"no width of this shape fits {budget:,} parameters")
    low, high = 0.0, 1.0
    while fits(high):
        low, high = high, high * 2
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return scaled(low)


def train_ensemble(config: Config, out_dir: str | os.PathLike, *, members: int, budget: int = DEFAULT_BUDGET,
                   seeds: list[int] | None = None, data: Dataset | str | os.PathLike | None = None,
                   progress: bool | TextIO = True) -> dict[str, Any]:
    """Train ``members`` copies of ``config``'s model, each with its own seed (its own initialisation, data order and
    augmentation), one after another into ``out_dir/members/memberN`` (finished members are kept and an interrupted
    one resumed when run again), then save them as one ensemble folder in ``out_dir``."""
    if members < 1:
        raise ValueError(f"--members must be >= 1, got {members}")
    seeds = list(seeds) if seeds else [config.train.seed + i for i in range(members)]
    if len(seeds) != members:
        raise ValueError(f"{members} members need {members} seeds, got {len(seeds)}: {seeds}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must differ, or the members are identical: {seeds}")
    out = Path(out_dir)
    for mode, what in REMOVED_ENSEMBLE_MODES.items():
        if (out / mode).exists():
            raise ValueError(f"{out} holds {what}; choose another --out folder")
    config = fit_to_data(config, data)  # every member's head sized for the data's classes
    specs = [config.model] * members
    counts = check_ensemble_budget(specs, budget)
    data = load_dataset(data, config.model.image_size)
    start = time.perf_counter()
    share = dataclasses.replace(config, train=dataclasses.replace(config.train, budget=budget // members))
    runs = []
    for i, seed in enumerate(seeds):
        run_dir = out / "members" / f"member{i}"
        member_config = dataclasses.replace(share, train=dataclasses.replace(share.train, seed=seed))
        if progress is not False:
            print(f"member {i + 1}/{members} (seed {seed}) -> {run_dir}", file=None if progress is True else progress,
                  flush=True)
        resume = (run_dir / "config.toml").is_file()
        runs.append(train_run(member_config, run_dir, resume=resume, data=data, progress=progress))
    # the budget was checked before training; the members' files are checked again as they load
    models = [load_model(out / "members" / f"member{i}", allow_over_budget=True)[0] for i in range(members)]
    save_ensemble(out, models, specs, extra={"budget": budget, "seeds": seeds, "member_params": counts,
                                             "mode": "sequential"})
    result = evaluate_ensemble(out, data=data, device=config.train.device, budget=budget)
    summary = {**result, "budget": budget, "seeds": seeds, "mode": "sequential",
               "member_wall_seconds": [r.wall_seconds for r in runs],
               "wall_seconds": round(time.perf_counter() - start, 2)}
    write_text(out / "ensemble_summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
