"""The training step (train/step.py): eager on a CPU, captured once and replayed as a CUDA graph on a GPU.

The CUDA tests run where a GPU is (the GPU plan, benchmarks/gpu_plan.sh, runs this file there first); on a CPU they
are skipped and the eager tests check the step that every CPU run takes."""

import copy

import pytest
import torch
from torch import nn

from resbudget.models.prepare import train_stem_bias_
from resbudget.train import load_config
from resbudget.train.optim import make_optimizer, set_lr
from resbudget.train.run import initial_model
from resbudget.train.step import WARMUP_STEPS, TrainStep

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def small_default(*sets: str):
    return load_config("default", ["model.stage_widths=[16,32,32]", *sets])


def batches(n: int, device: str = "cpu", size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last).to(device),
             torch.randint(0, 10, (size,), generator=g).to(device)) for _ in range(n)]


def train(config, model, data, *, stem_bias_until: int | None = None, step_class=TrainStep):
    """Steps of ``model`` over ``data`` at a falling lr, the stem bias training for the first ``stem_bias_until``
    steps; returns the per-step mean losses (read after each step, as the loop reads them before the next)."""
    criterion = nn.CrossEntropyLoss(label_smoothing=0.2, reduction="none")
    opt = make_optimizer(config, model)
    step = step_class(model, opt, criterion, precision="bf16")
    losses = []
    for i, (x, y) in enumerate(data):
        if stem_bias_until is not None:
            train_stem_bias_(model, i < stem_bias_until)
        set_lr(opt, config.optim.lr * (1 - i / len(data)), config.optim.lr)
        _, loss, _ = step(x, y)
        losses.append(float(loss.detach()))
    return losses, step


def reference_steps(config, model, data):
    """The loop's step before train/step.py, written out: what the eager step must do bit for bit."""
    criterion = nn.CrossEntropyLoss(label_smoothing=0.2, reduction="none")
    opt = make_optimizer(config, model)
    for i, (x, y) in enumerate(data):
        set_lr(opt, config.optim.lr * (1 - i / len(data)), config.optim.lr)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = criterion(model(x), y).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def test_the_eager_step_is_the_plain_step_bit_for_bit_on_a_cpu():
    config = small_default()
    start = initial_model(config).to(memory_format=torch.channels_last)
    data = batches(4)
    ours, ref = copy.deepcopy(start), copy.deepcopy(start)
    _, step = train(config, ours, data)
    reference_steps(config, ref, data)
    assert not step.graphed and step.captures == 0
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(ours.classifier.weight, start.classifier.weight)


def test_the_eager_step_does_not_accumulate_gradients_across_steps():
    config = small_default("optim.name=sgd", "optim.lr=0.1")
    model = initial_model(config)
    x, y = batches(1)[0]
    criterion = nn.CrossEntropyLoss(reduction="none")
    opt = make_optimizer(config, model)
    step = TrainStep(model, opt, criterion, precision="fp32")
    set_lr(opt, 0.0, config.optim.lr)  # lr 0: the weights stay, so the second step's gradients are the first's
    step(x, y)
    first = model.classifier.weight.grad.clone()
    step(x, y)
    assert torch.equal(model.classifier.weight.grad, first)


@cuda
def test_the_captured_step_matches_the_eager_step_through_a_change_of_the_trained_tensors():
    config = small_default()
    start = initial_model(config).cuda().to(memory_format=torch.channels_last)
    data = batches(WARMUP_STEPS + 8, "cuda", size=64)
    eager, graphed = copy.deepcopy(start), copy.deepcopy(start)

    class EagerStep(TrainStep):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.graphed = False

    eager_losses, _ = train(config, eager, data, stem_bias_until=WARMUP_STEPS + 3, step_class=EagerStep)
    graphed_losses, step = train(config, graphed, data, stem_bias_until=WARMUP_STEPS + 3)
    assert step.graphed and step.captures == 2  # once at the start, once when the stem bias stopped training
    # the replayed step runs the same kernels on the same numbers; only atomics in a few backward kernels may add in
    # another order, and 11 steps of training grow that a little. A step that froze its lr, lost its gradients or
    # skipped the optimiser would be off by whole updates (several percent of a tensor's norm per step).
    assert graphed_losses == pytest.approx(eager_losses, rel=1e-2)
    for (name, a), b in zip(graphed.state_dict().items(), eager.state_dict().values()):
        a, b = a.double(), b.double()
        assert (a - b).norm() <= 2e-2 * b.norm() + 1e-6, name
    frozen = start.stem_conv.bias.detach()
    assert not torch.equal(graphed.stem_conv.bias.detach(), frozen)


@cuda
def test_the_captured_step_reads_the_lr_the_schedule_writes():
    config = small_default()
    model = initial_model(config).cuda().to(memory_format=torch.channels_last)
    criterion = nn.CrossEntropyLoss(reduction="none")
    opt = make_optimizer(config, model)
    step = TrainStep(model, opt, criterion, precision="bf16")
    data = batches(WARMUP_STEPS + 2, "cuda", size=64)
    for x, y in data[:-1]:
        step(x, y)
    assert step.captures == 1
    set_lr(opt, 0.0, config.optim.lr)  # lr 0 after the capture: the classifier must not move
    before = model.classifier.weight.detach().clone()
    step(*data[-1])
    assert torch.equal(model.classifier.weight.detach(), before)
