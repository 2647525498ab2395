"""Fine-tuning: contrastive and distillation training of the heads, MLM domain adaptation of the encoder."""

from .trainer import Trainer, TrainResult, TrainSettings

__all__ = ["TrainResult", "TrainSettings", "Trainer"]
