"""Where a CPU training step of the default recipe spends its time, against what this machine's cores can do.

    python benchmarks/cpu_profile.py [--steps 8] [--allocator keep|default] [--weight-grads products|onednn]
                                     [--out FILE.md]

1. This machine's bf16 limits with torch on all its threads: a 4096x4096 matmul, and each convolution shape of the
   default net forward and backward at the recipe's batch (TFLOPS, counting a multiply-accumulate as 2 FLOPs), as
   training computes it (a small map's weight gradient as nine matrix products: resbudget/models/conv.py) and with
   oneDNN's own weight gradient.
2. ``--steps`` training steps of the default recipe on random images (speed does not depend on the pixels), after two
   warm-up steps, under torch.profiler: the steps' time split into convolutions, normalisation, activations,
   pooling and the rest of the net, the optimiser (Muon's Newton-Schulz iterations among it) and the batch's
   augmentation; the system (kernel) share of the CPU time and the page faults, from getrusage.
3. One final evaluation of 10,000 images with the recipe's TTA views.

``--allocator keep`` (the default) sets the allocator as the command line does (resbudget/_memory.py); ``default``
leaves glibc's as it is, to compare. ``--weight-grads onednn`` times the steps with oneDNN's weight gradient for
every convolution, to compare.
"""

from __future__ import annotations

import argparse
import resource
import time
from collections import defaultdict

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from resbudget._memory import keep_freed_memory
from resbudget.data import Augment, Split, normalize
from resbudget.models import conv as conv_module
from resbudget.models import summarize
from resbudget.train import Config
from resbudget.train.evaluate import eval_options, view_logits
from resbudget.train.optim import make_optimizer
from resbudget.train.setup import initial_model
from resbudget.train.step import TrainStep

# profiler op names -> part of the step (first match wins; what matches none is "the rest of the net")
PARTS = (("convolutions", ("conv", "mkldnn_convolution")),
         ("normalisation", ("batch_norm", "native_batch_norm")),
         ("activations", ("gelu", "relu", "threshold")),
         ("pooling", ("pool",)),
         ("matmul (Newton-Schulz, the head)", ("mm", "matmul", "linear", "bmm")),
         ("copies and layout", ("copy_", "contiguous", "to_copy", "clone", "empty_strided", "cat")),
         ("elementwise (optimiser updates, losses)", ("add", "mul", "div", "sub", "lerp", "foreach", "sqrt", "norm",
                                                      "sum", "mean", "log_softmax", "nll_loss", "where", "fill",
                                                      "zero")))


def seconds(fn, repeat: int = 3) -> float:  # noqa: ANN001
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def matmul_tflops(n: int = 4096) -> float:
    a = torch.randn(n, n, dtype=torch.bfloat16)
    b = torch.randn(n, n, dtype=torch.bfloat16)
    return 2 * n**3 / seconds(lambda: a @ b) / 1e12


def conv_limits(config: Config, batch: int) -> list[tuple[str, float, float, float]]:
    """(shape, seconds for all the net's layers of that shape, TFLOPS, seconds with oneDNN's weight gradient) of each
    distinct 3x3 convolution of the net past its stem, forward + both backward passes, bf16 channels-last at
    ``batch`` images."""
    shapes: dict[tuple[int, int, int, int, int], int] = {}  # shape -> how many layers of the net have it

    def hook(module: nn.Conv2d, inputs, output) -> None:  # noqa: ANN001
        key = (module.in_channels, module.out_channels, inputs[0].shape[-1], output.shape[-1], module.stride[0])
        if module.kernel_size == (3, 3):
            shapes[key] = shapes.get(key, 0) + 1

    model = initial_model(config)
    for module in model.stages.modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    rows = []
    for (c_in, c_out, size_in, size_out, stride), count in shapes.items():
        conv = conv_module.Conv3x3(c_in, c_out, stride).to(memory_format=torch.channels_last)
        x = torch.randn(batch, c_in, size_in, size_in).contiguous(memory_format=torch.channels_last)
        x.requires_grad_()

        grad = torch.ones(batch, c_out, size_out, size_out, dtype=torch.bfloat16).contiguous(
            memory_format=torch.channels_last)

        def step(onednn: bool) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = nn.Conv2d.forward(conv, x) if onednn else conv(x)  # noqa: B023 - timed at once
            out.backward(grad)  # noqa: B023

        s, s_onednn = seconds(lambda: step(False)), seconds(lambda: step(True))  # noqa: B023
        macs = batch * c_out * size_out * size_out * c_in * 9
        rows.append((f"{c_in}→{c_out}, {size_in}²→{size_out}² (×{count})", count * s, 3 * 2 * macs / s / 1e12,
                     count * s_onednn))
    return rows


def conv_macs_of(config: Config) -> list[tuple[str, int]]:
    """(layer, MACs per image) of the net's 3x3 convolutions past its stem."""
    return [(r.name, r.macs) for r in summarize(config.model).layers
            if r.kind in ("Conv2d", "Conv3x3") and not r.name.startswith("stem") and r.macs
            and ".shortcut" not in r.name]


WEIGHT_GRADS = "weight gradients as matrix products"


def within(event, name: str) -> bool:  # noqa: ANN001 - a profiler event
    parent = event.cpu_parent
    while parent is not None:
        if parent.name == name:
            return True
        parent = parent.cpu_parent
    return False


def profile_steps(config: Config, steps: int) -> tuple[dict[str, float], float, float, int, float]:
    """(seconds per step by part, seconds per step in all, system share of the CPU time, page faults per step,
    seconds per step of augmentation) over ``steps`` steps of the recipe after two warm-up steps."""
    t = config.train
    model = initial_model(config).to(memory_format=torch.channels_last)
    criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing, reduction="none")
    step = TrainStep(model, make_optimizer(config, model), criterion, precision=t.precision)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (t.batch_size, 32, 32, 3), dtype=torch.uint8, generator=g).permute(0, 3, 1, 2)
    labels = torch.randint(0, 10, (t.batch_size,), generator=g)
    augment = Augment.from_config(config.data)

    def one() -> None:
        with record_function("augment"):
            x = augment(normalize(images), g, None).contiguous(memory_format=torch.channels_last)
        step(x, labels)

    for _ in range(2):
        one()
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):  # timed without the profiler, whose own bookkeeping costs time and memory
        one()
    wall = (time.perf_counter() - start) / steps
    after = resource.getrusage(resource.RUSAGE_SELF)
    products = conv_module.weight_grad_3x3

    def traced_products(grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with record_function(WEIGHT_GRADS):
            return products(grad_out, x)

    conv_module.weight_grad_3x3 = traced_products  # its matrix products count as convolutions
    with profile(activities=[ProfilerActivity.CPU]) as prof:  # the shares of the parts
        for _ in range(steps):
            one()
    conv_module.weight_grad_3x3 = products
    system = (after.ru_stime - before.ru_stime) / ((after.ru_utime - before.ru_utime) + (after.ru_stime
                                                                                        - before.ru_stime))
    faults = (after.ru_minflt - before.ru_minflt) // steps
    parts: dict[str, float] = defaultdict(float)
    augment_s = 0.0
    for event in prof.events():
        name = event.name.lower()
        if event.name == "augment":
            augment_s += event.cpu_time_total
            continue
        if not name.startswith("aten::"):
            continue
        part = next((p for p, keys in PARTS if any(k in name for k in keys)), "the rest")
        if within(event, WEIGHT_GRADS):
            part = "convolutions"
        parts[part] += event.self_cpu_time_total
    profiled = sum(parts.values())  # the parts' shares of the profiled time, applied to the unprofiled step
    return ({p: wall * s / profiled for p, s in parts.items()}, wall, system, faults, wall * augment_s / profiled)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--allocator", choices=("keep", "default"), default="keep")
    p.add_argument("--weight-grads", choices=("products", "onednn"), default="products")
    p.add_argument("--out", help="also write the tables to this Markdown file")
    args = p.parse_args()
    if args.allocator == "keep":
        keep_freed_memory()
    if args.weight_grads == "onednn":
        conv_module.matmul_weight_grad = lambda conv, x: False  # every layer as a plain nn.Conv2d
    torch.manual_seed(0)
    config = Config()
    t = config.train
    lines = [f"torch {torch.__version__}, {torch.get_num_threads()} threads, allocator: {args.allocator}, weight "
             f"gradients: {args.weight_grads}", "",
             "| limit (bf16) | s | TFLOPS | s with oneDNN's weight gradient |", "|---|---:|---:|---:|",
             f"| matmul 4096² | | {matmul_tflops():.2f} | |"]
    convs = conv_limits(config, t.batch_size)
    lines += [f"| 3×3 conv {shape}, batch {t.batch_size}, forward + backward | {s:.3f} | {tf:.2f} | {s1:.3f} |"
              for shape, s, tf, s1 in convs]
    conv_macs = sum(m for _, m in conv_macs_of(config))
    parts, wall, system, faults, augment_s = profile_steps(config, args.steps)
    macs = summarize(config.model).macs
    step_tflops = 3 * 2 * macs * t.batch_size / wall / 1e12
    conv_s = sum(s for _, s, _, _ in convs)
    lines += ["", f"One training step of the default recipe (batch {t.batch_size}): {wall:.3f} s, "
              f"{step_tflops:.2f} TFLOPS of the net's own arithmetic; CPU time in the kernel {100 * system:.0f}%, "
              f"{faults:,} page faults a step.", "",
              "| part of a step (shares from torch.profiler) | s per step | share | TFLOPS |", "|---|---:|---:|---:|"]
    total = sum(parts.values())
    for part, s in sorted(parts.items(), key=lambda kv: -kv[1]):
        rate = f"{3 * 2 * conv_macs * t.batch_size / s / 1e12:.2f}" if part == "convolutions" else ""
        lines.append(f"| {part} | {s:.3f} | {100 * s / total:.0f}% | {rate} |")
    lines.append(f"| (of which the batch's augmentation) | {augment_s:.3f} | | |")
    lines.append(f"| the same convolutions timed one by one (the limits above) | {conv_s:.3f} | | "
                 f"{3 * 2 * conv_macs * t.batch_size / conv_s / 1e12:.2f} |")
    test = Split(torch.randint(0, 256, (10_000, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (10_000,)))
    model = initial_model(config).to(memory_format=torch.channels_last)
    evaluation = seconds(lambda: view_logits(model, test, tta=t.tta, **eval_options(t)), repeat=1)
    lines += ["", f"The final evaluation: 10,000 images with {t.tta} TTA in {evaluation:.1f} s."]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
