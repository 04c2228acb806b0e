from .checkpoint import CheckpointError, load_model, load_state, save_state, save_weights
from .config import (Config, ConfigError, DataConfig, ExperimentConfig, OptimConfig, ScheduleConfig, TrainConfig,
                     apply_overrides, config_from_dict, config_to_dict, config_to_toml, default_config, load_config,
                     scale_epochs)
from .loop import RunFolderError, TrainingError, evaluate, evaluate_checkpoint, make_optimizer, select_device, train
from .schedules import Schedule

__all__ = ["CheckpointError", "Config", "ConfigError", "DataConfig", "ExperimentConfig", "OptimConfig",
           "RunFolderError", "Schedule", "ScheduleConfig", "TrainConfig", "TrainingError", "apply_overrides",
           "config_from_dict", "config_to_dict", "config_to_toml", "default_config", "evaluate",
           "evaluate_checkpoint", "load_config", "load_model", "load_state", "make_optimizer", "save_state",
           "save_weights", "scale_epochs", "select_device", "train"]
