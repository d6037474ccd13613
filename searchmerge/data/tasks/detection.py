"""Detection, in torchvision's convention: a loss dict in training mode, boxes when scoring.

A detection model takes a list of images (C x H x W, values as its data gives them). In
training mode ``model(images, targets)`` returns a dict of losses, which are summed; in
eval mode ``model(images)`` returns per image a dict of ``boxes`` (x1, y1, x2, y2 in
pixels), ``scores`` and ``labels``. Label 0 is the background, so object classes are
1..K and the model is built with ``num_classes = K + 1``. The metric is the mean average
precision at an IoU of 0.5, computed by torchmetrics (with pycocotools underneath). mAP
is not a proportion of images, so its 95% interval is a bootstrap over the images
(:meth:`Detection.metric_interval`): the detections are made once and the mAP of each
resample of images computed again.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from searchmerge.core.errors import SearchmergeError
from searchmerge.core.uncertainty import Interval, bootstrap
from searchmerge.data.sources.base import check_boxes
from searchmerge.data.tasks.base import (
    MODEL_ERRORS,
    Batch,
    TaskKind,
    describe,
    eval_output,
    first_line,
    image_and_target,
)

__all__ = ["Detection"]

_OUTPUT_KEYS = ("boxes", "scores", "labels")


def _detections(
    model: nn.Module, batches: Iterable[Batch], device: torch.device, kind: TaskKind
) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    """Each image's detections and target boxes, on the CPU, in the order of the batches."""
    outputs, targets = [], []
    for batch in batches:
        images, truth = kind.to_device(batch, device)
        outputs += [{key: output[key].detach().cpu() for key in _OUTPUT_KEYS} for output in model(images)]
        targets += [{key: target[key].cpu() for key in ("boxes", "labels")} for target in truth]
    return outputs, targets


def _mean_ap(outputs: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]]) -> float:
    from torchmetrics.detection import MeanAveragePrecision

    mean_ap = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", iou_thresholds=[0.5])
    if outputs:
        mean_ap.update(outputs, targets)
    # With one IoU threshold the mean over thresholds is the AP at 0.5; -1 means no boxes at all.
    return max(0.0, float(mean_ap.compute()["map"]))


class Detection(TaskKind):
    """Lists of images and target dicts (``boxes``, ``labels``); mAP@0.5."""

    name = "detection"
    metric_name = "mAP@0.5"

    def collate(self, samples: Sequence[tuple[Any, Any]]) -> Batch:
        return [image for image, _ in samples], [target for _, target in samples]

    def to_device(self, batch: Batch, device: torch.device) -> Batch:
        images, targets = batch
        return [image.to(device) for image in images], [{k: v.to(device) for k, v in t.items()} for t in targets]

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        losses = model(*batch)
        if not isinstance(losses, Mapping) or not losses:
            raise SearchmergeError(
                f"a detection model in training mode must return a dict of losses, got {describe(losses)}"
            )
        return sum(losses.values())  # type: ignore[return-value]

    def metric(self, model: nn.Module, batches: Iterable[Batch], device: torch.device) -> float:
        return _mean_ap(*_detections(model, batches, device, self))

    def metric_interval(self, model: nn.Module, batches: Iterable[Batch], device: torch.device) -> Interval | None:
        """The percentile bootstrap interval of mAP@0.5 over the split's images (``None`` without images)."""
        outputs, targets = _detections(model, batches, device, self)
        if not outputs:
            return None
        return bootstrap(lambda index: _mean_ap([outputs[i] for i in index], [targets[i] for i in index]), len(outputs))

    def statistics_pass(self, model: nn.Module, batch: Batch) -> None:
        model(*batch)  # in training mode a torchvision detector needs the targets

    def check_model(self, name: str, model: nn.Module, batch: Batch, num_classes: int | None, data: str) -> None:
        images, targets = batch
        outputs = eval_output(name, model, images, f"a list of images of shape {tuple(images[0].shape)} (a torchvision"
                              " detection model takes one)")
        if isinstance(outputs, torch.Tensor):
            raise SearchmergeError(
                f"model {name!r} gives {describe(outputs)} (a classifier?) but its task is detection, which expects"
                " a dict of boxes, scores and labels per image; set task: classification"
            )
        if not isinstance(outputs, (list, tuple)) or len(outputs) != len(images) or not all(
            isinstance(o, Mapping) and all(k in o for k in _OUTPUT_KEYS) for o in outputs
        ):
            raise SearchmergeError(
                f"model {name!r} gives {describe(outputs)} for {len(images)} images, but a detection model gives"
                " one dict of boxes, scores and labels per image"
            )
        classes = num_classes or 1 + max((int(t["labels"].max()) for t in targets if len(t["labels"])), default=0)
        trial = copy.deepcopy(model).train()  # a training pass moves batch-norm statistics: not the original's
        try:
            self.loss(trial, (images, targets))
        except MODEL_ERRORS as exc:
            raise SearchmergeError(
                f"model {name!r} cannot compute its training loss on {data} (labels 1..{classes - 1}, 0 is the"
                f" background; is its num_classes at least {classes}?): {first_line(exc)}"
            ) from None
        except SearchmergeError as exc:
            raise SearchmergeError(f"model {name!r}: {exc}") from None

    def check_sample(self, where: str, sample: Any, num_classes: int | None) -> None:
        image, target = image_and_target(where, sample, "target dict")
        if not isinstance(target, Mapping) or "boxes" not in target or "labels" not in target:
            raise SearchmergeError(f"{where}: the target must be a dict with 'boxes' and 'labels', got {describe(target)}")
        boxes, labels = target["boxes"], target["labels"]
        if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
            raise SearchmergeError(f"{where}: 'boxes' must be a float tensor N x 4 (x1, y1, x2, y2), got {describe(boxes)}")
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.shape != boxes.shape[:1]:
            raise SearchmergeError(f"{where}: 'labels' must be an int64 tensor with one label per box, got {describe(labels)}")
        check_boxes(where, boxes, labels, height=image.shape[1], width=image.shape[2])

