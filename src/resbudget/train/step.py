"""One training step (forward under autocast, per-image losses, backward, optimiser step), replayed as a CUDA graph.

A training step launches a few hundred small kernels (the net's layers both ways, then Muon's Newton-Schulz
iterations filter by filter). On a GPU, launching them from Python takes longer than running them, so an eager loop
goes at the speed of the host CPU, not of the GPU. :class:`TrainStep` therefore records the whole step once as a
CUDA graph and from then on copies each batch into the graph's input tensors and replays it: one launch a step.

What makes the step capturable, and what it costs:
- the batch shape is fixed (the loop drops the last partial batch) and nothing in the step reads a value back to the
  host, so the graph holds for every step;
- the lr is a tensor the schedule writes into (``MuonSGD``, ``set_lr``): the replayed step reads the current one.
  torch's own optimisers take their lr as a float, which a graph would freeze, so they run eagerly;
- which tensors train may change between epochs (the stem bias stops after ``train.stem_bias_epochs``): the step is
  captured again for the new set, after a few eager steps on a side stream (lazy state, library warm-up), as
  torch's documentation asks. A run of the default recipe captures twice;
- a graph's tensors (its inputs, outputs, activations and the gradients) live in a memory pool of its own.

On a CPU, or with another optimiser, the same step runs eagerly, with the same operations in the same order.

The decisions (when to warm up, when to record again, what a replay reads and returns, what to do when recording
fails) are :class:`TrainStep`'s; the CUDA calls themselves are a :class:`CudaRecorder`'s. Tests hand the step a
stand-in recorder and check every decision on a CPU; only the CUDA calls are left to a GPU. If recording raises,
the step says so in one line, runs eagerly from then on and keeps the reason (``fallback``: the run's summary has it).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from .muon import MuonSGD

WARMUP_STEPS = 3  # eager steps on a side stream before each capture

Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class Recorder(Protocol):
    """What :class:`TrainStep` asks of a device to record its step: run it eagerly before a capture, record it, replay
    a recording."""

    def warm(self, run: Callable[[], Outputs]) -> Outputs: ...

    def record(self, run: Callable[[], Outputs]) -> tuple[Any, Outputs]: ...

    def replay(self, graph: Any) -> None: ...


class CudaRecorder:
    """CUDA graphs: warm-up steps on a side stream, recording on it (``torch.cuda.graph``), one launch a replay."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._side: torch.cuda.Stream | None = None

    def warm(self, run: Callable[[], Outputs]) -> Outputs:
        side = self._side = self._side or torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            out = run()
        torch.cuda.current_stream(self.device).wait_stream(side)
        return out

    def record(self, run: Callable[[], Outputs]) -> tuple[torch.cuda.CUDAGraph, Outputs]:
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = run()
        torch.cuda.synchronize(self.device)
        return graph, out

    def replay(self, graph: torch.cuda.CUDAGraph) -> None:
        graph.replay()


def records(device: torch.device, optimizer: torch.optim.Optimizer) -> bool:
    """Whether a step on ``device`` with ``optimizer`` is recorded: on a GPU, with an optimiser whose lr is a tensor
    (torch's own take a float, which a graph would freeze)."""
    return device.type == "cuda" and isinstance(optimizer, MuonSGD)


class TrainStep:
    """``step(x, y) -> (per-image losses, mean loss, logits)``: one optimiser step of ``model`` on the batch. The
    returned tensors are overwritten by the next step: read (or copy) them before it.

    ``recorder``: who records the step (default: a :class:`CudaRecorder` where :func:`records` says so, else none:
    eager). ``say``: where the one line goes if recording fails (default: stderr, as a warning)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module, *,
                 precision: str, recorder: Recorder | None = None, say: Callable[[str], None] | None = None) -> None:
        self.model, self.optimizer, self.criterion = model, optimizer, criterion
        self.precision = precision
        self.device = next(model.parameters()).device
        self.say = say or (lambda text: print(f"warning: {text}", file=sys.stderr, flush=True))
        self.captures = 0  # graphs recorded so far, and the seconds their recording took (for the record)
        self.capture_seconds = 0.0
        self.fallback: str | None = None  # why recording failed and the step went eager, if it did
        if recorder is None and records(self.device, optimizer):
            recorder = CudaRecorder(self.device)
        self.recorder = recorder
        self.graphed = recorder is not None
        self._params = list(model.parameters())
        self._key: tuple[bool, ...] | None = None  # which parameters trained when the graph was captured
        self._graph: Any = None
        self._warm = 0  # eager steps run since the set of trained parameters last changed
        self._static: tuple[torch.Tensor, ...] = ()
        self._out: Outputs | None = None

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> Outputs:
        # the autocast cache is off: a captured graph must not hold casts made outside it (the values are the same)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16",
                            cache_enabled=False):
            logits = self.model(x)
            losses = self.criterion(logits, y)
            loss = losses.mean()
        loss.backward()
        self.optimizer.step()
        return losses, loss, logits

    def _eager(self, x: torch.Tensor, y: torch.Tensor) -> Outputs:
        self.optimizer.zero_grad(set_to_none=True)
        return self._step(x, y)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> Outputs:
        if not self.graphed:
            return self._eager(x, y)
        key = tuple(p.requires_grad for p in self._params)
        if key != self._key:
            self._key, self._graph, self._out, self._warm = key, None, None, 0
        if self._graph is None and self._warm < WARMUP_STEPS:
            self._warm += 1
            return self.recorder.warm(lambda: self._eager(x, y))
        if self._graph is None:
            try:
                self._capture(x, y)
            except Exception as e:  # noqa: BLE001 - any failure to record leaves the eager step, which is correct
                return self._give_up(e, x, y)
        static_x, static_y = self._static
        static_x.copy_(x)
        static_y.copy_(y)
        self.recorder.replay(self._graph)
        return self._out

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Record the step (it does not run while recorded: the caller replays it). The gradients are set to None
        first, so backward allocates them in the graph's pool and every replay rewrites them there."""
        if not self._static or self._static[0].shape != x.shape:
            self._static = (torch.empty_like(x), torch.empty_like(y))  # x's memory format too
        for static, new in zip(self._static, (x, y)):  # a real batch in them: a recording that ran would be valid
            static.copy_(new)
        self._graph = None  # free the previous graph's pool before recording the next
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        self._graph, self._out = self.recorder.record(lambda: self._step(*self._static))
        self.captures += 1
        self.capture_seconds += time.perf_counter() - start

    def _give_up(self, error: Exception, x: torch.Tensor, y: torch.Tensor) -> Outputs:
        """Recording failed: say why in one line, drop what the recording held and run this and every later step
        eagerly (the batch was not trained on: a recording does not run the step)."""
        first_line = (str(error).strip().splitlines() or [""])[0]
        self.fallback = f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__
        self.say(f"recording the training step as a CUDA graph failed ({self.fallback}); training on eagerly")
        self.graphed, self.recorder = False, None
        self._graph, self._out, self._static = None, None, ()
        return self._eager(x, y)
