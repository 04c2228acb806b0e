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
from resbudget.train.setup import initial_model
from resbudget.train.step import WARMUP_STEPS, TrainStep, records

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


class StandInRecorder:
    """A CPU stand-in for :class:`CudaRecorder` with a graph's contract: a recording does not train (the step's
    effects are undone), it fixes the tensors the step reads (a replay checks they are the same objects and
    storage: parameters, buffers, optimiser state, the lr tensors) and the tensors it returns (a replay writes into
    them). ``fail`` makes every recording raise, as an op that cannot be captured does."""

    def __init__(self, model, optimizer, fail: str | None = None):
        self.model, self.optimizer, self.fail = model, optimizer, fail
        self.calls: list[str] = []

    def _read(self):
        opt_state = [v for s in self.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
        lrs = [g["lr"] for g in self.optimizer.param_groups if torch.is_tensor(g["lr"])]
        return [*self.model.parameters(), *self.model.buffers(), *opt_state, *lrs]

    def warm(self, run):
        self.calls.append("warm")
        return run()

    def record(self, run):
        self.calls.append("record")
        if self.fail:
            raise RuntimeError(self.fail)
        read = self._read()
        saved = [t.detach().clone() for t in read]
        out = tuple(t.detach().clone() for t in run())
        with torch.no_grad():
            for t, s in zip(read, saved):
                t.copy_(s)
        return (run, [(t, t.data_ptr()) for t in read], out), out

    def replay(self, graph):
        self.calls.append("replay")
        run, read, out = graph
        now = self._read()
        assert len(now) == len(read) and all(a is b and a.data_ptr() == p for a, (b, p) in zip(now, read)), (
            "a tensor the recording read was replaced: a graph would read the old one")
        self.optimizer.zero_grad(set_to_none=True)  # a replayed backward writes the gradients afresh
        new_out = run()
        with torch.no_grad():
            for mine, new in zip(out, new_out):
                mine.copy_(new)


def recorded_train(config, model, data, *, stem_bias_until=None, fail=None):
    """:func:`train` with the step recorded by a :class:`StandInRecorder`; returns the losses, step and recorder."""
    made = {}

    class RecordedStep(TrainStep):
        def __init__(self, model, optimizer, criterion, **kwargs):
            recorder = made["recorder"] = StandInRecorder(model, optimizer, fail)
            super().__init__(model, optimizer, criterion, recorder=recorder, say=made.setdefault("said", []).append,
                             **kwargs)

    losses, step = train(config, model, data, stem_bias_until=stem_bias_until, step_class=RecordedStep)
    return losses, step, made["recorder"], made["said"]


def test_the_recorded_step_trains_as_the_eager_step_and_records_again_when_the_trained_tensors_change():
    config = small_default()
    start = initial_model(config).to(memory_format=torch.channels_last)
    data = batches(2 * WARMUP_STEPS + 6)
    eager, recorded = copy.deepcopy(start), copy.deepcopy(start)
    until = WARMUP_STEPS + 3
    eager_losses, _ = train(config, eager, data, stem_bias_until=until)
    losses, step, recorder, said = recorded_train(config, recorded, data, stem_bias_until=until)
    assert step.graphed and step.captures == 2 and step.fallback is None and said == []
    # warm-up, a recording, replays; then the stem bias stops training: warm-up again, a second recording
    assert recorder.calls == (["warm"] * WARMUP_STEPS + ["record"] + ["replay"] * 3
                              + ["warm"] * WARMUP_STEPS + ["record"] + ["replay"] * (len(data) - until - WARMUP_STEPS))
    # the same operations on the same numbers: a replay that read a stale batch, lr or gradient would differ
    assert losses == eager_losses
    for (name, a), b in zip(recorded.state_dict().items(), eager.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_replay_returns_the_recorded_tensors_overwritten():
    config = small_default()
    model = initial_model(config).to(memory_format=torch.channels_last)
    opt = make_optimizer(config, model)
    step = TrainStep(model, opt, nn.CrossEntropyLoss(reduction="none"), precision="bf16",
                     recorder=StandInRecorder(model, opt))
    outs, losses = [], []
    for x, y in batches(WARMUP_STEPS + 3):
        outs.append(step(x, y))
        losses.append(outs[-1][0].clone())  # read before the next step, as the loop reads them
    first, second = outs[WARMUP_STEPS + 1], outs[WARMUP_STEPS + 2]
    assert all(a is b for a, b in zip(first, second))  # the same tensors, rewritten by each replay
    assert not torch.equal(losses[WARMUP_STEPS + 1], losses[WARMUP_STEPS + 2])  # with each step's own values


def test_a_recording_that_fails_says_so_once_and_training_goes_on_eagerly_losing_no_batch():
    config = small_default()
    start = initial_model(config).to(memory_format=torch.channels_last)
    data = batches(WARMUP_STEPS + 4)
    eager, recorded = copy.deepcopy(start), copy.deepcopy(start)
    eager_losses, _ = train(config, eager, data)
    losses, step, recorder, said = recorded_train(
        config, recorded, data, fail="operation not permitted when stream is capturing\n(traceback detail)")
    assert not step.graphed and step.captures == 0 and recorder.calls == ["warm"] * WARMUP_STEPS + ["record"]
    assert step.fallback == "RuntimeError: operation not permitted when stream is capturing"
    assert said == ["recording the training step as a CUDA graph failed (RuntimeError: operation not permitted when "
                    "stream is capturing); training on eagerly"]
    assert losses == eager_losses  # the batch whose recording failed was trained on, eagerly
    for (name, a), b in zip(recorded.state_dict().items(), eager.state_dict().values()):
        assert torch.equal(a, b), name


def test_only_a_gpu_step_with_a_tensor_lr_is_recorded():
    model = initial_model(small_default())
    muon = make_optimizer(small_default(), model)
    sgd = make_optimizer(small_default("optim.name=sgd", "optim.lr=0.1"), model)
    assert records(torch.device("cuda"), muon) and records(torch.device("cuda", 0), muon)
    assert not records(torch.device("cpu"), muon) and not records(torch.device("cuda"), sgd)
    assert not TrainStep(model, muon, nn.CrossEntropyLoss(), precision="bf16").graphed  # on a CPU


def test_a_run_whose_recording_fails_ends_normally_and_its_summary_says_why(small_cifar, tmp_path, monkeypatch, capsys):
    from resbudget.train import step as step_module
    from resbudget.train import train_run

    class Failing:
        def __init__(self, device):
            pass

        def warm(self, run):
            return run()

        def record(self, run):
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    monkeypatch.setattr(step_module, "records", lambda device, optimizer: True)
    monkeypatch.setattr(step_module, "CudaRecorder", Failing)
    config = small_default("train.epochs=2", "train.batch_size=64", "train.tta=none")
    summary = train_run(config, tmp_path / "run", data=small_cifar, progress=False)
    assert summary.step_graph is False and summary.graph_captures == 0
    assert summary.graph_fallback == "RuntimeError: CUDA error: operation not permitted when stream is capturing"
    err = capsys.readouterr().err
    assert err.count("warning: recording the training step as a CUDA graph failed") == 1
    assert "Traceback" not in err and (tmp_path / "run" / "model.safetensors").exists()
