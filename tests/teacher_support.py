"""Tiny teachers whose right answer is known: they find the one bright square drawn on a dark frame.

``SquareFinder`` is written in traceable tensor operations, so ``torch.onnx.export`` turns it
into a real ONNX teacher (torchvision layout); ``square_detector`` wraps the same rule as a
torchvision-style detection module (list of images in, one dict per image out) and counts
the frames it sees, so that tests can tell which frames were labelled again.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

#: Frames seen by every module made by :func:`square_detector`, in order (the tests reset it).
SEEN: list[tuple[int, int]] = []


class SquareFinder(nn.Module):
    """One image (3 x H x W in [0, 1]) in; the box around its bright pixels, label 1, score 0.9 (0 if none)."""

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bright = image.mean(dim=0) > 0.5
        height, width = bright.shape
        ys = torch.arange(height, dtype=torch.float32).unsqueeze(1).expand(height, width)
        xs = torch.arange(width, dtype=torch.float32).unsqueeze(0).expand(height, width)
        big = torch.full_like(xs, 1e6)
        x1 = torch.where(bright, xs, big).min()
        y1 = torch.where(bright, ys, big).min()
        x2 = torch.where(bright, xs + 1, -big).max()
        y2 = torch.where(bright, ys + 1, -big).max()
        score = bright.float().max() * 0.9
        boxes = torch.stack([x1, y1, x2, y2]).reshape(1, 4)
        return boxes, torch.ones(1, dtype=torch.int64), score.reshape(1)


class _Detector(nn.Module):
    """:class:`SquareFinder` as torchvision detectors are called: a list of images, a dict per image."""

    def __init__(self) -> None:
        super().__init__()
        self.finder = SquareFinder()
        self.scale = nn.Parameter(torch.ones(1))  # a tensor, so that a weights file can be saved and loaded

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        results = []
        for image in images:
            SEEN.append(tuple(image.shape[1:]))
            boxes, labels, scores = self.finder(image)
            results.append({"boxes": boxes * self.scale, "labels": labels, "scores": scores})
        return results


def square_detector() -> nn.Module:
    """A torchvision-style detector that finds the bright square (the ``factory:`` of a teacher section)."""
    return _Detector()


def export_square_onnx(path: Path) -> Path:
    """:class:`SquareFinder` as an ONNX file of the torchvision layout, for frames of any size."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(SquareFinder(), (torch.rand(3, 16, 16),), str(path), input_names=["image"],
                          output_names=["boxes", "labels", "scores"], dynamic_axes={"image": {1: "h", 2: "w"}},
                          dynamo=False)
    return path


def square_frame(height: int, width: int, box: tuple[int, int, int, int] | None) -> np.ndarray:
    """A dark RGB frame with a white square at ``box`` (x1, y1, x2, y2 pixels; ``None``: nobody)."""
    frame = np.full((height, width, 3), 20, dtype=np.uint8)
    if box is not None:
        x1, y1, x2, y2 = box
        frame[y1:y2, x1:x2] = 255
    return frame
