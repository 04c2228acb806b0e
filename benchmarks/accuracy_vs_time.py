"""Accuracy against time: one recipe trained at several epoch counts (and seeds), its final test accuracy with and
without TTA plotted against the wall time of a run, with the study's numbers and our best marked.

Usage: python benchmarks/accuracy_vs_time.py RECIPE --epochs 2 4 8 16 --data-dir ../shared/cifar10 [--seeds 1]
       [--set KEY=VALUE ...] [--out runs/curve/NAME]
RECIPE: a preset name, a base name (``default``) or a config file. Each point is ``resbudget train RECIPE --set
train.epochs=E`` (the schedule runs its whole course in E epochs), so the wall time is a whole run's: data loading,
training, evaluation and TTA. Writes ``curve.json`` and ``curve.png`` in --out; finished runs there are reused, so an
interrupted sweep continues where it stopped. Run it alone: the times are only as good as the machine is quiet.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from resbudget.data import load_cifar10
from resbudget.report import plot_accuracy_time
from resbudget.train import host_cpu, load_config, train_run

# Reference accuracies drawn across the plot (their time on this machine is not known): the study's reported
# numbers (docs/STUDY.md: its best single net and its 5-net ensemble, both 100 epochs) and our best measured recipe.
MARKS = {"the study's best net (2.78M params, 100 epochs)": 94.55, "the study's 5-net ensemble": 94.47,
         "ours: best, 6-view TTA, 3 seeds on an H200 (10 s)": 95.04}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("recipe")
    ap.add_argument("--epochs", type=int, nargs="+", required=True)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if any(e < 1 for e in args.epochs):
        raise SystemExit(f"--epochs must be positive whole numbers, got {args.epochs}")
    name = Path(args.recipe).stem
    source = None if args.recipe == "default" else args.recipe  # the default recipe: load_config(None)
    out = args.out or Path("runs") / "curve" / name
    data = load_cifar10(args.data_dir)
    points = []
    for epochs in sorted(set(args.epochs)):
        config = load_config(source, [*args.set, f"train.epochs={epochs}"])
        runs = []
        for seed in range(args.seeds):
            run_dir = out / f"e{epochs}" / f"seed{seed}"
            done = run_dir / "summary.json"
            if done.is_file():
                runs.append(json.loads(done.read_text(encoding="utf-8")))
                continue
            cfg = load_config(source, [*args.set, f"train.epochs={epochs}", f"train.seed={seed}"])
            runs.append(train_run(cfg, run_dir, data=data, progress=False).to_dict())
        seconds = statistics.mean(r["wall_seconds"] for r in runs)
        for curve, key in ((f"{name}, no TTA", "test_accuracy"), (f"{name}, {config.train.tta} TTA",
                                                                    "test_accuracy_tta")):
            values = [100 * r[key] for r in runs if r.get(key) is not None]
            if values:
                points.append({"curve": curve, "label": f"{epochs} ep", "epochs": epochs, "seconds": seconds,
                               "accuracy": statistics.mean(values),
                               "std": statistics.stdev(values) if len(values) > 1 else 0.0, "seeds": len(values)})
        print(f"{epochs:>4} epochs  {seconds:7.1f} s  " + "  ".join(
            f"{p['curve']}: {p['accuracy']:.2f}" for p in points if p["epochs"] == epochs), flush=True)
    machine = {"host_cpu": host_cpu(), "device": runs[-1]["device"], "torch": runs[-1]["torch_version"],
               "git_commit": runs[-1]["git_commit"]}
    (out / "curve.json").write_text(json.dumps({"recipe": args.recipe, "set": args.set, "machine": machine,
                                                "points": points, "marks": MARKS}, indent=2) + "\n")
    plot_accuracy_time(points, MARKS, out / "curve.png",
                       title=f"{name}: accuracy against time, {args.seeds} seed(s) a point\n"
                             f"{machine['device']} on {machine['host_cpu']}")
    print(f"-> {out / 'curve.json'}, {out / 'curve.png'}")


if __name__ == "__main__":
    main()
