"""COCO-format detection data: per split an images folder and a COCO JSON file.

Layout::

    root/train.json   root/train/<file_name of each image>
    root/val.json     root/val/...
    root/test.json    root/test/...          (optional; without it val is the test split)

Each JSON file has ``images`` (``id``, ``file_name``, ``width``, ``height``),
``annotations`` (``image_id``, ``category_id``, ``bbox`` as x, y, width, height in
pixels; ``iscrowd: 1`` ones are skipped) and ``categories``. A box's label is its
``category_id``, as torchvision's COCO models use it: ids start at 1 (0 is the
background) and a model is built with ``num_classes`` above the largest id.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from searchmerge.core.errors import SearchmergeError
from searchmerge.data.sources.base import (
    Source,
    SourceContext,
    SplitData,
    TaskData,
    check_boxes,
    digest,
    file_identity,
    root_folder,
)
from searchmerge.data.sources.images import ImageReader, image_size_option
from searchmerge.data.sources.yolo import NormalisedBoxImages

__all__ = ["CocoSource", "read_coco_split"]


def read_coco_split(
    annotations: Path, images: Path
) -> tuple[list[Path], list[torch.Tensor], list[torch.Tensor]]:
    """The image files of one split, and per image its boxes (as shares of the image) and labels."""
    where = f"COCO file {str(annotations)!r}"
    try:
        document = json.loads(annotations.read_text())
        entries = {int(e["id"]): e for e in document["images"]}
        objects = document.get("annotations", [])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SearchmergeError(f"{where} is not a COCO annotation file: {exc}") from None
    boxes: dict[int, list[list[float]]] = {key: [] for key in entries}
    labels: dict[int, list[int]] = {key: [] for key in entries}
    for index, entry in enumerate(objects):
        try:
            if entry.get("iscrowd", 0):
                continue
            image = entries[int(entry["image_id"])]
            x, y, w, h = (float(v) for v in entry["bbox"])
            label = int(entry["category_id"])
            width, height = int(image["width"]), int(image["height"])
        except (KeyError, ValueError, TypeError) as exc:
            raise SearchmergeError(f"{where}: annotation #{index + 1} is malformed ({exc!r})") from None
        box = torch.tensor([[x, y, x + w, y + h]])
        check_boxes(f"{where}, annotation #{index + 1}", box, torch.tensor([label]), height=height, width=width)
        boxes[int(entry["image_id"])].append([x / width, y / height, (x + w) / width, (y + h) / height])
        labels[int(entry["image_id"])].append(label)
    files = []
    for key, entry in entries.items():
        path = images / str(entry.get("file_name", ""))
        if not path.is_file():
            raise SearchmergeError(f"{where}: image {str(path)!r} (id {key}) does not exist")
        files.append(path)
    return (
        files,
        [torch.tensor(boxes[key], dtype=torch.float32).reshape(-1, 4) for key in entries],
        [torch.tensor(labels[key], dtype=torch.int64) for key in entries],
    )


class CocoSource(Source):
    """``format: coco``: ``root``, and optionally ``image_size``."""

    keys = frozenset({"root", "image_size"})
    kind = "detection"

    def open(self, options: Mapping[str, Any], context: SourceContext, *, task: str) -> TaskData:
        where = "data (coco)"
        root = root_folder(options, context, where, "train.json, train/, val.json, val/")
        reader = ImageReader(size=image_size_option(options.get("image_size"), where), cache_dir=context.cache_dir)
        datasets: dict[str, NormalisedBoxImages] = {}
        identity = {}
        for name in ("train", "val", "test"):
            annotations = root / f"{name}.json"
            if not annotations.is_file():
                if name == "test":
                    continue
                raise SearchmergeError(f"{where}: {str(annotations)!r} does not exist")
            files, boxes, labels = read_coco_split(annotations, root / name)
            if not files:
                raise SearchmergeError(f"{where}: split {name!r} ({str(annotations)!r}) has no images")
            datasets[name] = NormalisedBoxImages(tuple(files), tuple(boxes), tuple(labels), reader)
            identity[name] = file_identity([annotations, *files], root)
        datasets.setdefault("test", datasets["val"])
        most = max((int(lbl.max()) for d in datasets.values() for lbl in d.labels if len(lbl)), default=0)
        if most == 0:
            raise SearchmergeError(f"{where}: no split of {str(root)!r} has a single box")
        return SplitData(
            train=datasets["train"], val=datasets["val"], test=datasets["test"], kind="detection",
            num_classes=most + 1, fingerprint=digest({"format": "coco", "size": reader.size, "files": identity}),
            description=f"COCO data {str(root)!r}",
            objects={name: [lbl.numpy() for lbl in d.labels] for name, d in datasets.items()},
            split_fix=f"moving or adding annotated images with boxes of that class into the split's JSON file under"
                      f" {str(root)!r} (every split needs every class), or more data",
        )
