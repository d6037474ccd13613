"""Classification: one class per image, cross-entropy loss, top-1 accuracy."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import default_collate

from searchmerge.core.errors import SearchmergeError
from searchmerge.data.tasks.base import Batch, TaskKind, eval_output, image_and_target

__all__ = ["Classification"]


class Classification(TaskKind):
    """Images stacked into one tensor, labels into another; the model gives a score per class."""

    name = "classification"
    metric_name = "top-1 accuracy"
    proportion = True

    def collate(self, samples: Sequence[tuple[Any, Any]]) -> Batch:
        images, labels = default_collate(list(samples))
        return images, labels

    def to_device(self, batch: Batch, device: torch.device) -> Batch:
        images, labels = batch
        return images.to(device), labels.to(device)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        images, labels = batch
        return F.cross_entropy(model(images), labels)

    def metric(self, model: nn.Module, batches: Iterable[Batch], device: torch.device) -> float:
        correct = total = 0
        for batch in batches:
            images, labels = self.to_device(batch, device)
            correct += int((model(images).argmax(dim=1) == labels).sum())
            total += len(labels)
        if total == 0:
            raise SearchmergeError("cannot measure accuracy on an empty split")
        return correct / total

    def statistics_pass(self, model: nn.Module, batch: Batch) -> None:
        model(batch[0])

    def check_model(self, name: str, model: nn.Module, batch: Batch, num_classes: int | None, data: str) -> None:
        images, labels = batch
        out = eval_output(name, model, images, f"images of shape {tuple(images.shape[1:])}")
        if isinstance(out, (list, tuple, dict)):
            raise SearchmergeError(
                f"model {name!r} gives {type(out).__name__} outputs (a detection model?) but its task is"
                " classification, which expects one score per class (N x classes); set task: detection"
            )
        classes = num_classes if num_classes is not None else int(labels.max()) + 1
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] < classes or (
            num_classes is not None and out.shape[1] != num_classes
        ):
            shape = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
            raise SearchmergeError(
                f"model {name!r} gives {shape} outputs per image but {data} has {classes} classes"
                f" (set num_classes: {classes} in its kwargs)"
            )

    def check_sample(self, where: str, sample: Any, num_classes: int | None) -> None:
        _, label = image_and_target(where, sample, "class")
        value = int(label) if isinstance(label, (int, torch.Tensor)) and not isinstance(label, bool) else None
        if value is None or value < 0 or (num_classes is not None and value >= num_classes):
            raise SearchmergeError(f"{where}: the class must be an integer in [0, {num_classes}), got {label!r}")

