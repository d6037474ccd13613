"""Image folders for classification: ``train/``, ``val/`` and optional ``test/``, one sub-folder per class.

The layout torchvision's ``ImageFolder`` reads::

    root/train/cat/001.jpg      root/val/cat/...      root/test/cat/...   (test/ optional)
    root/train/dog/002.png      root/val/dog/...

Classes are the sub-folder names of ``train/`` in sorted order (class 0 first); ``val/``
and ``test/`` must have the same ones. Without ``test/`` the validation split is used as
the test split too. Images are resized to ``image_size`` (default: the size of the first
training image), scaled to [0, 1] and, with ``mean`` and ``std``, normalised.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from searchmerge.core.errors import SearchmergeError
from searchmerge.data.sources.base import (
    Source,
    SourceContext,
    SplitData,
    TaskData,
    digest,
    file_identity,
    root_folder,
)
from searchmerge.data.sources.images import (
    ImageReader,
    channel_values,
    image_files,
    image_size_of,
    image_size_option,
)

__all__ = ["ImageFolderSource", "LabelledImages"]


@dataclass(frozen=True, eq=False)
class LabelledImages(Dataset[tuple[torch.Tensor, int]]):
    """Image files with a class each, read one at a time."""

    files: tuple[Path, ...]
    labels: np.ndarray
    reader: ImageReader

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.reader(self.files[index]), int(self.labels[index])


class ImageFolderSource(Source):
    """``format: imagefolder``: ``root``, and optionally ``image_size``, ``mean``, ``std``."""

    keys = frozenset({"root", "image_size", "mean", "std"})
    kind = "classification"

    def open(self, options: Mapping[str, Any], context: SourceContext, *, task: str) -> TaskData:
        where = "data (imagefolder)"
        root = root_folder(options, context, where, "train/, val/ and optional test/")
        splits = {name: _class_folders(root / name) for name in ("train", "val", "test") if (root / name).is_dir()}
        for name in ("train", "val"):
            if name not in splits:
                raise SearchmergeError(f"{where}: folder {str(root / name)!r} does not exist (expected train/, val/"
                                       " and optional test/, one sub-folder per class)")
        classes = sorted(splits["train"])
        for name, folders in splits.items():
            if sorted(folders) != classes:
                raise SearchmergeError(
                    f"{where}: the class folders of {name}/ ({', '.join(sorted(folders))}) differ from those of"
                    f" train/ ({', '.join(classes)})"
                )
        if len(classes) < 2:
            raise SearchmergeError(f"{where}: {str(root / 'train')!r} has {len(classes)} class folder(s); it needs two")
        listed = {name: _listing(folders, classes) for name, folders in splits.items()}
        for name, (files, _) in listed.items():
            if not files:
                raise SearchmergeError(f"{where}: split {name!r} ({str(root / name)!r}) has no images")
        size = image_size_option(options.get("image_size"), where)
        reader = ImageReader(
            size=size or image_size_of(listed["train"][0][0]),
            mean=channel_values(options.get("mean"), where, "mean"),
            std=channel_values(options.get("std"), where, "std"),
            cache_dir=context.cache_dir,
        )
        if (reader.mean is None) != (reader.std is None):
            raise SearchmergeError(f"{where}: give both mean and std, or neither")
        datasets = {name: LabelledImages(tuple(files), labels, reader) for name, (files, labels) in listed.items()}
        datasets.setdefault("test", datasets["val"])
        fingerprint = digest({
            "format": "imagefolder", "size": reader.size, "mean": reader.mean, "std": reader.std, "classes": classes,
            "files": {name: file_identity(files, root) for name, (files, _) in listed.items()},
        })
        return SplitData(
            train=datasets["train"], val=datasets["val"], test=datasets["test"], kind="classification",
            num_classes=len(classes), fingerprint=fingerprint, description=f"image folder {str(root)!r}",
            labels={name: dataset.labels for name, dataset in datasets.items()},
            class_names=tuple(classes),
            split_fix=f"moving or adding images of that class into the split's class folder under {str(root)!r}"
                      " (every split needs every class), or more data",
        )


def _class_folders(folder: Path) -> dict[str, Path]:
    return {child.name: child for child in sorted(folder.iterdir()) if child.is_dir()}


def _listing(folders: Mapping[str, Path], classes: list[str]) -> tuple[list[Path], np.ndarray]:
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = image_files(folders[name])
        files += found
        labels += [label] * len(found)
    return files, np.asarray(labels, dtype=np.int64)

