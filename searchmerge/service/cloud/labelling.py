"""Labelling the frames the edges send: every sample is labelled by the study's one teacher.

The service never takes an edge's word for a label. A sample carries the pixels the edge
saw (PNG or JPEG, :class:`~searchmerge.service.protocol.Frame`), and the service labels them
itself, with its study's teacher (:func:`study_teacher`), one of two kinds behind one
interface (:class:`SampleTeacher`: a sample of a model in, the sample as stored out):

* :class:`ImageTeacher`, the detector of the study file's ``teacher:`` section, labels camera
  frames (``format: video`` models) by their pixels: it runs on the whole frame (or on the
  part of it the sample gives, with its position), and the model's question about its region
  (:class:`~searchmerge.data.sources.video.RegionQuestion`, the same code that labels the
  footage) turns the boxes into its target: presence, a count bin, or boxes;
* :class:`ProvenanceTeacher`, the digits generator, is the teacher of a study of the
  generator (``format: digits`` models) with no ``teacher:`` section: the generator is
  deterministic, so the frame a sample's provenance (scenario, split, index) names has a
  known label, the generator's own.

A sample the study's teacher cannot label (a provenance sample sent to a study with a
detector, a camera frame to the digits generator) is one error line. What the model sees of
the frame (its region's crop at its input size) is what is stored, as PNG, with the label.
Every check runs before anything is stored, so an upload is stored whole or refused whole: a
frame too large (:class:`SampleTooLarge`, HTTP 413), a model the deployment or the edge does
not run, a frame that does not decode or does not fit the model
(:class:`~searchmerge.core.errors.SearchmergeError`, HTTP 422).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from searchmerge.config.data_request import DataRequest, model_request
from searchmerge.config.study import StudyFile
from searchmerge.config.teacher import load_teacher
from searchmerge.core.errors import SearchmergeError
from searchmerge.data.sources.video import RegionQuestion, VideoSource
from searchmerge.data.teacher import FrameDetections, Teacher
from searchmerge.service.footage import Footage
from searchmerge.service.protocol import Frame, Sample, SampleBatch, encode_frame
from searchmerge.training.prepare import source_context

__all__ = [
    "MAX_SAMPLE_BYTES",
    "ImageTeacher",
    "LabelledFrame",
    "Labeller",
    "ProvenanceTeacher",
    "SampleTeacher",
    "SampleTooLarge",
    "decode_pixels",
    "study_teacher",
]

#: The largest encoded frame of one sample, by default (a 640 x 480 JPEG is about 50 kB; a PNG of
#: the same frame up to about 500 kB).
MAX_SAMPLE_BYTES = 512 * 1024
#: Camera frames whose teacher boxes are kept: the samples of one frame's models arrive together.
FRAMES_REMEMBERED = 64


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


class SampleTeacher(Protocol):
    """What labels a study's samples (:func:`study_teacher` picks it): one method, one sample.

    Implementations check everything about the sample their kind depends on (the frame's
    size and channels, its region, its provenance) and raise
    :class:`~searchmerge.core.errors.SearchmergeError`, one line, when it cannot be labelled.
    """

    def label(self, sample: Sample, request: DataRequest) -> LabelledFrame:
        """``sample`` (of the model ``request`` describes) as stored: what the model sees, with its label."""
        ...


class ImageTeacher:
    """The study file's ``teacher:`` detector, labelling camera frames by their pixels.

    The detector is loaded at the first sample (a study without a ``teacher:`` section is told
    so then), and run by one thread at a time.

    Args:
        study: The study file (its ``teacher:`` section, and the footage its models' regions are of).
    """

    def __init__(self, study: StudyFile) -> None:
        self.study = study
        self._context = source_context(study.settings, study_path=study.path, cache_dir=study.cache_dir)
        self._questions: dict[str, RegionQuestion] = {}
        self._detector: Teacher | None = None
        self._lock = threading.Lock()
        self._detect = functools.lru_cache(maxsize=FRAMES_REMEMBERED)(self._detect_frame)

    def label(self, sample: Sample, request: DataRequest) -> LabelledFrame:
        if not isinstance(request.source, VideoSource):
            if request.format == "digits":
                raise SearchmergeError(f"model {sample.model!r} reads the digits generator, whose frames are labelled"
                                       " by their provenance, but this study's teacher is the detector of its"
                                       " teacher: section, which labels camera frames only")
            raise _cannot_label(sample.model, request)
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
        detector = self.detector()
        unknown = sorted(set(question.classes) - set(detector.classes))
        if unknown:
            raise SearchmergeError(f"model {sample.model!r} asks about {', '.join(unknown)}, which the study's teacher"
                                   f" does not know (it knows {', '.join(detector.classes)})")
        pixels, found = self._detect(sample.frame.encoding, sample.frame.data, (bottom - top, right - left))
        boxes = found.boxes + np.asarray([left, top, left, top], dtype=np.float32)
        target = question.target(boxes, found.classes, detector.classes)
        local = dataclasses.replace(question, box=(question.box[0] - left, question.box[1] - top,
                                                   question.box[2] - left, question.box[3] - top))
        view = local.view(pixels)
        if isinstance(target, dict):
            stored = {"boxes": target["boxes"].tolist(), "labels": target["labels"].tolist()}
            return LabelledFrame(sample.model, -1, stored, view, _png(view))
        return LabelledFrame(sample.model, int(target), None, view, _png(view))

    def _detect_frame(self, encoding: str, data: str, size: tuple[int, int]) -> tuple[np.ndarray, FrameDetections]:
        """The frame's pixels and the teacher's boxes on them. Cached (:attr:`_detect`): the models that
        look at regions of one camera each send its whole frame, and the teacher runs once per frame."""
        pixels = decode_pixels(Frame(encoding=encoding, data=data), size, 3)  # type: ignore[arg-type]
        detector = self.detector()
        with self._lock:
            return pixels, detector.detect([pixels])[0]

    def _question(self, model: str, request: DataRequest) -> RegionQuestion:
        if model not in self._questions:
            source = request.source
            assert isinstance(source, VideoSource)
            try:
                self._questions[model] = source.question(request.options, self._context, task=request.task)
            except SearchmergeError as exc:
                raise SearchmergeError(f"model {model!r}: {exc}") from None
        return self._questions[model]

    def detector(self) -> Teacher:
        """The ``teacher:`` section's detector, loaded once."""
        with self._lock:
            if self._detector is None:
                settings = self.study.settings.teacher
                if settings is None:
                    raise _no_teacher_section(self.study)
                self._detector = load_teacher(settings, Path(self.study.path).parent)
            return self._detector


class ProvenanceTeacher:
    """The digits generator as a study's teacher: a sample is labelled by the frame its provenance names.

    The sample's ``source`` (drift scenario, split, index) names a frame of the generator's
    footage of the model (:class:`~searchmerge.service.footage.Footage`, made once per
    scenario); its label is the generator's, and its pixels must fit the model's input.

    Args:
        study: The study file (its workload and settings make the generator's footage).
    """

    def __init__(self, study: StudyFile) -> None:
        self.study = study
        self.footage = Footage(study.workload, study.settings)

    def label(self, sample: Sample, request: DataRequest) -> LabelledFrame:
        if request.format != "digits":
            # camera frames need the detector of a teacher: section, which this study does not have
            raise _no_teacher_section(self.study) if isinstance(request.source, VideoSource) else _cannot_label(
                sample.model, request)
        if sample.source is None:
            raise SearchmergeError(f"model {sample.model!r} is a digits model: its sample needs the frame's provenance"
                                   " (source) to be labelled")
        channels, height, width = self.footage.input_shape(sample.model)
        pixels = decode_pixels(sample.frame, (height, width), channels)
        label = self.footage.label(sample)
        source = sample.source
        return LabelledFrame(sample.model, label, None, pixels, _png(pixels), source.scenario, source.split,
                             source.index)


def study_teacher(study: StudyFile, requests: Mapping[str, DataRequest] | None = None) -> SampleTeacher:
    """The teacher that labels ``study``'s samples.

    The study file's ``teacher:`` section names it (an :class:`ImageTeacher`); a study with no
    such section whose models read the digits generator (``format: digits``) has the generator
    as its teacher (a :class:`ProvenanceTeacher`). Any other study gets an :class:`ImageTeacher`
    too, which says at its first camera frame that the study file has no ``teacher:`` section.

    Args:
        study: The study file.
        requests: Its models' data requests by name (made from the study when not given).
    """
    if study.settings.teacher is None:
        if requests is None:
            requests = {spec.name: model_request(spec) for spec in study.workload.models}
        if any(request.format == "digits" for request in requests.values()):
            return ProvenanceTeacher(study)
    return ImageTeacher(study)


class Labeller:
    """Labels a deployment's samples with its study's teacher (:func:`study_teacher`).

    Args:
        study: The study file of the deployment (its models, footage and ``teacher:``).
        max_sample_bytes: The largest encoded frame of one sample.
        teacher: The teacher to label with, instead of the study's.
    """

    def __init__(self, study: StudyFile, *, max_sample_bytes: int = MAX_SAMPLE_BYTES,
                 teacher: SampleTeacher | None = None) -> None:
        if max_sample_bytes < 1:
            raise SearchmergeError(f"the sample size limit must be positive, got {max_sample_bytes}")
        self.study = study
        self.max_sample_bytes = max_sample_bytes
        self.requests: dict[str, DataRequest] = {spec.name: model_request(spec) for spec in study.workload.models}
        self.teacher: SampleTeacher = teacher if teacher is not None else study_teacher(study, self.requests)

    @property
    def footage(self) -> Footage:
        """The digits generator's footage the study's teacher labels from (a study whose teacher is the generator)."""
        if not isinstance(self.teacher, ProvenanceTeacher):
            raise SearchmergeError(f"study file {str(self.study.path)!r}: its teacher is not the digits generator, so"
                                   " it has no generator footage")
        return self.teacher.footage

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
                frame does not decode, does not fit the model, or is not one the study's teacher labels.
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
                labelled.append(self.teacher.label(sample, self.requests[sample.model]))
            except SearchmergeError as exc:
                raise SearchmergeError(f"sample {position}: {exc}") from None
        return labelled


def _no_teacher_section(study: StudyFile) -> SearchmergeError:
    return SearchmergeError(f"study file {str(study.path)!r} has no teacher: section, so the service cannot label"
                            " camera frames (docs/study-files.md)")


def _cannot_label(model: str, request: DataRequest) -> SearchmergeError:
    return SearchmergeError(f"model {model!r} reads {request.format!r} data, whose frames the service cannot label:"
                            " only video footage (by the study's teacher) and the digits generator (by provenance)"
                            " are")


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
