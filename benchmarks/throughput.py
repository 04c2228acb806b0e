"""Training throughput (images/s) of presets on this machine: bf16 autocast + channels_last, one SGD step per batch.

Usage: python benchmarks/throughput.py [PRESET ...] [--batch 256] [--steps 6] [--precision bf16|fp32]
Prints one line per preset; the first step of each is a warm-up and is not counted (median of the rest).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from resbudget.models import ModelSpec, build_model, count_params, get_preset, list_presets, summarize
from resbudget.train import autocast, select_device


def train_images_per_s(spec: ModelSpec, batch: int = 256, steps: int = 6, precision: str = "bf16") -> float:
    """Training images/s of ``spec`` on this machine: one SGD step per batch of random images, channels_last; the
    first step is a warm-up, the median of the rest counts. (Also used by the other benchmarks.)"""
    device = select_device("auto")
    torch.manual_seed(0)
    model = build_model(spec).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        with autocast(device, precision):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times[1:])


def measure(name: str, batch: int, steps: int, precision: str) -> tuple[int, int, float]:
    spec = get_preset(name)
    return count_params(build_model(spec)), summarize(spec).macs, train_images_per_s(spec, batch, steps, precision)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("presets", nargs="*", default=list_presets())
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {args.precision}")
    for name in args.presets:
        params, macs, ips = measure(name, args.batch, args.steps, args.precision)
        print(f"{name:10s} {params:>11,} params {macs / 1e6:8.1f} M MACs {ips:8.0f} train images/s "
              f"({50_000 / ips:6.0f} s per 50k-image epoch)", flush=True)


if __name__ == "__main__":
    main()
