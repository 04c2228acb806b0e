"""resbudget: design, train and evaluate ResNets for CIFAR-10 under a parameter budget."""

__version__ = "0.1.0"

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
# The training function stays in its module (resbudget.train.train): re-exported here, it would hide the package.
from .train import Config, default_config, evaluate_checkpoint, load_config, load_model

__all__ = ["Config", "ModelSpec", "__version__", "build_model", "check_budget", "count_params", "default_config",
           "evaluate_checkpoint", "get_preset", "list_presets", "load_cifar10", "load_config", "load_model",
           "register_preset", "summarize"]
