"""What a data source gives the pipeline, and what every source shares.

A data source turns a model's ``data:`` section of a study file into :class:`TaskData`:
three splits (train, val, test) as ``torch.utils.data.Dataset`` objects that read their
samples when asked (so a dataset never has to fit in memory), the task kind the data is
for, its number of classes, the class of each sample where the kind has one (for
stratified subsamples) and a fingerprint that changes whenever the data does. The
pipeline sees only this, never which source made it.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from searchmerge.core.errors import SearchmergeError

__all__ = [
    "SPLITS",
    "Source",
    "SourceContext",
    "SplitData",
    "TaskData",
    "check_boxes",
    "digest",
    "file_identity",
    "model_input",
    "pixels_of",
    "root_folder",
    "subsample",
    "subsample_indices",
]

#: The splits every source gives, in this order.
SPLITS = ("train", "val", "test")


class TaskData(Protocol):
    """One model's data, as every source gives it."""

    train: Dataset[Any]
    val: Dataset[Any]
    test: Dataset[Any]

    @property
    def kind(self) -> str:
        """The task kind the data is for (``classification``, ``detection``)."""

    @property
    def num_classes(self) -> int | None:
        """Classes of a classifier's output; for detection, object classes + 1 (the background)."""

    @property
    def fingerprint(self) -> str:
        """Changes whenever a sample could: keys cached originals and checkpoints."""

    @property
    def description(self) -> str:
        """One line for messages: where the data comes from."""

    def class_labels(self, split: str) -> np.ndarray | None:
        """The class of every sample of ``split``, or ``None`` where the kind has no single class."""


@dataclass(frozen=True, eq=False)
class SplitData:
    """:class:`TaskData` of a file or factory source."""

    train: Dataset[Any]
    val: Dataset[Any]
    test: Dataset[Any]
    kind: str
    num_classes: int | None
    fingerprint: str
    description: str
    labels: Mapping[str, np.ndarray] = field(default_factory=dict)
    #: Per split, the class of every box of every sample (detection), read without the images.
    objects: Mapping[str, Sequence[np.ndarray]] = field(default_factory=dict)
    #: The name of each class (index = class; a detector's class 0 is the background), for messages.
    class_names: tuple[str, ...] = ()
    #: How to give every split enough examples of every class with this source (for messages).
    split_fix: str = ""

    def __post_init__(self) -> None:
        for name in SPLITS:
            if len(getattr(self, name)) == 0:  # type: ignore[arg-type]
                raise SearchmergeError(f"{self.description}: split {name!r} is empty")

    def class_labels(self, split: str) -> np.ndarray | None:
        return self.labels.get(split)

    def object_labels(self, split: str) -> Sequence[np.ndarray] | None:
        """Per sample of ``split``, the classes of its boxes (detection), or ``None`` where not known."""
        return self.objects.get(split)


@dataclass(frozen=True)
class SourceContext:
    """What a source needs besides its own options.

    Attributes:
        folder: Relative paths of a study file are relative to its folder.
        seed: The study's seed (a drift scenario's own, for its new footage).
        cache_dir: Where decoded and resized images are kept between runs (``None``: nowhere).
        defaults: The study file's top-level ``data:`` section (e.g. the digits' image size), and its
            ``video:`` section under ``"video"`` (the footage of ``format: video`` models).
    """

    folder: Path
    seed: int = 0
    cache_dir: Path | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def path(self, value: Any, where: str) -> Path:
        """``value`` as a path, relative to the study file's folder."""
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            raise SearchmergeError(f"{where} must be a path, got {value!r}")
        path = Path(value).expanduser()
        return (path if path.is_absolute() else self.folder / path).absolute()  # a later chdir changes nothing


class Source(ABC):
    """A data source, registered by its ``format`` name (see :mod:`searchmerge.data.sources`)."""

    #: Its keys in a model's ``data:`` section, besides ``format``.
    keys: ClassVar[frozenset[str]]
    #: The task kind of its data; ``None`` when the model's ``task:`` says (a dataset factory).
    kind: ClassVar[str | None] = None
    #: Models on this data without ``weights`` are made by the study's recipe (pretrain + fine-tune).
    makes_originals: ClassVar[bool] = False
    #: (mean, std): a model on this data takes an 8-bit pixel ``p`` as ``(p / 255 - mean) / std``. The edge
    #: encodes the frames it samples with it and the merging service decodes them (:func:`pixels_of`,
    #: :func:`model_input`), so a sampled frame is what the model saw, in compact 8-bit form.
    normalisation: ClassVar[tuple[float, float]] = (0.0, 1.0)

    @abstractmethod
    def open(self, options: Mapping[str, Any], context: SourceContext, *, task: str) -> TaskData:
        """The data ``options`` describe, for a model whose ``task:`` is ``task``."""

    def check(self, options: Mapping[str, Any], task: str) -> None:
        """Refuse bad ``options`` without reading any data (called when a study file is opened)."""

    def task_kind(self, task: str) -> str | None:
        """The kind a task name of this source implies (the digits' ``parity``); ``None`` if none."""
        return None

    def pretraining(self, options: Mapping[str, Any], kind: str, task: str) -> tuple[dict[str, Any], str]:
        """The data options and task that pretrain the backbone of a model on ``options`` of task kind ``kind``.

        ``task`` is the study's ``pretrain.task``; by default it is this source's task of that name,
        with no options (the digits demo's ``digit``, through a neutral camera).
        """
        return {}, task

    def drifted(self, options: Mapping[str, Any], changes: Mapping[str, float]) -> dict[str, Any]:
        """``options`` with a drift scenario's camera ``changes`` applied."""
        raise SearchmergeError(
            "camera changes need a source that renders its images through a camera (format: digits, video); for other"
            " data, give the drift scenario a data source of its own (models: {NAME: {data: {...}}})"
        )


def model_input(pixels: np.ndarray, normalisation: tuple[float, float]) -> np.ndarray:
    """8-bit pixels (H x W x C) as a model on a source of ``normalisation`` takes them (float32, C x H x W)."""
    mean, std = normalisation
    values = np.asarray(pixels, dtype=np.float32).reshape(pixels.shape[0], pixels.shape[1], -1) / 255.0
    return np.ascontiguousarray(((values - mean) / std).transpose(2, 0, 1), dtype=np.float32)


def pixels_of(image: np.ndarray, normalisation: tuple[float, float]) -> np.ndarray:
    """A model's input (C x H x W) back as 8-bit pixels (H x W x C): the inverse of :func:`model_input`."""
    mean, std = normalisation
    values = (np.asarray(image, dtype=np.float32) * std + mean) * 255.0
    return np.ascontiguousarray(np.clip(np.rint(values), 0, 255).astype(np.uint8).transpose(1, 2, 0))


def root_folder(options: Mapping[str, Any], context: SourceContext, where: str, layout: str) -> Path:
    """The existing folder ``options['root']`` names; ``layout`` says what it should hold."""
    if "root" not in options:
        raise SearchmergeError(f"{where}: needs 'root', the folder with {layout}")
    root = context.path(options["root"], f"{where}: root")
    if not root.is_dir():
        raise SearchmergeError(f"{where}: folder {str(root)!r} does not exist")
    return root


def digest(value: Any) -> str:
    """A short SHA-256 of a JSON-able value."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:32]


def file_identity(paths: Iterable[Path], root: Path) -> list[tuple[str, int, int]]:
    """Each file as (path under ``root``, size, modification time in ns): what changes when it does."""
    identity = []
    for path in paths:
        stat = path.stat()
        identity.append((path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
    return identity


def subsample_indices(count: int, labels: np.ndarray | None, fraction: float, *, seed: int) -> np.ndarray:
    """A seeded subset of ``range(count)``, stratified by ``labels`` when given, in ascending order.

    Retraining candidate plans on a fraction of the data is what makes the search
    affordable; keeping every class in proportion (at least one sample each) keeps the
    metric of the subsample comparable with the full one.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
        raise SearchmergeError(f"fraction must be a number in (0, 1], got {fraction!r}")
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(count, size=max(1, round(fraction * count)), replace=False))
    keep = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        keep.append(rng.choice(members, size=max(1, round(fraction * len(members))), replace=False))
    return np.sort(np.concatenate(keep)) if keep else np.empty(0, np.int64)


def subsample(data: TaskData, split: str, fraction: float, *, seed: int) -> Dataset[Any]:
    """``split`` of ``data`` itself when ``fraction`` is 1, else a seeded (stratified) index subset of it."""
    dataset = getattr(data, split)
    if fraction >= 1:
        return dataset
    indices = subsample_indices(len(dataset), data.class_labels(split), fraction, seed=seed)
    return Subset(dataset, indices.tolist())


def check_boxes(where: str, boxes: torch.Tensor, labels: torch.Tensor, *, height: int, width: int) -> None:
    """Boxes inside the image with a positive size, labels 1 or more (0 is the background)."""
    for box, label in zip(boxes.tolist(), labels.tolist()):
        x1, y1, x2, y2 = box
        if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
            raise SearchmergeError(
                f"{where}: box {[round(v, 2) for v in box]} is not inside the {width}x{height} image"
            )
        if label < 1:
            raise SearchmergeError(f"{where}: label {label} is the background (object classes are 1 and up)")
