"""Training: the optimisation loop (checkpoints, distributed runs and the CLI build on it)."""

from diffcore.training.loop import TrainConfig, TrainResult, fit

__all__ = ["TrainConfig", "TrainResult", "fit"]
