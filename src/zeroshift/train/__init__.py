"""The shared training loop: a method is a Task; `train` runs it under a TrainConfig."""
from .loop import Task, TrainConfig, plot_history, train

__all__ = ["Task", "TrainConfig", "plot_history", "train"]
