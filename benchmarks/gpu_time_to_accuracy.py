"""Time to accuracy on one GPU: recipes over seeds with the data already on the device, warm, as GPU records are timed.

Usage: python benchmarks/gpu_time_to_accuracy.py [RECIPE ...] --data-dir DIR [--seeds 3] [--out runs/gpu]
       [--deadline SECONDS] [--synthetic N] [--epochs N] [--step graph|eager|both]
RECIPE: a name from benchmarks/gpu_recipes.toml, a named recipe (best), a config file
(benchmarks/recipes/gpu-94.toml), or NAME=OVERRIDE;OVERRIDE;...
(``--set`` overrides of the default recipe).

The data is loaded and moved to the GPU once (timed and printed), and one short warm-up run (2 epochs, not counted)
starts CUDA and tunes cuDNN's kernels, as the published GPU records do. Per run it reports:
- train s: the training steps alone (sum of the epochs' train_seconds, each ending in a device sync);
- run s: the whole ``train_run()`` call: model build, whitening init, steps, per-epoch checkpoints, evaluation and TTA;
- airbench s: the time as the published GPU records count it: whitening init + training steps + the final evaluation
  with its TTA (model build, per-epoch checkpoints and evaluations left out; the data is already on the device);
- images/s of the training steps, and the share of this device's bf16 matmul rate they reach (6 x MACs per trained
  image: forward, and the input and weight gradients; the frozen stem's and first stage's skipped gradients are
  counted too, so the share is an upper bound);
- ms/step: the training steps' time over their number, and, where the step is recorded as a CUDA graph
  (train/step.py), how many times it was and what the recordings took (inside train s);
and final-epoch test accuracy with and without TTA, as mean ± std over seeds.
--deadline stops starting runs that would end after that many seconds from the start (the last run's time of the
same recipe is the estimate), so a fixed lease is spent on the most important recipes first.
--synthetic N trains on N synthetic images (no data needed; 50000 gives CIFAR-10's shapes and steps): it checks the
code paths and the speed, not the accuracy, so a GPU that has not received the dataset yet can already be timed.
--step eager runs the training step eagerly where it would be recorded as a CUDA graph; --step both runs every recipe
both ways, one after the other in this process (rows NAME and NAME+eager): graph against eager on one host.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
import tomllib
from pathlib import Path

import torch

from resbudget.data import DataError, Dataset, load_cifar10, synthetic_cifar10
from resbudget.models import build_model, count_macs, count_params
from resbudget.train import RunFolderError, TrainingError, host_cpu, load_config, select_device, train_run
from resbudget.train import step as step_module
from resbudget.train.config import ConfigError, named_recipes

RECIPES: dict[str, list[str]] = tomllib.loads((Path(__file__).parent / "gpu_recipes.toml").read_text())


def parse_recipe(text: str) -> tuple[str, str | None, list[str]]:
    """(name, config file or named recipe or None for the default recipe, overrides)."""
    if text in RECIPES:
        return text, None, RECIPES[text]
    if text in named_recipes():  # best, no-noise, study: a recipe of the package
        return text, text, []
    if text.endswith(".toml"):
        if not Path(text).is_file():
            raise SystemExit(f"recipe file {text} does not exist")
        return Path(text).stem, text, []
    if "=" in text:
        name, rest = text.split("=", 1)
        return name, None, [o for o in rest.split(";") if o]
    raise SystemExit(f"unknown recipe {text!r}: use one of {', '.join(RECIPES)}, a .toml file or NAME=OVERRIDE;...")


def matmul_peak_tflops(device: torch.device) -> float:
    """bf16 matmul rate of ``device`` (TFLOP/s): the ceiling the training steps could approach."""
    n, reps = (8192, 20) if device.type == "cuda" else (2048, 5)
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def trained_images(run_dir: Path) -> float:
    """Images through the training steps of a run, from its per-epoch rates and times."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return sum(r["images_per_s"] * r["train_seconds"] for r in rows)


@contextlib.contextmanager
def step_mode(mode: str):
    """The training step as ``mode`` says: ``graph`` (recorded where train/step.py records it) or ``eager``."""
    if mode == "graph":
        yield
        return
    recorded = step_module.records
    step_module.records = lambda device, optimizer: False
    try:
        yield
    finally:
        step_module.records = recorded


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("recipes", nargs="*", default=["default"])
    p.add_argument("--data-dir")
    p.add_argument("--synthetic", type=int, default=0, metavar="N", help="N synthetic training images, no data")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, help="override every recipe's epochs (a quick check)")
    p.add_argument("--deadline", type=float, default=0.0)
    p.add_argument("--out", type=Path, default=Path("runs/gpu"))
    p.add_argument("--step", choices=("graph", "eager", "both"), default="graph",
                   help="the training step recorded as a CUDA graph (where it is), eager, or each recipe both ways")
    a = p.parse_args()
    if a.out.exists() and any(a.out.iterdir()):
        raise SystemExit(f"{a.out} already holds results: pass a new --out (timings are not resumed)")
    start = time.perf_counter()
    recipes = [parse_recipe(r) for r in a.recipes]
    device = select_device("auto")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, device {name}, host CPU {host_cpu()}", flush=True)
    peak = matmul_peak_tflops(device)
    print(f"bf16 matmul rate of the device: {peak:.1f} TFLOP/s", flush=True)

    def configure(source: str | None, overrides: list[str], seed: int, epochs: int | None):
        extra = [f"train.seed={seed}", "train.device=" + json.dumps(str(device))]
        if epochs is not None:
            extra.append(f"train.epochs={epochs}")
            if epochs <= 2:
                extra.append("train.stem_bias_epochs=0")
        return load_config(source, overrides + extra)

    for rname, source, overrides in recipes:  # every recipe is checked before any time is spent
        try:
            configure(source, overrides, 0, a.epochs)
        except ConfigError as e:
            raise SystemExit(f"recipe {rname}: {e}") from None
    t0 = time.perf_counter()
    try:
        data = synthetic_cifar10(a.synthetic, max(a.synthetic // 5, 1)) if a.synthetic else load_cifar10(a.data_dir)
    except DataError as e:
        raise SystemExit(str(e)) from None
    data = Dataset(data.train.to(device), data.test.to(device), data.source, data.checksums)
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(f"data: {data.source}, loaded and on the device in {time.perf_counter() - t0:.2f} s", flush=True)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        train_run(configure(*recipes[0][1:], 999, 2), Path(tmp) / "warmup", data=data, progress=False)
    print(f"warm-up run (2 epochs of {recipes[0][0]}, not counted): {time.perf_counter() - t0:.2f} s", flush=True)

    results = []
    modes = ("graph", "eager") if a.step == "both" else (a.step,)
    for (rname, source, overrides), mode in ((r, m) for r in recipes for m in modes):
        if mode == "eager" and a.step == "both":
            rname += "+eager"
        config = configure(source, overrides, 0, a.epochs)
        params, macs = count_params(build_model(config.model)), count_macs(config.model)
        runs, estimate = [], 0.0
        for seed in range(a.seeds):
            if a.deadline and time.perf_counter() - start + estimate > a.deadline:
                print(f"  {rname} seed {seed}: skipped (the deadline of {a.deadline:.0f} s)", flush=True)
                continue
            run_dir = a.out / rname / f"seed{seed}"
            t0 = time.perf_counter()
            with step_mode(mode):
                s = train_run(configure(source, overrides, seed, a.epochs), run_dir, data=data, progress=False)
            run_s = time.perf_counter() - t0
            estimate = run_s
            images = trained_images(run_dir)
            r = {"seed": seed, "test": 100 * s.test_accuracy,
                 "tta": None if s.test_accuracy_tta is None else 100 * s.test_accuracy_tta,
                 "train_s": s.train_seconds, "run_s": round(run_s, 3),
                 "airbench_s": round(s.whiten_seconds + s.train_seconds + s.final_eval_seconds, 3),
                 "images_per_s": images / s.train_seconds,
                 "ms_per_step": 1000 * s.train_seconds / round(images / config.train.batch_size),
                 "peak_share": 6 * macs * images / s.train_seconds / (peak * 1e12),
                 # absent from the summaries of code before the captured step
                 "captures": s.graph_captures or 0, "capture_s": s.capture_seconds or 0.0,
                 "graph_fallback": s.graph_fallback}
            runs.append(r)
            tta = f" ({r['tta']:.2f}% with {config.train.tta} TTA)" if r["tta"] is not None else ""
            graph = f", {r['captures']} graph captures in {r['capture_s']:.3f} s" if r["captures"] else ""
            if r["graph_fallback"]:
                graph += f", recording failed ({r['graph_fallback']}): eager"
            print(f"  {rname} seed {seed}: {r['test']:.2f}%{tta}, airbench {r['airbench_s']:.2f} s, train "
                  f"{r['train_s']:.2f} s, run {run_s:.2f} s, {r['images_per_s']:.0f} img/s, "
                  f"{r['ms_per_step']:.2f} ms/step, {100 * r['peak_share']:.1f}% of the bf16 peak{graph}", flush=True)
        results.append({"recipe": rname, "step": mode, "config": source, "overrides": overrides, "params": params,
                        "macs": macs, "epochs": config.train.epochs, "tta": config.train.tta, "runs": runs})

    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "bench.json").write_text(json.dumps({"device": name, "host_cpu": host_cpu(), "torch": torch.__version__,
                                                   "data": data.source, "bf16_peak_tflops": peak,
                                                   "results": results}, indent=2) + "\n")
    print(f"\n{name} on {host_cpu()}, torch {torch.__version__}; airbench s = whitening + steps + final evaluation "
          "with TTA, train s = the steps alone, run s = the whole train_run() call")
    print("| recipe | params | epochs | runs | airbench s | train s | run s | ms/step | img/s | bf16 peak | test % | "
          "TTA % (views) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        runs = r["runs"]
        share = statistics.mean(x["peak_share"] for x in runs) if runs else 0.0
        print(f"| {r['recipe']} | {r['params']:,} | {r['epochs']} | {len(runs)} | "
              f"{mean_std([x['airbench_s'] for x in runs])} | "
              f"{mean_std([x['train_s'] for x in runs])} | {mean_std([x['run_s'] for x in runs])} | "
              f"{mean_std([x['ms_per_step'] for x in runs])} | "
              f"{statistics.mean(x['images_per_s'] for x in runs) if runs else 0:,.0f} | {100 * share:.1f}% | "
              f"{mean_std([x['test'] for x in runs])} | "
              f"{mean_std([x['tta'] for x in runs if x['tta'] is not None])} ({r['tta']}) |")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, RunFolderError, TrainingError) as e:  # e.g. --synthetic too small for a batch
        raise SystemExit(f"error: {e}") from None
