"""Video footage with teacher labels: ``format: video``, one virtual camera per region.

A study file declares its footage once, in a top-level ``video:`` section, and each model
asks a question about one region of it::

    video:
      source: campus/campus.mp4            # a file PyAV decodes, or a folder of frame images
      labels: campus/campus-boxes.json     # COCO-style JSON with frame indices, or MOT-style CSV
      split: {train: 0.6, val: 0.2, test: 0.2}   # contiguous in time, in this order
    models:
      - name: west-presence
        arch: resnet18
        kwargs: {num_classes: 2}
        task: classification
        data: {format: video, region: [0.0, 0.15, 0.4, 0.75], query: presence, image_size: 64}

A region (x0, y0, x1, y1, shares of the frame) is a camera of its own: its frames are the
crops of that region, resized to ``image_size``. The query makes the labels from the
teacher's boxes (:mod:`searchmerge.data.sources.frame_labels`) of ``classes`` (default: every
class of the labels file):

* ``presence``: class 1 when anybody is in the region, else 0 (2 classes);
* ``count``: how many are in it, binned by ``bins``, the increasing lower edges of the
  classes starting at 0 (``[0, 1, 3, 6]``: nobody, 1-2, 3-5, 6 or more); without ``bins``
  every count up to the largest in the footage is a class of its own;
* ``detection``: the boxes in the region, clipped to it, in pixels of the crop; a box's
  label is its class's position in ``classes`` plus 1 (0 is the background).

**Partly visible people.** A box is in a region when its centre is: a person half out of the
region counts (and is clipped to it, for a detector) when more of them is inside than out,
and regions that tile the frame count each person exactly once.

**Splits by time.** The labelled frames (every ``stride``-th of them) are cut into train,
validation and test in time order, never shuffled: neighbouring frames are near duplicates,
so a random split would score the models on copies of their training frames. With
``split: {mode: blocks, block: N}`` (shares as above, default 0.6/0.2/0.2) the same cut is made
in every block of N frames used, so every split sees every part of the footage (people who
appear only mid-video reach validation and test too); the price is a boundary between
neighbouring, near-duplicate frames in every block (see docs/video.md).

Video models without weights are made by the study's recipe: each architecture is
pretrained once on the footage's whole frame (classifiers count the people in it, one class
per count; detectors detect them), then fine-tuned per region.

Drift: ``brightness``, ``noise_std`` and ``blur_sigma`` add to a model's ``camera:`` and
``contrast`` multiplies it (the evening: darker, flatter, noisier frames); ``pan`` and ``tilt``
move its region right and down by that share of the frame (a camera nudged; what leaves the
frame is cut off). The footage stays the same frames: a scenario changes how they are seen.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from searchmerge.core.errors import SearchmergeError
from searchmerge.core.keys import check_keys
from searchmerge.data.sources.base import (
    SPLITS,
    Source,
    SourceContext,
    SplitData,
    TaskData,
    digest,
    file_identity,
)
from searchmerge.data.sources.frame_labels import FrameLabels, read_frame_labels
from searchmerge.data.sources.frames import Crops, Footage, PixelBox, crop_frame
from searchmerge.data.sources.images import image_size_option

__all__ = ["FOOTAGE_KEYS", "QUERIES", "CameraDrift", "Look", "RegionFrames", "RegionQuestion", "VideoSource"]

#: The keys of the top-level ``video:`` section; a model's ``data:`` may override each.
FOOTAGE_KEYS = ("source", "labels", "split", "stride", "image_size")
#: What a model may ask about its region, and the task kind of the answer.
QUERIES = {"presence": "classification", "count": "classification", "detection": "detection"}
#: The default split: contiguous in time, in this order.
DEFAULT_SPLIT = {"train": 0.6, "val": 0.2, "test": 0.2}
#: How the labelled frames may be cut: one cut in time, or the same cut in every block of frames.
SPLIT_MODES = ("time", "blocks")
#: Frames used (after ``stride``) per block of ``split: {mode: blocks}``.
DEFAULT_BLOCK = 50
#: Camera changes that move the region (shares of the frame) rather than change the picture.
POSE_CHANGES = ("pan", "tilt")


@dataclass(frozen=True)
class Look:
    """How a camera renders its frames; every default leaves them unchanged.

    Applied in the order light goes through a camera: the lens (``blur_sigma``, pixels of the
    crop), exposure (``contrast`` around each frame's mean, then ``brightness`` added, on the
    [0, 1] scale), the sensor (Gaussian ``noise_std``, drawn per frame from the seed), then
    clipped to [0, 1].
    """

    brightness: float = 0.0
    contrast: float = 1.0
    noise_std: float = 0.0
    blur_sigma: float = 0.0

    @classmethod
    def from_options(cls, value: Any, where: str) -> Look:
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise SearchmergeError(f"{where}: camera must be a mapping of {', '.join(_look_fields())}, got {value!r}")
        check_keys(f"{where}, camera", value, _look_fields())
        for key, number in value.items():
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
                raise SearchmergeError(f"{where}: camera {key!r} must be a number, got {number!r}")
        look = cls(**{k: float(v) for k, v in value.items()})
        if look.contrast <= 0 or look.noise_std < 0 or look.blur_sigma < 0:
            raise SearchmergeError(f"{where}: camera needs contrast > 0, noise_std >= 0 and blur_sigma >= 0,"
                                   f" got {dataclasses.asdict(look)}")
        return look

    def changed(self, changes: Mapping[str, float]) -> dict[str, float]:
        """This look with drift ``changes``: offsets add, contrast multiplies."""
        values = dataclasses.asdict(self)
        for key, change in changes.items():
            values[key] = values[key] * change if key == "contrast" else values[key] + change
        return values

    @property
    def is_neutral(self) -> bool:
        return self == Look()

    def apply(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        """``image`` (3 x H x W in [0, 1]) as this camera sees it; the noise is drawn from ``seed``."""
        if self.is_neutral:
            return image
        if self.blur_sigma:
            from torchvision.transforms.v2.functional import gaussian_blur

            radius = max(1, math.ceil(3 * self.blur_sigma))
            image = gaussian_blur(image, [2 * radius + 1] * 2, [self.blur_sigma] * 2)
        if self.contrast != 1.0:
            image = (image - image.mean()) * self.contrast + image.mean()
        image = image + self.brightness
        if self.noise_std:
            noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(seed))
            image = image + self.noise_std * noise
        return image.clamp_(0.0, 1.0)


@dataclass(frozen=True)
class CameraDrift:
    """A drift scenario applied to a camera's whole frame, as a real camera would show it.

    The video source simulates drift on each model's crop (its look) and by moving its region
    (``pan``, ``tilt``). An edge whose camera streams are told to drift (``searchmerge edge
    --drift``) changes the whole frame instead, before any model crops it, because the whole
    frame is what it sends to the service's teacher: the look is applied to the frame (its
    contrast around the whole frame's mean), and a camera knocked by ``pan``/``tilt`` shows the
    scene shifted the other way, with black where the sensor sees past the old frame's edge.
    The noise of a frame is drawn from the seed and the frame's index, as in the simulation.
    """

    look: Look = Look()
    pan: float = 0.0
    tilt: float = 0.0

    @classmethod
    def from_changes(cls, changes: Sequence[Mapping[str, float]], where: str) -> CameraDrift:
        """The drift of ``changes`` applied in turn (a scenario's common changes, then the model's own)."""
        look, pan, tilt = Look(), 0.0, 0.0
        for change in changes:
            unknown = sorted(set(change) - {*_look_fields(), *POSE_CHANGES})
            if unknown:
                raise SearchmergeError(f"{where}: a camera has no {', '.join(unknown)}; its drift changes are"
                                       f" {', '.join(_look_fields())} (the picture) and pan, tilt (the view moves)")
            pan, tilt = pan + change.get("pan", 0.0), tilt + change.get("tilt", 0.0)
            look = Look.from_options(look.changed({k: v for k, v in change.items() if k not in POSE_CHANGES}), where)
        if not (abs(pan) < 1 and abs(tilt) < 1):
            raise SearchmergeError(f"{where}: pan {pan} and tilt {tilt} move the view out of the frame")
        return cls(look, pan, tilt)

    def apply(self, pixels: np.ndarray, seed: int, frame: int) -> np.ndarray:
        """The camera's frame ``frame`` (H x W x 3, 8-bit) in this drift; ``seed`` is the study's."""
        image = torch.from_numpy(np.array(pixels, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
        image = self.look.apply(image, _frame_seed(seed, frame))
        shifted = torch.zeros_like(image)
        height, width = image.shape[1:]
        dx, dy = round(self.pan * width), round(self.tilt * height)
        shifted[:, max(0, -dy):height - max(0, dy), max(0, -dx):width - max(0, dx)] = \
            image[:, max(0, dy):height - max(0, -dy), max(0, dx):width - max(0, -dx)]
        return shifted.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def _look_fields() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(Look))


@dataclass(frozen=True, eq=False)
class RegionFrames(Dataset[tuple[torch.Tensor, Any]]):
    """The frames of one split seen by one virtual camera, with their labels; read one at a time.

    Attributes:
        crops: The region's crops of every frame the model uses.
        rows: This split's rows of ``crops``, in time order.
        frames: The frame index of each row (seeds the camera's noise).
        targets: Per row, a class (presence, count) or a box dict (detection).
        look: How the camera renders the frames.
        seed: The study's (or drift scenario's) seed.
    """

    crops: Crops
    rows: np.ndarray
    frames: np.ndarray
    targets: Sequence[Any]
    look: Look
    seed: int

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        pixels = torch.from_numpy(self.crops[int(self.rows[index])]).permute(2, 0, 1).float().div_(255.0)
        image = self.look.apply(pixels, _frame_seed(self.seed, int(self.frames[index])))
        target = self.targets[index]
        if isinstance(target, dict):
            return image, {key: value.clone() for key, value in target.items()}
        return image, int(target)


class VideoSource(Source):
    """``format: video``: ``region``, ``query``, ``classes``, ``bins``, ``camera``, and the footage keys."""

    keys = frozenset({"region", "query", "classes", "bins", "camera", *FOOTAGE_KEYS})
    makes_originals = True

    def check(self, options: Mapping[str, Any], task: str) -> None:
        where = "data (video)"
        _region(options.get("region"), where)
        Look.from_options(options.get("camera"), where)
        query = options.get("query")
        if query is None:
            return  # pretraining, or a model whose query is refused when its data is opened
        if query not in QUERIES:
            raise SearchmergeError(f"{where}: query must be one of {', '.join(QUERIES)}, got {query!r}")
        if task in ("classification", "detection") and QUERIES[query] != task:
            raise SearchmergeError(f"{where}: query {query!r} gives {QUERIES[query]} labels, but the model's task"
                                   f" is {task}")
        _bins(options.get("bins"), where)
        _class_names(options.get("classes"), where)
        if "split" in options:
            _split(options["split"], where)

    def pretraining(self, options: Mapping[str, Any], kind: str, task: str) -> tuple[dict[str, Any], str]:
        """The whole frame of the model's footage: count the people (classifiers), or detect them."""
        footage = {key: options[key] for key in (*FOOTAGE_KEYS, "classes") if key in options}
        if kind == "detection":
            return {**footage, "query": "detection"}, "detection"
        return {**footage, "query": "count"}, "classification"

    def drifted(self, options: Mapping[str, Any], changes: Mapping[str, float]) -> dict[str, Any]:
        where = "data (video)"
        known = (*_look_fields(), *POSE_CHANGES)
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise SearchmergeError(
                f"{where}: a video camera has no {', '.join(unknown)}; its drift changes are brightness, contrast,"
                " noise_std, blur_sigma (the picture) and pan, tilt (the region moves by that share of the frame)"
            )
        x0, y0, x1, y1 = _region(options.get("region"), where)
        pan, tilt = changes.get("pan", 0.0), changes.get("tilt", 0.0)
        region = [min(max(v, 0.0), 1.0) for v in (x0 + pan, y0 + tilt, x1 + pan, y1 + tilt)]
        if region[2] <= region[0] or region[3] <= region[1]:
            raise SearchmergeError(f"{where}: pan {pan}, tilt {tilt} move region {[x0, y0, x1, y1]} out of the frame")
        look = Look.from_options(options.get("camera"), where)
        camera = look.changed({k: v for k, v in changes.items() if k not in POSE_CHANGES})
        return {**options, "region": region, "camera": camera}

    def question(self, options: Mapping[str, Any], context: SourceContext, *, task: str) -> RegionQuestion:
        """What a model on ``options`` asks of each frame, read without decoding any frame.

        The merging service labels the frames an edge sends with it (a teacher's boxes in,
        the model's target and input out), exactly as :meth:`open` labels the footage.
        """
        return self._resolve(options, context, task)[0]

    def _resolve(
        self, options: Mapping[str, Any], context: SourceContext, task: str
    ) -> tuple[RegionQuestion, Footage, FrameLabels, Mapping[str, Any]]:
        where = "data (video)"
        section = context.defaults.get("video") or {}
        if not isinstance(section, Mapping):
            raise SearchmergeError(f"video must be a mapping of {', '.join(FOOTAGE_KEYS)}, got {section!r}")
        check_keys("video", section, FOOTAGE_KEYS)
        merged = {**section, **options}
        self.check(merged, task)
        for key in ("source", "labels"):
            if key not in merged:
                raise SearchmergeError(f"{where}: needs '{key}' (in the study file's video: section or the model's"
                                       " data:)")
        query = str(merged.get("query") or "")
        if query not in QUERIES:
            raise SearchmergeError(f"{where}: needs a query: {', '.join(QUERIES)}")
        footage = Footage.probe(context.path(merged["source"], f"{where}: source"))
        labels_path = context.path(merged["labels"], f"{where}: labels")
        labels = read_frame_labels(labels_path, footage.frame_count, (footage.height, footage.width))
        wanted = _class_names(merged.get("classes"), where) or labels.classes
        missing = [name for name in wanted if name not in labels.classes]
        if missing:
            raise SearchmergeError(f"{where}: class {missing[0]!r} is not in the labels file {str(labels_path)!r}"
                                   f" (its classes: {', '.join(labels.classes)})")
        stride = merged.get("stride", 1)
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise SearchmergeError(f"{where}: stride must be a positive integer (use every stride-th labelled frame),"
                                   f" got {stride!r}")
        region = _region(merged.get("region"), where)
        box = _pixels(region, footage, where)
        size = image_size_option(merged.get("image_size"), where)
        bins = _bins(merged.get("bins"), where)
        if query == "count" and bins is None:  # every count the footage holds is a class of its own
            everybody = RegionQuestion(box, (footage.height, footage.width), query, wanted, [0], (1, 1), resize=False)
            most = max(len(everybody.inside(_pixel_boxes(labels, f, footage), labels.classes_of[f], labels.classes)[0])
                       for f in labels.frames[::stride])
            bins = list(range(1 + most))
        height, width = size or (box[3] - box[1], box[2] - box[0])
        question = RegionQuestion(box, (footage.height, footage.width), query, wanted, bins, (height, width),
                                  resize=size is not None)
        return question, footage, labels, merged

    def open(self, options: Mapping[str, Any], context: SourceContext, *, task: str) -> TaskData:
        where = "data (video)"
        question, footage, labels, merged = self._resolve(options, context, task)
        query, wanted, bins, box = question.query, question.classes, question.bins, question.box
        region = _region(merged.get("region"), where)
        height, width = question.size
        size = question.size if question.resize else None
        stride = merged.get("stride", 1)
        frames = np.asarray(labels.frames[::stride], dtype=np.int64)
        rule = _split(merged.get("split", DEFAULT_SPLIT), where)
        parts = _cut(rule, len(frames), where)
        labels_path = context.path(merged["labels"], f"{where}: labels")
        targets = [question.target(_pixel_boxes(labels, int(f), footage), labels.classes_of[int(f)], labels.classes)
                   for f in frames]
        look = Look.from_options(merged.get("camera"), where)
        crops = footage.crops(box, size, frames.tolist(), context.cache_dir)
        splits = {
            name: RegionFrames(crops, rows, frames[rows], [targets[r] for r in rows], look, context.seed)
            for name, rows in parts.items()
        }
        kind = QUERIES[query]
        fingerprint = digest({
            "format": "video", "footage": footage.identity, "labels": file_identity([labels_path], labels_path.parent),
            "box": box, "size": [height, width], "query": query, "classes": wanted, "bins": bins, "stride": stride,
            "split": {name: len(rows) for name, rows in parts.items()}, "look": dataclasses.asdict(look),
            "seed": context.seed if look.noise_std else None,
            **({"split_blocks": rule.block} if rule.mode == "blocks" else {}),  # time splits keep their old fingerprint
        })
        return SplitData(
            train=splits["train"], val=splits["val"], test=splits["test"], kind=kind,
            num_classes=len(wanted) + 1 if kind == "detection" else (2 if query == "presence" else len(bins or ())),
            fingerprint=fingerprint,
            description=f"video {str(footage.path)!r}, region {list(region)}, {query}",
            labels={name: np.asarray(d.targets, dtype=np.int64) for name, d in splits.items()}
            if kind == "classification" else {},
            objects={name: [t["labels"].numpy() for t in d.targets] for name, d in splits.items()}
            if kind == "detection" else {},
            class_names=_class_labels(query, bins, wanted),
            split_fix=_split_fix(rule, len(frames)),
        )


@dataclass(frozen=True)
class RegionQuestion:
    """What one model asks about its region of each frame, and what it sees of the frame.

    Attributes:
        box: The region in pixels of the frame (left, top, right, bottom).
        frame_size: The frame's (height, width) in pixels.
        query: ``presence``, ``count`` or ``detection``.
        classes: The class names the query is about.
        bins: The lower edges of the count classes (``count``).
        size: The (height, width) of the model's input.
        resize: Whether the region's crop is resized to ``size`` (else it is that size already).
    """

    box: PixelBox
    frame_size: tuple[int, int]
    query: str
    classes: tuple[str, ...]
    bins: list[int] | None
    size: tuple[int, int]
    resize: bool = True

    def inside(self, boxes: np.ndarray, classes: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Of ``boxes`` (frame pixels) of ``classes`` (indices into ``names``), those of the asked classes whose
        centre is in the region, and their position in :attr:`classes`."""
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        found = [names[int(c)] for c in np.asarray(classes).reshape(-1)]
        keep = np.asarray([name in self.classes for name in found], dtype=bool).reshape(-1)
        centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        left, top, right, bottom = self.box
        keep &= (centre_x >= left) & (centre_x < right) & (centre_y >= top) & (centre_y < bottom)
        positions = [self.classes.index(name) for name, kept in zip(found, keep) if kept]
        return boxes[keep], np.asarray(positions, dtype=np.int64)

    def target(self, boxes: np.ndarray, classes: np.ndarray, names: Sequence[str]) -> Any:
        """The label of a frame whose teacher boxes (frame pixels) are ``boxes`` of ``classes`` (indices into
        ``names``): a class (presence, count) or a box dict in pixels of the model's input (detection)."""
        boxes, positions = self.inside(boxes, classes, names)
        if self.query == "presence":
            return int(len(boxes) > 0)
        if self.query == "count":
            return int(np.searchsorted(np.asarray(self.bins), len(boxes), side="right") - 1)
        left, top, right, bottom = self.box
        height, width = self.size
        scale = np.asarray([width / (right - left), height / (bottom - top)] * 2, dtype=np.float32)
        shifted = (boxes - np.asarray([left, top, left, top], dtype=np.float32)) * scale
        shifted = np.clip(shifted, 0.0, np.asarray([width, height] * 2, dtype=np.float32))
        return {"boxes": torch.from_numpy(shifted).reshape(-1, 4), "labels": torch.from_numpy(positions + 1)}

    def view(self, frame: np.ndarray) -> np.ndarray:
        """What the model sees of a whole ``frame`` (H x W x 3, 8-bit): the region's crop at its input size."""
        return crop_frame(frame, self.box, self.size if self.resize else None)


def _pixel_boxes(labels: FrameLabels, frame: int, footage: Footage) -> np.ndarray:
    """The labelled boxes of ``frame`` in pixels of the footage."""
    return labels.boxes[frame] * np.asarray([footage.width, footage.height] * 2, dtype=np.float32)


def _region(value: Any, where: str) -> tuple[float, float, float, float]:
    """A region (x0, y0, x1, y1) as shares of the frame; the whole frame when not given."""
    if value is None:
        return (0.0, 0.0, 1.0, 1.0)
    if not isinstance(value, (list, tuple)) or len(value) != 4 or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        raise SearchmergeError(f"{where}: region must be [x0, y0, x1, y1] (shares of the frame), got {value!r}")
    x0, y0, x1, y1 = (float(v) for v in value)
    if not all(0.0 <= v <= 1.0 for v in (x0, y0, x1, y1)):
        raise SearchmergeError(f"{where}: region {list(value)} is not inside [0, 1] (shares of the frame)")
    if x1 <= x0 or y1 <= y0:
        raise SearchmergeError(f"{where}: region {list(value)} has zero area (it needs x0 < x1 and y0 < y1)")
    return (x0, y0, x1, y1)


def _pixels(region: tuple[float, float, float, float], footage: Footage, where: str) -> PixelBox:
    x0, y0, x1, y1 = region
    box = (round(x0 * footage.width), round(y0 * footage.height), round(x1 * footage.width), round(y1 * footage.height))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise SearchmergeError(f"{where}: region {list(region)} is less than a pixel of the"
                               f" {footage.width}x{footage.height} video")
    return box


def _bins(value: Any, where: str) -> list[int] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) < 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise SearchmergeError(f"{where}: bins must be two or more integer counts, got {value!r}")
    if value[0] != 0 or any(b <= a for a, b in zip(value, value[1:])):
        raise SearchmergeError(f"{where}: bins {list(value)} must start at 0 and be increasing (each the smallest"
                               " count of its class)")
    return list(value)


def _class_names(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
        raise SearchmergeError(f"{where}: classes must be a list of class names, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class _SplitRule:
    """How the labelled frames are cut: ``shares`` of each split, in one cut (``time``) or per block."""

    shares: Mapping[str, float]
    mode: str = "time"
    block: int = 0


def _split(value: Any, where: str) -> _SplitRule:
    if not isinstance(value, Mapping):
        raise SearchmergeError(f"{where}: split must be {{train: F, val: F, test: F[, mode: time | blocks, block: N]}},"
                               f" got {value!r}")
    check_keys(f"{where}, split", value, (*SPLITS, "mode", "block"))
    mode = value.get("mode", "time")
    if mode not in SPLIT_MODES:
        raise SearchmergeError(f"{where}: split mode must be one of {', '.join(SPLIT_MODES)}, got {mode!r}")
    block = value.get("block", DEFAULT_BLOCK if mode == "blocks" else 0)
    if "block" in value and mode != "blocks":
        raise SearchmergeError(f"{where}: split block is for mode: blocks (the time split makes one cut)")
    if isinstance(block, bool) or not isinstance(block, int) or (mode == "blocks" and block < 2):
        raise SearchmergeError(f"{where}: split block must be an integer of 2 or more (frames used per block),"
                               f" got {block!r}")
    if not any(name in value for name in SPLITS):
        value = {**DEFAULT_SPLIT, **value}  # {mode: blocks, block: N} keeps the default shares
    shares = {name: value.get(name) for name in SPLITS}
    for name, share in shares.items():
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
            raise SearchmergeError(f"{where}: split {name!r} must be a share in (0, 1), got {share!r}")
    if sum(shares.values()) > 1 + 1e-9:  # type: ignore[arg-type]
        raise SearchmergeError(f"{where}: split shares add up to {sum(shares.values()):g}, more than 1")  # type: ignore[arg-type]
    return _SplitRule(shares, mode, block)  # type: ignore[arg-type]


def _cut(rule: _SplitRule, count: int, where: str) -> dict[str, np.ndarray]:
    """Rows 0..count-1 cut into the splits in time order; a split left empty is refused.

    ``time``: one cut, the first share trains, the next validates, the last tests. ``blocks``:
    every ``block`` consecutive rows are cut that way, so every split holds rows from every part
    of the footage.
    """
    size = rule.block if rule.mode == "blocks" else count
    pieces: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    for first in range(0, count, max(size, 1)):
        rows = min(size, count - first)
        start, total = 0, 0.0
        for name in SPLITS:
            total += rule.shares[name]
            end = min(rows, round(total * rows))
            if end > start:
                pieces[name].append(np.arange(first + start, first + end))
            start = max(start, end)
    parts = {}
    for name in SPLITS:
        if not pieces[name]:
            blocks = f", in blocks of {rule.block}" if rule.mode == "blocks" else ""
            raise SearchmergeError(f"{where}: split {name!r} ({rule.shares[name]:g} of {count} frames{blocks}) gets no"
                                   " frame")
        parts[name] = np.concatenate(pieces[name])
    return parts


def _split_fix(rule: _SplitRule, count: int) -> str:
    """What to try when a split lacks a class: interleaved blocks, another ratio, more footage."""
    block = max(10, count // 10)
    if rule.mode != "blocks":
        return (f"split: {{mode: blocks, block: {block}}} (train, val and test cut from every block of {block} frames,"
                " so that each sees every part of the footage; see docs/video.md), another split ratio, or more"
                " footage with the missing class in every part")
    smaller = max(2, rule.block // 2)
    return (f"smaller blocks (split: {{mode: blocks, block: {smaller}}}, now {rule.block}), another split ratio, or more"
            " footage with the missing class")


def _class_labels(query: str, bins: list[int] | None, classes: Sequence[str]) -> tuple[str, ...]:
    """The name of each class of a query's answer, for messages."""
    if query == "presence":
        return ("nobody", "somebody")
    if query == "detection":
        return ("background", *classes)
    edges = list(bins or ())
    names = [f"count {low}" if high - low == 1 else f"count {low}-{high - 1}" for low, high in _pairs(edges)]
    return (*names, f"count {edges[-1]}+") if edges else ()


def _pairs(values: list[int]) -> list[tuple[int, int]]:
    return [(values[i], values[i + 1]) for i in range(len(values) - 1)]


def _frame_seed(seed: int, frame: int) -> int:
    """The camera noise of a frame: the same in every process and every read."""
    return int.from_bytes(hashlib.sha256(f"video-look:{seed}:{frame}".encode()).digest()[:8], "big") >> 1
