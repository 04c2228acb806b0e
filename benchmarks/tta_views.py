"""Which TTA views carry the gain: test accuracy of trained nets averaged over subsets of 8 views.

Usage: python benchmarks/tta_views.py RUN_DIR [RUN_DIR ...] --data-dir ../shared/cifar10
Each run folder's model.safetensors is evaluated once per view (the image, its mirror, both shifted one pixel
up-left, down-right, and one diagonal more), and every subset below is scored from those logits.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from resbudget.data import load_cifar10
from resbudget.train import batched_outputs
from resbudget.train.checkpoint import load_model
from resbudget.train.tta import shift

VIEWS = {
    "id": lambda x: x, "flip": lambda x: x.flip(-1),
    "s-": lambda x: shift(x, -1, -1), "s+": lambda x: shift(x, 1, 1),
    "fs-": lambda x: shift(x.flip(-1), -1, -1), "fs+": lambda x: shift(x.flip(-1), 1, 1),
    "s-+": lambda x: shift(x, -1, 1), "fs+-": lambda x: shift(x.flip(-1), 1, -1),
}
SUBSETS = {
    "id (no TTA)": ["id"], "id, flip (flip)": ["id", "flip"], "id, fs-, fs+": ["id", "fs-", "fs+"],
    "id, flip, s-, s+": ["id", "flip", "s-", "s+"], "s-, s+, fs-, fs+": ["s-", "s+", "fs-", "fs+"],
    "id, flip, s-, fs+": ["id", "flip", "s-", "fs+"], "id, flip, fs-, s+ (flip-shift4)": ["id", "flip", "fs-", "s+"],
    "all 6 (flip-shift)": ["id", "flip", "s-", "fs-", "s+", "fs+"], "all 8": list(VIEWS),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--data-dir")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    a = p.parse_args()
    test = load_cifar10(a.data_dir).test
    table = {name: [] for name in SUBSETS}
    for run in a.runs:
        model, _ = load_model(run / "model.safetensors" if run.is_dir() else run)
        model = model.eval().to(memory_format=torch.channels_last)
        start, logits = time.perf_counter(), {}
        for name, view in VIEWS.items():
            outs = list(batched_outputs(lambda x, view=view, model=model: model(view(x)), test, precision=a.precision))
            logits[name] = torch.cat([o.float() for o, _ in outs])
        print(f"{run}: {(time.perf_counter() - start) / len(VIEWS):.1f} s per view", flush=True)
        for name, views in SUBSETS.items():
            pred = torch.stack([logits[v] for v in views]).mean(0).argmax(1)
            table[name].append(100 * (pred == test.labels).float().mean().item())
    print("\n| views | " + " | ".join(str(r) for r in a.runs) + " | mean |")
    print("|---|" + "---:|" * (len(a.runs) + 1))
    for name, accs in table.items():
        print(f"| {name} | " + " | ".join(f"{x:.2f}" for x in accs) + f" | {statistics.mean(accs):.2f} |")


if __name__ == "__main__":
    main()
