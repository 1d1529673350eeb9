"""A task: fixed train/val/test splits as tensors, and how to score a model on them."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class Task:
    """A classification problem with fixed splits.

    ``x_*`` are float tensors shaped ``(N, *input_shape)``; ``y_*`` are int64 class
    indices. ``condition`` is what a conditional generator is told about the task
    (e.g. the class-subset code); it is empty for plain tasks.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    condition: dict = field(default_factory=dict)
    # The metric a "better model" is judged by, and which direction is better.
    metric: str = "accuracy"
    higher_is_better: bool = True

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of split ``name``: train, val or test."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split '{name}'; allowed: train, val, test")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    @staticmethod
    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss: cross-entropy."""
        return F.cross_entropy(logits, y)

    @staticmethod
    def scores(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Loss, accuracy and error of logits ``(N, C)`` against labels ``(N,)``."""
        loss = F.cross_entropy(logits.float(), y).item()
        acc = (logits.argmax(-1) == y).float().mean().item()
        return {"loss": loss, "accuracy": acc, "error": 1.0 - acc}

    def summary(self) -> dict:
        """Name, classes, input shape, split sizes and condition, as JSON-ready values."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "sizes": {s: int(getattr(self, f"y_{s}").numel()) for s in ("train", "val", "test")},
            "condition": self.condition,
        }
