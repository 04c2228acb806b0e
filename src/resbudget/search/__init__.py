"""Search for the best net and recipe under a budget (Optuna), on one machine or many sharing one storage."""

from .confirm import confirm_search
from .engine import (
                     SearchError,
                     SearchSettings,
                     default_storage,
                     open_search,
                     open_storage,
                     run_search,
                     trial_line,
)
from .report import format_table, pareto_front, search_report
from .space import (
                     DEFAULT_SPACE,
                     Param,
                     Rejected,
                     Space,
                     SpaceError,
                     fill_budget,
                     load_space,
                     trial_config,
)

__all__ = ["DEFAULT_SPACE", "Param", "Rejected", "SearchError", "SearchSettings", "Space", "SpaceError",
           "confirm_search", "default_storage", "fill_budget", "format_table", "load_space", "open_search",
           "open_storage", "pareto_front", "run_search", "search_report", "trial_config", "trial_line"]
