"""Training: the optimisation loop and atomic safetensors checkpoints."""

from diffcore.training.loop import TrainConfig, Trainer, TrainResult, fit

__all__ = ["TrainConfig", "TrainResult", "Trainer", "fit"]
