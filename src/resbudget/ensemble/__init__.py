from .combine import RULES, ensemble_metrics, majority_vote, mean_logits, mean_softmax, predict
from .evaluate import evaluate_ensemble
from .model import Ensemble, check_ensemble_budget, is_ensemble, load_ensemble, save_ensemble
from .trainer import train_ensemble, widest_member

__all__ = ["RULES", "Ensemble", "check_ensemble_budget", "ensemble_metrics", "evaluate_ensemble", "is_ensemble",
           "load_ensemble", "majority_vote", "mean_logits", "mean_softmax", "predict", "save_ensemble",
           "train_ensemble", "widest_member"]
