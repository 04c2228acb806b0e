from .checkpoint import (
    CheckpointError,
    load_model,
    load_state,
    save_state,
    save_weights,
    temperature_of,
)
from .config import (
    Config,
    ConfigError,
    DataConfig,
    ExperimentConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    config_to_toml,
    default_config,
    load_config,
    scale_epochs,
)
from .evaluate import autocast, batched_outputs, evaluate, evaluate_checkpoint, select_device, tta_mode
from .fit import DivergedError, TrainingError, TrainingState, fit
from .folder import RunFolderError
from .optim import make_optimizer
from .provenance import host_cpu
from .run import train_run
from .schedules import Schedule
from .summary import Divergence, RunSummary, read_summary, weights_path
from .temperature import calibrate_run

__all__ = ["CheckpointError", "Config", "ConfigError", "DataConfig", "DivergedError", "Divergence", "ExperimentConfig",
           "OptimConfig", "RunFolderError", "RunSummary", "Schedule", "ScheduleConfig", "TrainConfig", "TrainingError",
           "TrainingState", "autocast", "batched_outputs", "calibrate_run", "config_from_dict", "config_to_dict",
           "config_to_toml", "default_config", "evaluate", "evaluate_checkpoint", "fit", "host_cpu", "load_config",
           "load_model", "load_state", "make_optimizer", "read_summary", "save_state", "save_weights", "scale_epochs",
           "select_device", "temperature_of", "train_run", "tta_mode", "weights_path"]
