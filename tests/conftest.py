"""Shared fixtures: tiny hand-built models whose shareable layers are known by construction,
and a tiny digits study whose retraining takes seconds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from searchmerge.config.study import open_study_file
from searchmerge.training.prepare import prepare_study


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


@pytest.fixture(scope="session")
def prepared_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the tiny study file and its originals prepared once per session (SQLite).

    Preparing trains two pretrained architectures and three fine-tuned models; doing it
    once and copying the result (:func:`copy_prepared`) keeps every test isolated without
    retraining the originals for each.
    """
    folder = tmp_path_factory.mktemp("prepared-tiny")
    (folder / "tiny.yaml").write_text(TINY_STUDY)
    prepare_study(open_study_file(folder / "tiny.yaml", storage=f"sqlite:///{folder / 'tiny.db'}"))
    return folder


def copy_prepared(source: Path, destination: Path, study_text: str | None = None) -> tuple[Path, str]:
    """Copy a prepared tiny study (its file, database and blobs) to ``destination``.

    Returns the study file's path and the storage URL of the copy. ``study_text``
    replaces the study file's text (same models and training settings, so the stored
    originals still apply: e.g. another evaluator or target).
    """
    destination.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / "tiny.db", destination / "tiny.db")
    shutil.copytree(source / "tiny.db.checkpoints", destination / "tiny.db.checkpoints")
    (destination / "tiny.yaml").write_text(study_text if study_text is not None else (source / "tiny.yaml").read_text())
    return destination / "tiny.yaml", f"sqlite:///{destination / 'tiny.db'}"
