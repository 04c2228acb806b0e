"""Parameter budget tools: counts, a per-layer summary with MACs, and the budget check."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .builder import build_model
from .spec import ModelSpec, spec_warnings, stage_sizes, stem_size

DEFAULT_BUDGET = 5_000_000
# What a spec may ask for at all, even with --allow-over-budget: a spec read from a checkpoint or manifest is untrusted
# input, and these are checked from the spec alone, before any memory is allocated. The presets are far inside them
# (resnet18: 11.2M parameters, a largest feature map of 65,536 numbers per image, 8 blocks).
MAX_PARAMS = 200_000_000
MAX_MAP = 2_000_000  # numbers in the largest feature map of one image
MAX_LAYERS = 1_000  # blocks and stage entries together
MAX_IMAGE_SIZE = 1_024


class BudgetError(ValueError):
    """A model over the parameter budget or a hard ceiling. ``reason`` says what is over, without the advice the
    message adds (a search that rejects the net reports the reason alone)."""

    def __init__(self, reason: str, advice: str = "") -> None:
        super().__init__(f"{reason}; {advice}" if advice else reason)
        self.reason = reason


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def largest_map(spec: ModelSpec) -> int:
    """Numbers in the largest feature map of one image (a conv-pool stage's before its pooling), from the spec's
    sizes alone."""
    size = stem_size(spec)
    largest = spec.stem_width * size**2
    for width, out in zip(spec.stage_widths, stage_sizes(spec)):
        largest = max(largest, width * (size if spec.stage_entry == "conv-pool" else out) ** 2)
        size = out
    return largest


def check_spec(spec: ModelSpec, budget: int = DEFAULT_BUDGET, allow_over_budget: bool = False,
               what: str = "the model") -> int:
    """The parameter count of ``spec``, after checking it from the spec alone (the net is built on the meta device:
    no memory is allocated, whatever the widths): within ``budget`` (unless allowed over it) and, always, within the
    hard ceilings on layers, input size, parameters and feature-map size."""
    layers = sum(spec.stage_blocks) + (len(spec.stage_widths) if spec.stage_entry == "conv-pool" else 0)
    if layers + len(spec.head_hidden) > MAX_LAYERS:
        raise BudgetError(f"{what} has {layers + len(spec.head_hidden):,} layers; at most {MAX_LAYERS:,} are built")
    if spec.image_size > MAX_IMAGE_SIZE or spec.in_channels > 64:
        raise BudgetError(f"{what} takes {spec.in_channels} x {spec.image_size} x {spec.image_size} inputs, larger "
                          f"than any CIFAR net's; at most 64 channels of {MAX_IMAGE_SIZE} x {MAX_IMAGE_SIZE}")
    with torch.device("meta"):
        params = count_params(build_model(spec))
    if not allow_over_budget:
        check_budget(params, budget, what)
    if params > MAX_PARAMS:
        raise BudgetError(f"{what} has {params:,} parameters, over the hard ceiling of {MAX_PARAMS:,} that holds even "
                          "with --allow-over-budget")
    if largest_map(spec) > MAX_MAP:
        raise BudgetError(f"{what} has a feature map of {largest_map(spec):,} numbers per image, over the ceiling of "
                          f"{MAX_MAP:,} that holds even with --allow-over-budget")
    return params


def count_macs(spec: ModelSpec) -> int:
    """Multiply-accumulates per image, from the spec alone: one forward pass of the net on the meta device, where
    tensors have shapes and no storage."""
    with torch.device("meta"):
        return summarize(spec, build_model(spec)).macs


def check_budget(params: int, budget: int = DEFAULT_BUDGET, what: str = "the model") -> None:
    if params > budget:
        raise BudgetError(f"{what} has {params:,} parameters, {params - budget:,} over the budget of {budget:,} "
                          f"({params / budget:.2f}x)", "shrink it or pass --allow-over-budget")


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int


@dataclass
class Summary:
    layers: list[LayerRow]
    params: int
    macs: int
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "params": self.params,
            "macs": self.macs,
            "layers": [
                {"name": r.name, "type": r.kind, "output_shape": list(r.output_shape), "params": r.params,
                 "macs": r.macs}
                for r in self.layers
            ],
            "warnings": self.warnings,
        }

    def table(self) -> str:
        rows = [("layer", "type", "output", "params", "MACs")]
        for r in self.layers:
            rows.append((r.name, r.kind, "x".join(map(str, r.output_shape)), f"{r.params:,}", f"{r.macs:,}"))
        rows.append(("total", "", "", f"{self.params:,}", f"{self.macs:,}"))
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines = []
        for i, row in enumerate(rows):
            cells = [row[j].ljust(widths[j]) if j < 3 else row[j].rjust(widths[j]) for j in range(5)]
            lines.append("  ".join(cells).rstrip())
            if i == 0 or i == len(rows) - 2:
                lines.append("  ".join("-" * w for w in widths))
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _macs(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-accumulates per image of the layers that do the arithmetic (convs and linears)."""
    per_image = output[0].numel()
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return per_image * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return per_image * module.in_features
    return 0


def summarize(spec: ModelSpec, model: nn.Module | None = None) -> Summary:
    """Per-layer output shape, parameters and MACs for one image, from one forward pass on CPU."""
    model = model if model is not None else build_model(spec)
    rows: list[LayerRow] = []
    hooks = []
    for name, module in model.named_modules():
        if next(module.children(), None) is not None:
            continue  # leaves only: their sum is the total
        own = sum(p.numel() for p in module.parameters(recurse=False))

        def hook(mod, _inp, out, name=name, own=own):
            rows.append(LayerRow(name, type(mod).__name__, tuple(out.shape[1:]), own, _macs(mod, out)))

        hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            model(torch.zeros(1, spec.in_channels, spec.image_size, spec.image_size, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return Summary(rows, count_params(model), sum(r.macs for r in rows), spec_warnings(spec))
