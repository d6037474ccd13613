"""Shared fixtures: tiny hand-built models whose shareable layers are known by construction,
and a tiny digits study whose retraining takes seconds."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """conv(3->8) -> bn -> conv(8->8) -> conv(8->16) -> linear(16->classes)."""

    def __init__(self, classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.body = nn.Conv2d(width, width, 3, padding=1)
        self.head_conv = nn.Conv2d(width, 16, 1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.body(x))
        x = self.head_conv(x).mean(dim=(2, 3))
        return self.fc(x)


def tiny_net(classes: int = 10, width: int = 8) -> nn.Module:
    """A factory usable as ``tests.conftest:tiny_net`` from study files."""
    return TinyNet(classes=classes, width=width)


def not_a_module() -> str:
    return "I am not a model"


#: A three-model digits study small enough that one evaluation takes a few seconds on a CPU.
TINY_STUDY = """
name: tiny-digits
seed: 0
target: 0.9
data: {image_size: 16, channels: 1}
pretrain: {task: digit, epochs: 2, lr: 0.01}
finetune: {epochs: 2, lr: 0.01}
evaluator: {fraction: 0.5, max_epochs: 2, lr: 0.003, init: first}
models:
  - {name: a, factory: "searchmerge.zoo:small_resnet", kwargs: {num_classes: 10, widths: [4, 8, 8], in_channels: 1},
     task: digit, camera: {noise_std: 0.05}}
  - {name: b, factory: "searchmerge.zoo:small_resnet", kwargs: {num_classes: 2, widths: [4, 8, 8], in_channels: 1},
     task: parity, camera: {blur_sigma: 0.8}}
  - {name: c, factory: "searchmerge.zoo:small_vgg", kwargs: {num_classes: 2, widths: [4, 8, 8], in_channels: 1},
     task: high}
"""
