"""Members trained together (one grouped network) against one after another: member-images per second.

Usage: python benchmarks/ensemble_throughput.py [--members 5] [--batch 128] [--steps 6] [--precision bf16|fp32]
       [--stem 32 --widths 32 64 128 --blocks 1 1 1 --strides 1 2 2]
One SGD step per member batch; the first step of each mode is a warm-up (median of the rest).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from resbudget.ensemble.grouped import GroupedResNet
from resbudget.models import ModelSpec, build_model, count_params
from resbudget.train.loop import autocast


def step_time(fn, steps: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--members", type=int, default=5)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--stem", type=int, default=32)
    p.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--blocks", type=int, nargs="+", default=[1, 1, 1])
    p.add_argument("--strides", type=int, nargs="+", default=[1, 2, 2])
    a = p.parse_args()
    spec = ModelSpec(stem_width=a.stem, stage_widths=tuple(a.widths), stage_blocks=tuple(a.blocks),
                     stage_strides=tuple(a.strides))
    device = torch.device("cpu")
    k, n = a.members, a.batch
    members = [build_model(spec).to(memory_format=torch.channels_last) for _ in range(k)]
    grouped = GroupedResNet.from_members(members).to(memory_format=torch.channels_last)
    xs = [torch.randn(n, 3, 32, 32).contiguous(memory_format=torch.channels_last) for _ in range(k)]
    ys = [torch.randint(0, 10, (n,)) for _ in range(k)]
    x_all = torch.cat(xs, 1).contiguous(memory_format=torch.channels_last)
    y_all = torch.stack(ys, 1)

    opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in members]
    opt_g = torch.optim.SGD(grouped.parameters(), lr=0.01, momentum=0.9)

    def sequential() -> None:
        for m, o, x, y in zip(members, opts, xs, ys):
            with autocast(device, a.precision):
                loss = F.cross_entropy(m(x), y)
            o.zero_grad(set_to_none=True)
            loss.backward()
            o.step()

    def together() -> None:
        with autocast(device, a.precision):
            logits = grouped(x_all)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y_all.reshape(-1), reduction="sum") / n
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()

    t_seq = step_time(sequential, a.steps)
    t_grp = step_time(together, a.steps)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {a.precision}, {k} members of "
          f"{count_params(members[0]):,} params, batch {n} per member")
    print(f"one after another: {k * n / t_seq:8.0f} member-images/s")
    print(f"together (grouped): {k * n / t_grp:8.0f} member-images/s   ratio {t_seq / t_grp:.2f}x")


if __name__ == "__main__":
    main()
