"""Labelling the frames the edges send: the study's teacher for camera footage, provenance for the digits.

The service never takes an edge's word for a label. A sample carries the pixels the edge
saw (PNG or JPEG, :class:`~searchmerge.service.protocol.Frame`), and the service labels them
itself, with the one labeller a model's data has:

* a model on **video footage** (``format: video``) is labelled by the study's **teacher**
  (its ``teacher:`` section): the teacher runs on the whole frame (or on the part of it the
  sample gives, with its position), and the model's question about its region
  (:class:`~searchmerge.data.sources.video.RegionQuestion`, the same code that labels the
  footage) turns the boxes into its target: presence, a count bin, or boxes;
* a model of the **digits generator** is labelled by **provenance**: the generator is
  deterministic, so the frame the sample names has a known label (the generator's own).

What the model sees of the frame (its region's crop at its input size) is what is stored,
as PNG, with the label. Every check runs before anything is stored, so an upload is stored
whole or refused whole: a frame too large (:class:`SampleTooLarge`, HTTP 413), a model the
deployment or the edge does not run, a frame that does not decode or does not fit the
model (:class:`~searchmerge.core.errors.SearchmergeError`, HTTP 422).
"""

from __future__ import annotations

import dataclasses
import io
import json
import threading
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from searchmerge.config.data_request import DataRequest, model_request
from searchmerge.config.study import StudyFile
from searchmerge.config.teacher import load_teacher
from searchmerge.core.errors import SearchmergeError
from searchmerge.data.sources.video import RegionQuestion, VideoSource
from searchmerge.data.teacher import Teacher
from searchmerge.service.footage import Footage
from searchmerge.service.protocol import Frame, Sample, SampleBatch, encode_frame
from searchmerge.training.prepare import source_context

__all__ = ["MAX_SAMPLE_BYTES", "LabelledFrame", "Labeller", "SampleTooLarge", "decode_pixels"]

#: The largest encoded frame of one sample, by default (a 640 x 480 JPEG is about 50 kB; a PNG of
#: the same frame up to about 500 kB).
MAX_SAMPLE_BYTES = 512 * 1024


class SampleTooLarge(SearchmergeError):
    """A sample's frame is larger than the service takes (HTTP 413)."""


@dataclass(frozen=True)
class LabelledFrame:
    """A sample as the service stores it: what the model sees, and the label the service gave it.

    Attributes:
        model: The model whose stream the frame is of.
        label: The class (presence, count, digits); ``-1`` for a detection target.
        target: A detection target (``{"boxes": [[x1, y1, x2, y2], ...], "labels": [...]}`` in pixels
            of the model's input), else ``None``.
        view: The model's view of the frame, 8-bit (H x W x C).
        png: ``view`` encoded as PNG (what is stored).
        scenario, split, index: The provenance of a digits frame (``None``, ``"edge"``, ``0`` otherwise).
    """

    model: str
    label: int
    target: dict[str, Any] | None
    view: np.ndarray
    png: bytes
    scenario: str | None = None
    split: str = "edge"
    index: int = 0


class Labeller:
    """Labels a deployment's samples with its study's teacher, or the digits generator's provenance.

    The teacher is loaded at the first sample that needs it (a service of a digits study never
    loads one), and run by one thread at a time.

    Args:
        study: The study file of the deployment (its models, footage and ``teacher:``).
        max_sample_bytes: The largest encoded frame of one sample.
    """

    def __init__(self, study: StudyFile, *, max_sample_bytes: int = MAX_SAMPLE_BYTES) -> None:
        if max_sample_bytes < 1:
            raise SearchmergeError(f"the sample size limit must be positive, got {max_sample_bytes}")
        self.study = study
        self.max_sample_bytes = max_sample_bytes
        self.requests: dict[str, DataRequest] = {spec.name: model_request(spec) for spec in study.workload.models}
        self.footage = Footage(study.workload, study.settings)
        self._context = source_context(study.settings, study_path=study.path, cache_dir=study.cache_dir)
        self._questions: dict[str, RegionQuestion] = {}
        self._teacher: Teacher | None = None
        self._lock = threading.Lock()

    def normalisation(self, model: str) -> tuple[float, float]:
        """How ``model`` takes 8-bit pixels (see :attr:`searchmerge.data.sources.Source.normalisation`)."""
        return self.requests[model].source.normalisation

    def label(self, batch: SampleBatch, *, runs: Collection[str] | None = None) -> list[LabelledFrame]:
        """Every sample of ``batch`` labelled, or an error naming the first that cannot be.

        Args:
            batch: The upload.
            runs: The models the sending edge runs (its reported streams); ``None``: any of the deployment's.

        Raises:
            SampleTooLarge: If a frame is larger than ``max_sample_bytes`` (checked first, for all samples).
            SearchmergeError: If a sample is of a model the deployment or the edge does not run, or its
                frame does not decode, does not fit the model, or has no labeller.
        """
        for position, sample in enumerate(batch.samples):
            if sample.frame.size > self.max_sample_bytes:
                raise SampleTooLarge(f"sample {position}: its frame has {sample.frame.size} bytes, more than the"
                                     f" {self.max_sample_bytes} a sample may have")
        for position, sample in enumerate(batch.samples):
            if sample.model not in self.requests:
                raise SearchmergeError(f"sample {position}: the deployment has no model {sample.model!r} (its models:"
                                       f" {', '.join(self.requests)})")
            if runs is not None and sample.model not in runs:
                raise SearchmergeError(f"sample {position}: this edge does not run model {sample.model!r} (its"
                                       f" streams run {', '.join(sorted(runs)) or 'none'})")
        labelled = []
        for position, sample in enumerate(batch.samples):
            try:
                labelled.append(self._label(sample))
            except SearchmergeError as exc:
                raise SearchmergeError(f"sample {position}: {exc}") from None
        return labelled

    def _label(self, sample: Sample) -> LabelledFrame:
        request = self.requests[sample.model]
        if isinstance(request.source, VideoSource):
            return self._label_footage(sample, request)
        if request.format == "digits":
            return self._label_digits(sample)
        raise SearchmergeError(f"model {sample.model!r} reads {request.format!r} data, whose frames the service cannot"
                               " label: only video footage (by the study's teacher) and the digits generator (by"
                               " provenance) are")

    def _label_digits(self, sample: Sample) -> LabelledFrame:
        if sample.source is None:
            raise SearchmergeError(f"model {sample.model!r} is a digits model: its sample needs the frame's provenance"
                                   " (source) to be labelled")
        channels, height, width = self.footage.input_shape(sample.model)
        pixels = decode_pixels(sample.frame, (height, width), channels)
        label = self.footage.label(sample)
        source = sample.source
        return LabelledFrame(sample.model, label, None, pixels, _png(pixels), source.scenario, source.split,
                             source.index)

    def _label_footage(self, sample: Sample, request: DataRequest) -> LabelledFrame:
        question = self._question(sample.model, request)
        frame_height, frame_width = question.frame_size
        region = sample.frame.region
        if region is None:
            left, top, right, bottom = 0, 0, frame_width, frame_height
        else:
            left, top, right, bottom = region
            inside = 0 <= left < right <= frame_width and 0 <= top < bottom <= frame_height
            x0, y0, x1, y1 = question.box
            if not inside or not (left <= x0 and top <= y0 and x1 <= right and y1 <= bottom):
                raise SearchmergeError(f"its region {region} (pixels) is not inside the {frame_width}x{frame_height}"
                                       f" frame around model {sample.model!r}'s region {list(question.box)}")
        pixels = decode_pixels(sample.frame, (bottom - top, right - left), 3)
        teacher = self.teacher()
        unknown = sorted(set(question.classes) - set(teacher.classes))
        if unknown:
            raise SearchmergeError(f"model {sample.model!r} asks about {', '.join(unknown)}, which the study's teacher"
                                   f" does not know (it knows {', '.join(teacher.classes)})")
        with self._lock:
            found = teacher.detect([pixels])[0]
        boxes = found.boxes + np.asarray([left, top, left, top], dtype=np.float32)
        target = question.target(boxes, found.classes, teacher.classes)
        local = dataclasses.replace(question, box=(question.box[0] - left, question.box[1] - top,
                                                   question.box[2] - left, question.box[3] - top))
        view = local.view(pixels)
        if isinstance(target, dict):
            stored = {"boxes": target["boxes"].tolist(), "labels": target["labels"].tolist()}
            return LabelledFrame(sample.model, -1, stored, view, _png(view))
        return LabelledFrame(sample.model, int(target), None, view, _png(view))

    def _question(self, model: str, request: DataRequest) -> RegionQuestion:
        if model not in self._questions:
            source = request.source
            assert isinstance(source, VideoSource)
            try:
                self._questions[model] = source.question(request.options, self._context, task=request.task)
            except SearchmergeError as exc:
                raise SearchmergeError(f"model {model!r}: {exc}") from None
        return self._questions[model]

    def teacher(self) -> Teacher:
        """The study's teacher, loaded once."""
        with self._lock:
            if self._teacher is None:
                settings = self.study.settings.teacher
                if settings is None:
                    raise SearchmergeError(f"study file {str(self.study.path)!r} has no teacher: section, so the"
                                           " service cannot label camera frames (docs/study-files.md)")
                self._teacher = load_teacher(settings, Path(self.study.path).parent)
            return self._teacher


def decode_pixels(frame: Frame, size: tuple[int, int], channels: int) -> np.ndarray:
    """The frame's 8-bit pixels (H x W x ``channels``), refused unless it decodes to ``size`` (height, width).

    The size and mode are read from the image's header before its pixels are decoded, so a
    frame that does not fit (or claims to be huge) costs nothing to refuse.
    """
    from PIL import Image, UnidentifiedImageError

    modes = {1: "L", 3: "RGB"}
    try:
        with Image.open(io.BytesIO(frame.encoded()), formats=["PNG" if frame.encoding == "png" else "JPEG"]) as image:
            width, height = image.size
            if (height, width) != tuple(size):
                raise SearchmergeError(f"its frame is {width}x{height} pixels; it must be {size[1]}x{size[0]}")
            if image.mode != modes.get(channels):
                raise SearchmergeError(f"its frame is {image.mode} ({len(image.getbands())} channel(s)); the model"
                                       f" takes {channels} channel(s) ({modes.get(channels, '?')})")
            pixels = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise SearchmergeError(f"its frame does not decode as {frame.encoding.upper()}") from None
    return pixels.reshape(height, width, channels)


def _png(pixels: np.ndarray) -> bytes:
    return encode_frame(pixels).encoded()


def target_json(target: dict[str, Any] | None) -> str | None:
    """A detection target as stored (JSON), or ``None``."""
    return json.dumps(target) if target is not None else None
