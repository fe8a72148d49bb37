"""Training: the optimisation loop and atomic safetensors checkpoints."""

from diffcore.training.config import TrainConfig
from diffcore.training.loop import Trainer, TrainResult, fit

__all__ = ["TrainConfig", "TrainResult", "Trainer", "fit"]
