from .builder import ResNet, build_model
from .presets import UnknownPresetError, get_preset, list_presets, preset_description, register_preset
from .spec import ModelSpec, SpecError, collapsed_stage, spec_warnings, stage_sizes

__all__ = ["ModelSpec", "ResNet", "SpecError", "UnknownPresetError", "build_model", "get_preset", "list_presets",
           "collapsed_stage", "preset_description", "register_preset", "spec_warnings", "stage_sizes"]
from .budget import (
           DEFAULT_BUDGET,
           BudgetError,
           LayerRow,
           Summary,
           check_budget,
           check_spec,
           count_macs,
           count_params,
           largest_map,
           summarize,
)

__all__ += ["DEFAULT_BUDGET", "BudgetError", "LayerRow", "Summary", "check_budget", "check_spec", "count_macs",
            "count_params", "largest_map", "summarize"]
