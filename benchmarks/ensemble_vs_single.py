"""For one parameter budget: K small nets as an ensemble, or one net of about the same total size?

Both get the same wall-clock training budget (--minutes each): the members share it, one after another, and the
single net has it alone. Epochs are set from a short throughput probe of each model, so each side fills its budget.

Usage: python benchmarks/ensemble_vs_single.py --data-dir ../shared/cifar10 [--minutes 25] [--members 5]
       [--budget 5000000] [--base fast] [--out runs/ens-vs-single]
Recipe: the default one (Nesterov SGD, warm-up + linear decay, label smoothing), only the epochs differ.
Prints and writes OUT/comparison.json: each member, each combination rule, the single net, epochs and wall times.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from throughput import train_images_per_s  # benchmarks/: on sys.path when run as a script

from resbudget.data import load_cifar10
from resbudget.ensemble import train_ensemble, widest_member
from resbudget.models import build_model, count_params, get_preset
from resbudget.train import default_config, train_run


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", required=True)
    p.add_argument("--minutes", type=float, default=25.0, help="training budget of each side")
    p.add_argument("--members", type=int, default=5)
    p.add_argument("--budget", type=int, default=5_000_000)
    p.add_argument("--base", default="fast", help="shape family (a preset) scaled to fit")
    p.add_argument("--out", type=Path, default=Path("runs/ens-vs-single"))
    a = p.parse_args()
    k = a.members
    member = widest_member(get_preset(a.base), a.budget // k)
    total = k * count_params(build_model(member))
    single = widest_member(get_preset(a.base), total)
    ips_m, ips_s = train_images_per_s(member), train_images_per_s(single)
    data = load_cifar10(a.data_dir)
    n = len(data.train)
    epochs_m = max(1, round(a.minutes * 60 / k * ips_m / n))
    epochs_s = max(1, round(a.minutes * 60 * ips_s / n))
    print(f"member {count_params(build_model(member)):,} params ({ips_m:.0f} img/s) x {k}: {epochs_m} epochs each; "
          f"single {count_params(build_model(single)):,} params ({ips_s:.0f} img/s): {epochs_s} epochs", flush=True)

    base = default_config()
    cfg_m = dataclasses.replace(base, model=member, preset=a.base,
                                train=dataclasses.replace(base.train, epochs=epochs_m))
    cfg_s = dataclasses.replace(base, model=single, preset=a.base,
                                train=dataclasses.replace(base.train, epochs=epochs_s))
    ens = train_ensemble(cfg_m, a.out / "ensemble", members=k, budget=a.budget, data=data, progress=False)
    one = train_run(cfg_s, a.out / "single", data=data, progress=False,
                    resume=(a.out / "single" / "config.toml").is_file())
    result = {
        "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "minutes_each": a.minutes,
        "probe_images_per_s": {"member": round(ips_m), "single": round(ips_s)},
        "ensemble": {"members": k, "member_params": ens["member_params"], "params": ens["params"],
                     "epochs": epochs_m, "wall_seconds": ens["wall_seconds"], "member_accuracy": ens["members"],
                     "rules": ens["rules"], "oracle": ens["oracle"], "mean_disagreement": ens["mean_disagreement"]},
        "single": {"params": one.params, "epochs": epochs_s, "wall_seconds": one.wall_seconds,
                   "test_accuracy": one.test_accuracy},
    }
    (a.out / "comparison.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
