"""Per-frame boxes of a video, as a teacher labelled it: COCO-style JSON or MOT-style CSV.

Footage from a fixed camera rarely comes with hand-made ground truth. Video-analytics
systems label it with a *teacher*, an expensive, accurate detector (or an annotator) whose
boxes on each frame are the truth that the cheap edge models are trained and scored against.
This module reads those boxes in the two formats teachers and trackers write:

* **COCO-style JSON** (``.json``): ``images`` with one entry per labelled frame, each with a
  ``frame_index`` (decoded frames counted from 0) and optionally ``width`` and ``height``
  (the size the boxes were drawn at, when not the video's); ``annotations`` with
  ``image_id``, ``category_id`` and ``bbox`` (x, y, width, height in pixels; ``iscrowd: 1``
  ones are skipped); ``categories`` with ``id`` and ``name``. Only the frames listed in
  ``images`` are labelled: a teacher may label every fifth frame.
* **MOT-style CSV** (``.csv``, ``.txt``): one line per box, ``frame, id, x, y, width,
  height[, conf, ...]`` with frames counted from 1 and boxes in pixels of the video, as the
  MOT challenge writes them. Every frame of the video is labelled (a frame without a line
  holds nobody); a line whose ``conf`` is 0 is an ignored box, as in MOT ground truth; every
  box is a ``person``.

Boxes are kept as shares of the frame (x1, y1, x2, y2 in [0, 1]).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from searchmerge.core.errors import SearchmergeError

__all__ = ["FrameLabels", "read_frame_labels"]

#: The one class of a MOT-style CSV file.
MOT_CLASS = "person"


@dataclass(frozen=True, eq=False)
class FrameLabels:
    """The boxes of every labelled frame.

    Attributes:
        classes: Class names; a box's class is an index into them.
        frames: The labelled frame indices, ascending.
        boxes: Per labelled frame, its boxes (N x 4: x1, y1, x2, y2 as shares of the frame).
        classes_of: Per labelled frame, the class index of each box (N).
    """

    classes: tuple[str, ...]
    frames: tuple[int, ...]
    boxes: dict[int, np.ndarray]
    classes_of: dict[int, np.ndarray]


def read_frame_labels(path: Path, frame_count: int, frame_size: tuple[int, int]) -> FrameLabels:
    """The labels file ``path`` for footage of ``frame_count`` frames of ``frame_size`` (height, width)."""
    if not path.is_file():
        raise SearchmergeError(f"labels file {str(path)!r} does not exist")
    if path.suffix.lower() == ".json":
        labels = _read_coco(path, frame_size)
    elif path.suffix.lower() in (".csv", ".txt"):
        labels = _read_mot(path, frame_count, frame_size)
    else:
        raise SearchmergeError(f"labels file {str(path)!r}: expected COCO-style .json or MOT-style .csv/.txt")
    if not labels.frames:
        raise SearchmergeError(f"labels file {str(path)!r} labels no frame")
    if labels.frames[-1] >= frame_count:
        raise SearchmergeError(
            f"labels file {str(path)!r} labels frame {labels.frames[-1]}, but the video has {frame_count} frames"
            f" (0 to {frame_count - 1})"
        )
    return labels


def _read_coco(path: Path, frame_size: tuple[int, int]) -> FrameLabels:
    where = f"labels file {str(path)!r}"
    try:
        document = json.loads(path.read_text())
        categories = {int(c["id"]): str(c["name"]) for c in document["categories"]}
        images = document["images"]
        annotations = document.get("annotations", [])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SearchmergeError(f"{where} is not a COCO-style labels file: {exc!r}") from None
    ids = sorted(categories)
    index_of = {category: position for position, category in enumerate(ids)}
    frame_of: dict[int, tuple[int, float, float]] = {}  # image id -> frame, width and height of its boxes
    for number, image in enumerate(images, start=1):
        try:
            frame = int(image["frame_index"])
            key = int(image["id"])
            width, height = float(image.get("width", frame_size[1])), float(image.get("height", frame_size[0]))
        except (KeyError, ValueError, TypeError) as exc:
            raise SearchmergeError(f"{where}: image #{number} needs an 'id' and a 'frame_index' ({exc!r})") from None
        if frame < 0 or width <= 0 or height <= 0:
            raise SearchmergeError(f"{where}: image #{number} has frame_index {frame} (from 0) and size"
                                   f" {width}x{height}")
        frame_of[key] = (frame, width, height)
    frames = sorted(frame for frame, _, _ in frame_of.values())
    repeated = next((a for a, b in zip(frames, frames[1:]) if a == b), None)
    if repeated is not None:
        raise SearchmergeError(f"{where}: frame {repeated} is labelled by two images")
    rows: dict[int, list[tuple[list[float], int]]] = {frame: [] for frame in frames}
    for number, entry in enumerate(annotations, start=1):
        try:
            if entry.get("iscrowd", 0):
                continue
            frame, width, height = frame_of[int(entry["image_id"])]
            category = int(entry["category_id"])
            x, y, w, h = (float(v) for v in entry["bbox"])
        except (KeyError, ValueError, TypeError) as exc:
            raise SearchmergeError(f"{where}: annotation #{number} is malformed ({exc!r})") from None
        if category not in index_of:
            known = ", ".join(f"{i}: {categories[i]}" for i in ids)
            raise SearchmergeError(f"{where}: annotation #{number} has category_id {category}, an unknown class"
                                   f" (categories: {known})")
        rows[frame].append((_share(where, f"annotation #{number}", x, y, w, h, width, height), index_of[category]))
    return _labels(tuple(categories[i] for i in ids), rows)


def _read_mot(path: Path, frame_count: int, frame_size: tuple[int, int]) -> FrameLabels:
    where = f"labels file {str(path)!r}"
    rows: dict[int, list[tuple[list[float], int]]] = {frame: [] for frame in range(frame_count)}
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SearchmergeError(f"cannot read {where}: {exc}") from None
    for number, fields in enumerate(csv.reader(lines), start=1):
        if not fields or not "".join(fields).strip():
            continue
        try:
            if len(fields) < 6:
                raise ValueError
            frame = int(float(fields[0])) - 1
            x, y, w, h = (float(v) for v in fields[2:6])
            conf = float(fields[6]) if len(fields) > 6 else 1.0
        except ValueError:
            raise SearchmergeError(f"{where}, line {number}: expected 'frame, id, x, y, width, height[, conf, ...]',"
                                   f" got {','.join(fields)!r}") from None
        if frame < 0:
            raise SearchmergeError(f"{where}, line {number}: frame {frame + 1} (MOT frames count from 1)")
        if frame >= frame_count:
            raise SearchmergeError(f"{where}, line {number}: frame {frame + 1} is past the end of the video"
                                   f" ({frame_count} frames, counted from 1)")
        if conf == 0:
            continue
        rows[frame].append((_share(where, f"line {number}", x, y, w, h, frame_size[1], frame_size[0]), 0))
    return _labels((MOT_CLASS,), rows)


def _share(where: str, what: str, x: float, y: float, w: float, h: float, width: float, height: float) -> list[float]:
    """A pixel box (x, y, w, h) as shares of its image (x1, y1, x2, y2), clipped; one outside is refused."""
    box = [x / width, y / height, (x + w) / width, (y + h) / height]
    tolerance = 1e-3
    if not (w > 0 and h > 0 and all(-tolerance <= v <= 1 + tolerance for v in box)):
        raise SearchmergeError(f"{where}, {what}: box {[x, y, w, h]} (x, y, width, height) is not inside the"
                               f" {width:g}x{height:g} frame with a positive size")
    return [min(max(v, 0.0), 1.0) for v in box]


def _labels(classes: tuple[str, ...], rows: dict[int, list[tuple[list[float], int]]]) -> FrameLabels:
    boxes: dict[int, Any] = {}
    classes_of: dict[int, Any] = {}
    for frame, found in rows.items():
        boxes[frame] = np.asarray([box for box, _ in found], dtype=np.float32).reshape(-1, 4)
        classes_of[frame] = np.asarray([label for _, label in found], dtype=np.int64)
    return FrameLabels(classes, tuple(sorted(rows)), boxes, classes_of)
