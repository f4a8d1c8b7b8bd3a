"""The shared training loop: a method is a Task; `train` runs it under a TrainConfig."""
from .checkpoint import Checkpoints
from .loop import Task, TrainConfig, plot_eval, plot_history, train

__all__ = ["Checkpoints", "Task", "TrainConfig", "plot_eval", "plot_history", "train"]
