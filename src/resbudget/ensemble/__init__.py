from .combine import RULES, ensemble_metrics, majority_vote, mean_logits, mean_softmax, predict
from .evaluate import evaluate_ensemble
from .together import train_together
from .trainer import MODES, train_ensemble, widest_member
from .model import Ensemble, check_ensemble_budget, is_ensemble, load_ensemble, save_ensemble

__all__ = ["MODES", "RULES", "Ensemble", "evaluate_ensemble", "check_ensemble_budget", "ensemble_metrics", "is_ensemble", "load_ensemble",
           "majority_vote", "mean_logits", "mean_softmax", "predict", "save_ensemble", "train_ensemble", "train_together",
           "widest_member"]
