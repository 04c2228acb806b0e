"""What an EMA of the weights adds, at several decays, to one training run: a paired comparison.

Usage: python benchmarks/ema_decays.py RECIPE --decays 0.95 0.98 0.99 --data-dir ../shared/cifar10 --out DIR
       [--set KEY=VALUE ...]
The run is ``resbudget train RECIPE --set train.ema=D0`` (D0: the first decay) into DIR, with one more average kept
beside it for each other decay. An average never changes the training steps (it draws no random numbers and only reads
the weights), so every decay, and the trained weights themselves, are scored on the very same run: the differences
are the averages' alone, not the seeds'. Each is scored on the test set with the recipe's TTA; ``ema.json`` in DIR
holds the table. Choosing a decay from this table is a choice made on test accuracy: say so where it is used.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path

import torch

from resbudget.data import load_cifar10
from resbudget.train import evaluate, load_config, select_device, train_run
from resbudget.train.average import WeightAverage
from resbudget.train.setup import prepare_splits

TRACKS: dict[str, WeightAverage] = {}
RAW: list[torch.Tensor] = []
NET: list[torch.nn.Module] = []


def averages_for(extra: list[float]) -> type[WeightAverage]:
    class Averages(WeightAverage):
        """The run's own average (``train.ema``) and one more per extra decay, updated after the same steps."""

        def __init__(self, model: torch.nn.Module, decay: float) -> None:
            super().__init__(model, decay)
            self.others = [WeightAverage(model, d) for d in extra]
            NET[:] = [model]
            TRACKS.update({f"ema {decay}": self, **{f"ema {d}": a for d, a in zip(extra, self.others)}})

        def update(self) -> None:
            super().update()
            for a in self.others:
                a.update()

        def copy_to_model(self) -> None:  # the end of training: keep the trained weights before they are replaced
            RAW[:] = [t.clone() for t in self._live + self._counters]
            super().copy_to_model()

    return Averages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("recipe")
    ap.add_argument("--decays", type=float, nargs="+", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if any(not 0 < d < 1 for d in args.decays) or len(set(args.decays)) != len(args.decays):
        raise SystemExit(f"--decays must be distinct numbers in (0, 1), got {args.decays}")
    config = load_config(None if args.recipe == "default" else args.recipe, [*args.set, f"train.ema={args.decays[0]}"])
    data = load_cifar10(args.data_dir)
    # the module, not the function of the same name that resbudget.train exports
    importlib.import_module("resbudget.train.fit").WeightAverage = averages_for(args.decays[1:])
    summary = train_run(config, args.out, data=data)
    first = TRACKS[f"ema {args.decays[0]}"]
    live = first._live + first._counters
    t, rows = config.train, {}
    test = prepare_splits(config, data, select_device(t.device))[2]  # the run's own test split (its test_limit)
    for name, tensors in (("trained weights", RAW), *((n, a.tensors + a.counters) for n, a in TRACKS.items())):
        with torch.no_grad():
            for target, kept in zip(live, tensors):
                target.copy_(kept)
        start = time.perf_counter()
        r = evaluate(NET[0], test, tta=t.tta, batch_size=t.eval_batch_size, precision=t.precision,
                     channels_last=t.channels_last)
        rows[name] = {"test_accuracy": r["accuracy"], "test_accuracy_tta": r["accuracy_tta"],
                      "test_loss": r["loss"], "eval_seconds": round(time.perf_counter() - start, 1)}
        print(f"{name:16s} {100 * r['accuracy']:.2f}%  {100 * r['accuracy_tta']:.2f}% with {t.tta} TTA", flush=True)
    out = {"recipe": args.recipe, "overrides": args.set, "seed": t.seed, "epochs": t.epochs,
           "wall_seconds": summary.wall_seconds, "tracks": rows}
    (args.out / "ema.json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
