"""``cnn``: a small conv net for the digits task (``channels``, ``batchnorm``)."""
from __future__ import annotations

from torch import nn

from .registry import NETS


class CNN(nn.Module):
    """Small conv net for 1-channel 8x8 images: 3x3 convs (stride 2 after the first),
    optional BatchNorm, global average pooling, one Linear head."""

    def __init__(self, input_shape, num_classes: int, channels=(16, 32, 32), batchnorm: bool = False):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"cnn expects image inputs (C, H, W); got input shape {tuple(input_shape)}")
        blocks: list[nn.Module] = []
        c_in = input_shape[0]
        for i, c in enumerate(channels):
            block = [nn.Conv2d(c_in, c, 3, stride=1 if i == 0 else 2, padding=1)]
            if batchnorm:
                block.append(nn.BatchNorm2d(c))
            block.append(nn.ReLU())
            blocks.append(nn.Sequential(*block))
            c_in = c
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x):
        return self.head(self.pool(self.features(x)).flatten(1))


@NETS.register("cnn")
def cnn(input_shape, num_classes: int, channels: list[int] = (16, 32, 32), batchnorm: bool = False) -> nn.Module:
    """``CNN`` with one conv block per entry of ``channels``."""
    return CNN(input_shape, num_classes, tuple(channels), batchnorm)
