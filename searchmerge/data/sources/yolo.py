"""YOLO-format detection data: ``{train,val[,test]}/images/*`` and ``{...}/labels/*.txt``.

Each label file has the name of its image with ``.txt`` and one line per object::

    class x_center y_center width height        (all but the class normalised to [0, 1])

An image without a label file has no objects. YOLO counts classes from 0 and torchvision
detectors keep 0 for the background, so class ``c`` becomes label ``c + 1`` and a model
for K classes is built with ``num_classes: K + 1``. ``classes: K`` states K when a split
may not show the last class. Images keep their size unless ``image_size`` is given (boxes
are scaled with them); the detector resizes them itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from searchmerge.data.sources.images import ImageReader, image_files, image_size_option

__all__ = ["NormalisedBoxImages", "YoloSource", "parse_label_file"]


@dataclass(frozen=True, eq=False)
class NormalisedBoxImages(Dataset[tuple[torch.Tensor, dict[str, torch.Tensor]]]):
    """Images with boxes given as shares of the image (x1, y1, x2, y2 in [0, 1]); pixels when read."""

    files: tuple[Path, ...]
    boxes: tuple[torch.Tensor, ...]
    labels: tuple[torch.Tensor, ...]
    reader: ImageReader

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image = self.reader(self.files[index])
        height, width = image.shape[1:]
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        return image, {"boxes": self.boxes[index] * scale, "labels": self.labels[index].clone()}


def parse_label_file(path: Path, classes: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The boxes (x1, y1, x2, y2 as shares of the image) and labels (class + 1) of one label file."""
    rows: list[list[float]] = []
    labels: list[int] = []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SearchmergeError(f"cannot read label file {str(path)!r}: {exc}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"label file {str(path)!r}, line {number}"
        fields = line.split()
        try:
            if len(fields) != 5:
                raise ValueError
            cls = int(fields[0])
            xc, yc, w, h = (float(v) for v in fields[1:])
        except ValueError:
            raise SearchmergeError(f"{where}: expected 'class x_center y_center width height', got {line.strip()!r}") from None
        if cls < 0 or (classes is not None and cls >= classes):
            bound = f"0..{classes - 1}" if classes is not None else "0 or more"
            raise SearchmergeError(f"{where}: class {cls} is not in {bound}")
        box = [xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2]
        if not (w > 0 and h > 0 and all(-1e-6 <= v <= 1 + 1e-6 for v in box)):
            raise SearchmergeError(f"{where}: box {line.split(maxsplit=1)[1].strip()!r} is not inside the image"
                                   " (normalised coordinates must stay within [0, 1] with a positive size)")
        rows.append([min(max(v, 0.0), 1.0) for v in box])
        labels.append(cls + 1)
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4), torch.tensor(labels, dtype=torch.int64)


class YoloSource(Source):
    """``format: yolo``: ``root``, and optionally ``image_size`` and ``classes``."""

    keys = frozenset({"root", "image_size", "classes"})
    kind = "detection"

    def open(self, options: Mapping[str, Any], context: SourceContext, *, task: str) -> TaskData:
        where = "data (yolo)"
        root = root_folder(options, context, where, "train/, val/ and optional test/")
        classes = options.get("classes")
        if classes is not None and (isinstance(classes, bool) or not isinstance(classes, int) or classes < 1):
            raise SearchmergeError(f"{where}: classes must be a positive integer, got {classes!r}")
        reader = ImageReader(size=image_size_option(options.get("image_size"), where), cache_dir=context.cache_dir)
        datasets: dict[str, NormalisedBoxImages] = {}
        identity = {}
        for name in ("train", "val", "test"):
            images = root / name / "images"
            if not images.is_dir():
                if name == "test":
                    continue
                raise SearchmergeError(f"{where}: folder {str(images)!r} does not exist (expected"
                                       " {train,val[,test]}/images/ and .../labels/)")
            files = image_files(images)
            if not files:
                raise SearchmergeError(f"{where}: split {name!r} ({str(images)!r}) has no images")
            label_files = [root / name / "labels" / f"{f.stem}.txt" for f in files]
            parsed = [parse_label_file(p, classes) if p.is_file() else _no_objects() for p in label_files]
            datasets[name] = NormalisedBoxImages(
                tuple(files), tuple(b for b, _ in parsed), tuple(lbl for _, lbl in parsed), reader
            )
            identity[name] = file_identity(files + [p for p in label_files if p.is_file()], root)
        datasets.setdefault("test", datasets["val"])
        most = max((int(lbl.max()) for d in datasets.values() for lbl in d.labels if len(lbl)), default=0)
        if most == 0:
            raise SearchmergeError(f"{where}: no split of {str(root)!r} has a single box")
        fingerprint = digest({"format": "yolo", "size": reader.size, "classes": classes, "files": identity})
        return SplitData(
            train=datasets["train"], val=datasets["val"], test=datasets["test"], kind="detection",
            num_classes=most + 1 if classes is None else classes + 1,
            fingerprint=fingerprint, description=f"YOLO data {str(root)!r}",
            objects={name: [lbl.numpy() for lbl in d.labels] for name, d in datasets.items()},
            split_fix=f"moving or adding labelled images with boxes of that class into the split under {str(root)!r}"
                      " (every split needs every class), or more data",
        )


def _no_objects() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
