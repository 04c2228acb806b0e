"""Combination rules for K members' logits of shape (K, N, C), and the diversity measures that explain them."""

from __future__ import annotations

import torch

RULES = ("mean_softmax", "majority_vote", "mean_logits")


def mean_softmax(logits: torch.Tensor) -> torch.Tensor:
    """(N, C) mean of the members' probabilities."""
    return logits.float().softmax(-1).mean(0)


def mean_logits(logits: torch.Tensor) -> torch.Tensor:
    """(N, C) mean of the members' logits."""
    return logits.float().mean(0)


def majority_vote(logits: torch.Tensor) -> torch.Tensor:
    """(N,) the class most members predict; a tie goes to the tied class with the largest summed probability."""
    k, _, c = logits.shape
    votes = torch.nn.functional.one_hot(logits.argmax(-1), c).sum(0)  # (N, C)
    summed = logits.float().softmax(-1).sum(0)  # (N, C), each < K
    # Votes are whole numbers and the summed probability of one class is below K, so scaling votes by K + 1 makes
    # votes decide and the probability only break ties.
    return (votes * (k + 1) + summed).argmax(-1)


def predict(logits: torch.Tensor, rule: str) -> torch.Tensor:
    if rule == "mean_softmax":
        return mean_softmax(logits).argmax(-1)
    if rule == "mean_logits":
        return mean_logits(logits).argmax(-1)
    if rule == "majority_vote":
        return majority_vote(logits)
    raise ValueError(f"unknown combination rule {rule!r}; choose one of {', '.join(RULES)}")


def ensemble_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Each member's accuracy, each rule's, the oracle (any member right), and pairwise disagreement."""
    preds = logits.argmax(-1)  # (K, N)
    correct = preds == labels
    k = logits.shape[0]
    disagreement = [[float((preds[i] != preds[j]).float().mean()) for j in range(k)] for i in range(k)]
    pairs = [disagreement[i][j] for i in range(k) for j in range(i + 1, k)]
    return {
        "members": [float(c.float().mean()) for c in correct],
        "rules": {rule: float((predict(logits, rule) == labels).float().mean()) for rule in RULES},
        "oracle": float(correct.any(0).float().mean()),
        "pairwise_disagreement": disagreement,
        "mean_disagreement": sum(pairs) / len(pairs) if pairs else 0.0,
    }
