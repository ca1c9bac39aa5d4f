"""Training: the whole model with f32 master weights and its backward in C.

``TrainableModel(path)`` (densemllm/train/trainable.py): ``forward_backward`` runs the
vision tower, merger and decoder forward, the text cross-entropy and/or NTP-M loss
heads and the backward of every parameter; ``grads()`` / ``params()`` map checkpoint
tensor names to NumPy views. See docs/training.md.
"""
from .trainable import StepOutput, TrainableModel
from .samples import Sample
from .trainer import Trainer

__all__ = ["TrainableModel", "StepOutput"]
__all__ += ["Trainer", "Sample"]
