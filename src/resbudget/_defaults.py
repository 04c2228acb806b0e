"""Defaults that belong to no one config dataclass but are read by several layers and the command line (which must
not import Optuna to show them)."""

from dataclasses import dataclass

HEARTBEAT_SECONDS = 60.0  # a worker sharing a storage beats this often; silent for 3 beats, its run goes to another


@dataclass(frozen=True)
class SharedStorage:
    """Where worker processes share their work (an SQLAlchemy URL), and how often each beats its heartbeat there."""

    url: str
    heartbeat: float = HEARTBEAT_SECONDS
