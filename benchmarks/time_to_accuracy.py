"""Time to accuracy: each recipe over several seeds, and the study's best recipe given the same wall-clock budget.

Usage: python benchmarks/time_to_accuracy.py [RECIPE ...] --data-dir ../shared/cifar10 [--seeds 3]
       [--baseline configs/shallow-plateau.toml] [--baseline-seeds N] [--no-baseline] [--out runs/bench]
RECIPE: a preset name or config file (default: the default recipe of `resbudget train`).

Per recipe it prints params, MACs, epochs, wall time per run (data loading, training, evaluation and TTA included),
training images/s, achieved GFLOP/s (3 x 2 x MACs per training image: forward + backward) against this machine's
measured bf16 matmul peak, and final-epoch test accuracy (with and without TTA) as mean ± std over the seeds.
The baseline recipe is rescaled (scale_epochs) so one run takes about the first recipe's mean wall time, using a
throughput probe of its model; the ratio of the two accuracies at equal time is the headline.
Finished runs in --out are reused, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch
from throughput import train_images_per_s  # benchmarks/: on sys.path when run as a script

from resbudget.data import load_cifar10
from resbudget.train import load_config, scale_epochs, train_run


def matmul_peak_gflops(n: int = 2048, reps: int = 10) -> float:
    """bf16 matmul throughput of this machine: the ceiling conv training could approach."""
    a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def run_recipe(name: str, config, seeds: int, out: Path, data_dir: str, peak: float) -> dict:  # noqa: ANN001
    """Each run loads the data itself (as `resbudget train` does), so its wall time includes loading."""
    runs = []
    for seed in range(seeds):
        cfg = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed))
        run_dir = out / name / f"seed{seed}"
        done = run_dir / "summary.json"
        if done.is_file():
            runs.append(json.loads(done.read_text(encoding="utf-8")))
        else:
            runs.append(train_run(cfg, run_dir, data=data_dir, progress=False,
                                  resume=(run_dir / "config.toml").is_file()).to_dict())
        r = runs[-1]
        print(f"  {name} seed {seed}: {100 * r['test_accuracy']:.2f}%"
              + (f" ({100 * r['test_accuracy_tta']:.2f}% TTA)" if r.get("test_accuracy_tta") is not None else "")
              + f", {r['wall_seconds']:.0f} s", flush=True)

    def stats(key: str) -> list[float] | None:
        values = [100 * r[key] for r in runs if r.get(key) is not None]
        if not values:
            return None
        return [statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0]

    ips = statistics.mean(r["mean_images_per_s"] for r in runs)
    gflops = 6 * runs[0]["macs"] * ips / 1e9
    return {"recipe": name, "params": runs[0]["params"], "macs": runs[0]["macs"], "epochs": runs[0]["epochs"],
            "seeds": seeds, "accuracy": [round(100 * r["test_accuracy"], 2) for r in runs],
            "accuracy_tta": [round(100 * r["test_accuracy_tta"], 2) for r in runs if r.get("test_accuracy_tta")],
            "mean_std": stats("test_accuracy"), "mean_std_tta": stats("test_accuracy_tta"),
            "wall_seconds": [r["wall_seconds"] for r in runs], "images_per_s": round(ips),
            "gflops": round(gflops, 1), "peak_fraction": round(gflops / peak, 3)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("recipes", nargs="*", metavar="RECIPE")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--baseline", default="configs/shallow-plateau.toml")
    p.add_argument("--baseline-seeds", type=int, default=None, help="seeds of the baseline (default: --seeds)")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    a = p.parse_args()
    names = a.recipes or ["default"]
    peak = matmul_peak_gflops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 matmul peak {peak:.0f} GFLOP/s",
          flush=True)
    data = load_cifar10(a.data_dir)
    results = []
    for name in names:
        config = load_config(None if name == "default" else name)
        results.append(run_recipe(Path(name).stem, config, a.seeds, a.out, a.data_dir, peak))
    if not a.no_baseline:
        base = load_config(a.baseline)
        budget = statistics.mean(results[0]["wall_seconds"])
        n_train = len(data.train) - base.data.val_size
        ips = train_images_per_s(base.model, base.train.batch_size, precision=base.train.precision)
        # ~10% of the budget goes to loading and evaluation; rounded to the nearest whole epoch, so the baseline's time
        # is the closest a whole number of epochs gets to the budget (int() would cut nearly an epoch at short budgets)
        epochs = max(1, round(budget * 0.9 * ips / n_train))
        print(f"baseline probe: {ips:.0f} training images/s, {budget * 0.9 * ips / n_train:.2f} epochs fit", flush=True)
        name = f"{Path(a.baseline).stem}-same-time-e{epochs}"
        print(f"baseline {a.baseline} at {epochs} epochs (~{budget:.0f} s, the first recipe's mean wall time)")
        results.append(run_recipe(name, scale_epochs(base, epochs), a.baseline_seeds or a.seeds, a.out, a.data_dir,
                                  peak))
    (a.out / "bench.json").write_text(json.dumps({"peak_gflops": round(peak), "results": results}, indent=2) + "\n")
    print(f"\n| recipe | params | MACs | epochs | wall s (mean) | img/s | GFLOP/s (of {peak:.0f}) | test % | TTA % |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        fmt = lambda ms: f"{ms[0]:.2f} ± {ms[1]:.2f}" if ms else "-"  # noqa: E731
        print(f"| {r['recipe']} | {r['params']:,} | {r['macs'] / 1e6:.0f}M | {r['epochs']} | "
              f"{statistics.mean(r['wall_seconds']):.0f} | {r['images_per_s']} | {r['gflops']:.0f} "
              f"({100 * r['peak_fraction']:.0f}%) | {fmt(r['mean_std'])} | {fmt(r['mean_std_tta'])} |")


if __name__ == "__main__":
    main()
