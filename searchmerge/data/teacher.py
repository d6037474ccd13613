"""Teachers: the models that label frames, and the COCO-style labels they write.

Footage from a fixed camera rarely comes with ground truth; a *teacher*, an accurate
detector too expensive for the edge, labels it, and its boxes are the truth the edge models
train and are scored against (:mod:`searchmerge.data.sources.frame_labels` reads them). The
same teacher labels footage once (``searchmerge label``) and, in the merging service, the
frames the edges send, so both go through one interface:

* :class:`Teacher`: ``classes`` (names, in the model's class-id order) and
  ``detect(frames)``: 8-bit RGB frames (H x W x 3, any size) in, one
  :class:`FrameDetections` per frame out (boxes x1, y1, x2, y2 in that frame's pixels, at or
  above the teacher's score threshold);
* two kinds: :class:`OnnxTeacher` (an ONNX file run by onnxruntime, the optional extra
  ``searchmerge[teacher]``) and :class:`TorchTeacher` (a torchvision-style detection module;
  building it from a study file is :func:`searchmerge.config.teacher.load_teacher`'s job);
* :func:`coco_image` and :func:`coco_document`: detections as the COCO-style labels file the
  video source reads (``images`` with ``frame_index``, ``annotations`` with ``bbox``
  [x, y, width, height] and ``score``, ``categories``).

Example:
    >>> import numpy as np
    >>> class Nobody(Teacher):
    ...     def infer(self, images):
    ...         return [(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64)) for _ in images]
    >>> found = Nobody(classes=("person",)).detect([np.zeros((4, 6, 3), dtype=np.uint8)])
    >>> len(found[0]), found[0].width, found[0].height
    (0, 6, 4)
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from searchmerge.core.errors import SearchmergeError

__all__ = [
    "ONNX_LAYOUTS",
    "FrameDetections",
    "OnnxTeacher",
    "Teacher",
    "TorchTeacher",
    "coco_document",
    "coco_image",
]

#: How an ONNX teacher's input and outputs are laid out (see :class:`OnnxTeacher`).
ONNX_LAYOUTS = ("tf_object_detection", "torchvision")

#: One frame's raw detections from :meth:`Teacher.infer`: boxes (N x 4, x1, y1, x2, y2 in
#: pixels of the image the model saw), scores (N) and class indices into ``classes`` (N).
RawDetections = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True, eq=False)
class FrameDetections:
    """What a teacher found in one frame.

    Attributes:
        boxes: N x 4 float32, x1, y1, x2, y2 in pixels of the frame, clipped to it, each with
            a positive size.
        scores: N float32, the teacher's confidence in each box.
        classes: N int64, each box's class as an index into the teacher's ``classes``.
        width: The frame's width in pixels.
        height: The frame's height in pixels.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    width: int
    height: int

    def __len__(self) -> int:
        return len(self.scores)


class Teacher(abc.ABC):
    """A detector that labels frames: subclasses implement :meth:`infer` on prepared images.

    :meth:`detect` does what every teacher shares: it checks the frames, resizes each to
    ``input_size`` when one is set (for a model made for one size), keeps the boxes scoring
    at least ``threshold``, and maps them back to the frame's pixels.

    Args:
        classes: The class names, in the order of the model's class ids (the first is id 1
            for detectors that reserve 0 for the background).
        threshold: The lowest score of a kept box.
        input_size: (height, width) every frame is resized to before the model sees it;
            ``None`` gives the model each frame as it is.
    """

    def __init__(
        self, *, classes: Sequence[str], threshold: float = 0.5, input_size: tuple[int, int] | None = None
    ) -> None:
        if not classes or not all(isinstance(name, str) and name for name in classes):
            raise SearchmergeError(f"a teacher needs class names, got {list(classes)!r}")
        if not 0.0 <= threshold <= 1.0:
            raise SearchmergeError(f"a teacher's score threshold must be in [0, 1], got {threshold!r}")
        if input_size is not None and (len(input_size) != 2 or min(input_size) < 1):
            raise SearchmergeError(f"a teacher's input size must be [height, width] in pixels, got {input_size!r}")
        self.classes: tuple[str, ...] = tuple(classes)
        self.threshold = float(threshold)
        self.input_size = tuple(input_size) if input_size is not None else None

    @abc.abstractmethod
    def infer(self, images: list[np.ndarray]) -> list[RawDetections]:
        """The model's boxes, scores and class indices on each image (8-bit RGB, H x W x 3)."""

    def detect(self, frames: Sequence[np.ndarray]) -> list[FrameDetections]:
        """The boxes at or above the threshold in each frame (8-bit RGB, H x W x 3, any size)."""
        images = []
        for number, frame in enumerate(frames):
            if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                shape = getattr(frame, "shape", None)
                raise SearchmergeError(f"teacher: frame #{number} must be 8-bit RGB pixels (H x W x 3),"
                                       f" got {type(frame).__name__} of shape {shape}")
            images.append(_resized(frame, self.input_size))
        raw = self.infer(images)
        return [self._kept(frame, image, found) for frame, image, found in zip(frames, images, raw)]

    def _kept(self, frame: np.ndarray, image: np.ndarray, found: RawDetections) -> FrameDetections:
        height, width = frame.shape[:2]
        boxes, scores, classes = (np.asarray(part) for part in found)
        boxes = boxes.astype(np.float32).reshape(-1, 4)
        scale = np.asarray([width / image.shape[1], height / image.shape[0]] * 2, dtype=np.float32)
        boxes = np.clip(boxes * scale, 0.0, np.asarray([width, height] * 2, dtype=np.float32))
        classes = classes.astype(np.int64).reshape(-1)
        unknown = classes[(classes < 0) | (classes >= len(self.classes))]
        if len(unknown):
            raise SearchmergeError(f"teacher: the model found class {int(unknown[0])} (from 0), but only"
                                   f" {len(self.classes)} class names are given ({', '.join(self.classes)})")
        keep = (scores.reshape(-1) >= self.threshold) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return FrameDetections(boxes[keep], scores.reshape(-1).astype(np.float32)[keep], classes[keep], width, height)


class OnnxTeacher(Teacher):
    """An ONNX detector run by onnxruntime on the CPU (``pip install 'searchmerge[teacher]'``).

    ``layout`` says how the file's input and outputs are laid out:

    * ``tf_object_detection`` (a TensorFlow Object Detection API graph converted by tf2onnx):
      one 8-bit input of 1 x H x W x 3; outputs named ``detection_boxes`` (y1, x1, y2, x2 as
      shares of the image), ``detection_scores``, ``detection_classes`` (ids from 1) and
      optionally ``num_detections``;
    * ``torchvision`` (a torchvision detector exported by ``torch.onnx.export``): one float
      input of 3 x H x W in [0, 1]; outputs boxes (x1, y1, x2, y2 in pixels), labels (ids
      from 1, 0 the background) and scores, in this order.

    Args:
        path: The ``.onnx`` file.
        layout: One of :data:`ONNX_LAYOUTS`.
        classes, threshold, input_size: As for :class:`Teacher`.

    Raises:
        SearchmergeError: When onnxruntime is missing, or the file does not load or does not
            have the layout's input.
    """

    def __init__(
        self,
        path: Path,
        *,
        layout: str,
        classes: Sequence[str],
        threshold: float = 0.5,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(classes=classes, threshold=threshold, input_size=input_size)
        if layout not in ONNX_LAYOUTS:
            raise SearchmergeError(f"ONNX teacher: layout must be one of {', '.join(ONNX_LAYOUTS)}, got {layout!r}")
        try:
            import onnxruntime
        except ImportError:
            raise SearchmergeError("an ONNX teacher needs onnxruntime: pip install 'searchmerge[teacher]'") from None
        if not Path(path).is_file():
            raise SearchmergeError(f"teacher file {str(path)!r} does not exist")
        try:
            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3  # warnings about unused initialisers are not the user's business
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own, unexported error types
            raise SearchmergeError(f"teacher file {str(path)!r} does not load as ONNX: {_first_line(exc)}") from None
        self.path = Path(path)
        self.layout = layout
        inputs = self.session.get_inputs()
        wanted = "tensor(uint8)" if layout == "tf_object_detection" else "tensor(float)"
        if len(inputs) != 1 or inputs[0].type != wanted:
            found = ", ".join(f"{i.name} ({i.type})" for i in inputs)
            raise SearchmergeError(f"teacher file {str(path)!r} does not have the {layout} layout: it needs one"
                                   f" {wanted} input, it has {found or 'none'}")
        self.input_name = inputs[0].name
        self.output_names = [output.name for output in self.session.get_outputs()]
        if layout == "tf_object_detection":
            self._outputs = [self._output(name, path) for name in ("detection_boxes", "detection_scores",
                                                                    "detection_classes")]
            counted = [name for name in self.output_names if name.split(":")[0] == "num_detections"]
            self._outputs += counted
        elif len(self.output_names) < 3:
            raise SearchmergeError(f"teacher file {str(path)!r} does not have the torchvision layout: it needs"
                                   f" three outputs (boxes, labels, scores), it has {len(self.output_names)}")

    def _output(self, name: str, path: Path) -> str:
        for output in self.output_names:
            if output.split(":")[0] == name:
                return output
        raise SearchmergeError(f"teacher file {str(path)!r} has no {name!r} output (tf_object_detection layout;"
                               f" its outputs: {', '.join(self.output_names)})")

    def infer(self, images: list[np.ndarray]) -> list[RawDetections]:
        return [self._infer_one(image) for image in images]

    def _infer_one(self, image: np.ndarray) -> RawDetections:
        height, width = image.shape[:2]
        if self.layout == "tf_object_detection":
            found = self.session.run(self._outputs, {self.input_name: image[None]})
            boxes, scores, classes = (np.asarray(part)[0] for part in found[:3])
            count = int(np.asarray(found[3]).reshape(-1)[0]) if len(found) > 3 else len(scores)
            y1, x1, y2, x2 = boxes[:count].T
            pixels = np.stack([x1 * width, y1 * height, x2 * width, y2 * height], axis=1)
            return pixels, scores[:count], classes[:count].astype(np.int64) - 1
        pixels_in = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / 255.0
        boxes, labels, scores = self.session.run(self.output_names[:3], {self.input_name: pixels_in})
        return np.asarray(boxes), np.asarray(scores), np.asarray(labels).astype(np.int64) - 1


class TorchTeacher(Teacher):
    """A torchvision-style detection module as a teacher (Faster R-CNN, SSD, RetinaNet, FCOS, ...).

    The module takes a list of float images (3 x H x W in [0, 1]) and, in eval mode, returns
    one dict per image with ``boxes`` (x1, y1, x2, y2 in pixels), ``labels`` (ids from 1; 0 is
    the background) and ``scores``, as torchvision's detectors do.

    Args:
        model: The detection module; put in eval mode here.
        classes, threshold, input_size: As for :class:`Teacher`.
    """

    def __init__(
        self,
        model: Any,
        *,
        classes: Sequence[str],
        threshold: float = 0.5,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(classes=classes, threshold=threshold, input_size=input_size)
        self.model = model.eval()

    def infer(self, images: list[np.ndarray]) -> list[RawDetections]:
        import torch

        tensors = [torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div_(255.0)
                   for image in images]
        with torch.inference_mode():
            outputs = self.model(tensors)
        return [(out["boxes"].numpy(), out["scores"].numpy(), out["labels"].numpy() - 1) for out in outputs]


def coco_image(frame_index: int, found: FrameDetections, first_id: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One labelled frame as a COCO ``images`` entry and its ``annotations`` (ids from ``first_id``).

    The image's ``id`` is ``frame_index + 1`` and its ``width``/``height`` are the frame's, so
    the boxes stay right when the labels are read against the same footage at another size.
    """
    image_id = frame_index + 1
    image = {"id": image_id, "frame_index": frame_index, "width": found.width, "height": found.height}
    annotations = []
    for offset, ((x1, y1, x2, y2), score, label) in enumerate(zip(found.boxes, found.scores, found.classes)):
        w, h = float(x2 - x1), float(y2 - y1)
        annotations.append({
            "id": first_id + offset, "image_id": image_id, "category_id": int(label) + 1,
            "bbox": [round(float(x1), 2), round(float(y1), 2), round(w, 2), round(h, 2)],
            "area": round(w * h, 2), "score": round(float(score), 4), "iscrowd": 0,
        })
    return image, annotations


def coco_document(
    classes: Sequence[str],
    images: Sequence[Mapping[str, Any]],
    annotations: Sequence[Mapping[str, Any]],
    info: Mapping[str, Any],
) -> dict[str, Any]:
    """The COCO-style labels file the video source reads: ``info``, ``images``, ``annotations``, ``categories``.

    Category ids count the teacher's ``classes`` from 1, in their order.
    """
    return {
        "info": dict(info),
        "images": [dict(image) for image in images],
        "annotations": [dict(annotation) for annotation in annotations],
        "categories": [{"id": number, "name": name} for number, name in enumerate(classes, start=1)],
    }


def _resized(frame: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None or frame.shape[:2] == size:
        return frame
    from PIL import Image

    image = Image.fromarray(frame).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
