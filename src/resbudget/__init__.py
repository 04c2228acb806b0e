"""resbudget: design, train and evaluate ResNets for CIFAR-10 under a parameter budget."""

from . import _clock  # noqa: F401  (first: the process's start, for time limits)
from ._memory import keep_freed_memory
from .data import load_cifar10
from .models import (
                     ModelSpec,
                     build_model,
                     check_budget,
                     count_params,
                     get_preset,
                     list_presets,
                     register_preset,
                     summarize,
)
from .train import Config, default_config, evaluate_checkpoint, load_config, load_model, train_run
from .version import __version__

__all__ = ["Config", "ModelSpec", "__version__", "build_model", "check_budget", "count_params", "default_config",
           "evaluate_checkpoint", "get_preset", "keep_freed_memory", "list_presets", "load_cifar10", "load_config",
           "load_model", "register_preset", "summarize", "train_run"]
