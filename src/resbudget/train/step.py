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
"""

from __future__ import annotations

import time

import torch
from torch import nn

from .muon import MuonSGD

WARMUP_STEPS = 3  # eager steps on a side stream before each capture


class TrainStep:
    """``step(x, y) -> (per-image losses, mean loss, logits)``: one optimiser step of ``model`` on the batch. The
    returned tensors are overwritten by the next step: read (or copy) them before it."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module, *,
                 precision: str) -> None:
        self.model, self.optimizer, self.criterion = model, optimizer, criterion
        self.precision = precision
        self.device = next(model.parameters()).device
        self.captures = 0  # graphs recorded so far, and the seconds their recording took (for the record)
        self.capture_seconds = 0.0
        self.graphed = self.device.type == "cuda" and isinstance(optimizer, MuonSGD)
        self._params = list(model.parameters())
        self._key: tuple[bool, ...] | None = None  # which parameters trained when the graph was captured
        self._graph: torch.cuda.CUDAGraph | None = None
        self._warm = 0  # eager steps run since the set of trained parameters last changed
        self._static: tuple[torch.Tensor, ...] = ()
        self._side: torch.cuda.Stream | None = None
        self._out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # the autocast cache is off: a captured graph must not hold casts made outside it (the values are the same)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16",
                            cache_enabled=False):
            logits = self.model(x)
            losses = self.criterion(logits, y)
            loss = losses.mean()
        loss.backward()
        self.optimizer.step()
        return losses, loss, logits

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.graphed:
            self.optimizer.zero_grad(set_to_none=True)
            return self._step(x, y)
        key = tuple(p.requires_grad for p in self._params)
        if key != self._key:
            self._key, self._graph, self._out, self._warm = key, None, None, 0
        if self._graph is None and self._warm < WARMUP_STEPS:
            self._warm += 1
            return self._eager_on_side_stream(x, y)
        if self._graph is None:
            self._capture(x, y)
        static_x, static_y = self._static
        static_x.copy_(x)
        static_y.copy_(y)
        self._graph.replay()
        return self._out

    def _eager_on_side_stream(self, x: torch.Tensor, y: torch.Tensor):
        side = self._side = self._side or torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self.optimizer.zero_grad(set_to_none=True)
            out = self._step(x, y)
        torch.cuda.current_stream(self.device).wait_stream(side)
        return out

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Record the step (it does not run while recorded: the caller replays it). The gradients are set to None
        first, so backward allocates them in the graph's pool and every replay rewrites them there."""
        if not self._static or self._static[0].shape != x.shape:
            self._static = (torch.empty_like(x), torch.empty_like(y))  # x's memory format too
        self._graph = None  # free the previous graph's pool before recording the next
        torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._out = self._step(*self._static)
        torch.cuda.synchronize(self.device)
        self._graph = graph
        self.captures += 1
        self.capture_seconds += time.perf_counter() - start
