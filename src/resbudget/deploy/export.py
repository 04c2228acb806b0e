"""The trained net as an ONNX model, for runtimes without PyTorch (onnxruntime and others).

The graph takes ``images``: float32, N x 3 x 32 x 32, RGB values in 0-1 (a uint8 image divided by 255), any batch
size N. The CIFAR-10 normalisation, the run's TTA views (their mean logits, as ``predict`` and ``eval`` score) and
the calibration temperature are inside it. It gives ``logits`` (already divided by the temperature) and
``probabilities`` (their softmax), both N x 10. The model's metadata holds the class names, the spec, the TTA mode
and its number of views, and the temperature. It computes in fp32 where the run scores in its own precision (bf16 by
default), so its probabilities differ from predict's in the third decimal.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from .._io import publish_new, usual_mode
from ..data import CIFAR10_NORMALIZATION, Normalization
from ..models import DEFAULT_BUDGET, ModelSpec
from ..train import CheckpointError, load_model, temperature_of, tta_mode, weights_path
from ..train.checkpoint import input_of
from ..train.tta import VIEWS, tta_logits
from ..version import __version__

DEFAULT_OPSET = 18


def supported_opsets() -> tuple[int, int]:
    """(lowest, highest) ONNX opset written as asked: PyTorch's exporter builds opset 18 graphs (lower ones would
    need a conversion that fails for these nets), and the installed onnx package knows opsets up to its own."""
    import onnx

    return DEFAULT_OPSET, onnx.defs.onnx_opset_version()


class Deployable(nn.Module):
    """Normalisation, the net over its TTA views and the temperature in one module: 0-1 RGB in, (logits,
    probabilities) out."""

    def __init__(self, model: nn.Module, temperature: float, tta: str = "none",
                 norm: Normalization = CIFAR10_NORMALIZATION) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", norm.tensor("mean", "cpu", torch.float32))
        self.register_buffer("std", norm.tensor("std", "cpu", torch.float32))
        self.temperature, self.tta = temperature, tta

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = tta_logits(self.model, (images - self.mean) / self.std, self.tta) / self.temperature
        return logits, logits.softmax(-1)


def export_onnx(source: str | os.PathLike, out: str | os.PathLike | None = None, *, opset: int | None = None,
                budget: int = DEFAULT_BUDGET, allow_over_budget: bool = False, allow_unfinished: bool = False,
                views: int | None = None) -> Path:
    """Write the ONNX model of a finished run folder or a checkpoint to ``out`` (default: ``model.onnx`` beside the
    weights), at exactly the ONNX ``opset`` asked for (one of :func:`supported_opsets`; default 18), scoring the
    run's TTA views (a checkpoint outside a run folder: the default recipe's) or ``views`` (1, 2, 4 or 6) instead.
    The model is written to a temporary file and moved into place only if ``out`` still does not exist: an existing
    file is never replaced, even one another export wrote meanwhile."""
    try:
        import onnx
    except ImportError:
        raise CheckpointError("export needs the deploy extra: pip install -e '.[deploy]' (onnx, onnxscript, "
                              "onnxruntime)") from None
    opset = DEFAULT_OPSET if opset is None else opset
    low, high = supported_opsets()
    if not low <= opset <= high:
        raise ValueError(f"--opset {opset} is not supported: the exporter writes ONNX opsets {low} to {high}")
    weights = weights_path(source, allow_unfinished)
    out = Path(out) if out is not None else weights.with_suffix(".onnx")
    if out.exists() or out.is_symlink():
        raise CheckpointError(f"{out} exists; it is not overwritten: choose another --out")
    if not out.parent.is_dir():
        raise CheckpointError(f"{out.parent} is not a folder: --out must name a file in an existing folder")
    model, spec = load_model(weights, budget=budget, allow_over_budget=allow_over_budget)
    temperature, tta = temperature_of(weights), tta_mode(weights, views)
    classes, norm = input_of(weights)
    module = Deployable(model, temperature, tta, norm).eval()
    example = torch.rand(2, spec.in_channels, spec.image_size, spec.image_size)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    try:
        quiet.setLevel(logging.ERROR)  # the exporter's notes on ops this net does not use
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(tmp), dynamo=True, opset_version=opset, verbose=False,
                              input_names=["images"], output_names=["logits", "probabilities"],
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), external_data=False)
        graph = onnx.load(str(tmp))
        written = next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), None)
        if written != opset:
            raise CheckpointError(f"the exporter could not write opset {opset} for this net (it wrote {written}); "
                                  f"nothing was written; use --opset {DEFAULT_OPSET}")
        _set_metadata(graph, spec, temperature, tta, classes)
        onnx.save(graph, str(tmp))
        os.chmod(tmp, usual_mode())
        publish_new(tmp, out, CheckpointError)
    finally:
        quiet.setLevel(level)
        tmp.unlink(missing_ok=True)
    return out


def _set_metadata(graph, spec: ModelSpec, temperature: float, tta: str,  # noqa: ANN001 - onnx.ModelProto
                  classes: tuple[str, ...]) -> None:
    size = spec.image_size
    entries = {"classes": json.dumps(list(classes)), "spec": json.dumps(spec.to_dict()),
               "temperature": repr(temperature), "tta": tta, "views": str(VIEWS[tta]),
               "input": f"images: float32 N x 3 x {size} x {size}, RGB in 0-1",
               "producer": f"resbudget {__version__}"}
    del graph.metadata_props[:]
    for key, value in entries.items():
        prop = graph.metadata_props.add()
        prop.key, prop.value = key, value
