"""The error of a run's files: a checkpoint, a training state or a summary that is missing, unreadable or refused."""


class CheckpointError(RuntimeError):
    pass
