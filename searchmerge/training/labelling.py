"""Labelling footage with a teacher: ``searchmerge label``, the first step from a raw video to a study.

A video nobody prepared has no labels; the video source trains and scores the edge models
against a teacher's boxes (:mod:`searchmerge.data.sources.frame_labels`). This module runs a
teacher (:mod:`searchmerge.data.teacher`) on every ``stride``-th frame of a video file or a
folder of frames, and writes the COCO-style labels file the video source reads.

Labelling is the slow part (a teacher detector on a CPU labels a few frames a second), so it
survives an interruption: every ``save_every`` labelled frames, and when interrupted, the
labels so far are written atomically to a partial file beside the output
(``boxes.json.partial``). A rerun with the same footage, teacher, threshold and stride resumes
after the last saved frame and never labels a frame twice; a partial file of other footage or
another teacher is started over. The output file appears, atomically, only once every frame
is labelled, and the partial file is then removed.

Everything the user gave is checked before the first frame is labelled, so that bad input
writes nothing: a teacher file that does not load, a teacher whose classes the study's
queries do not name, footage that does not open.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from searchmerge.config.study import read_study_file
from searchmerge.config.teacher import TeacherSettings, load_teacher, read_teacher
from searchmerge.core.errors import SearchmergeError
from searchmerge.core.progress import Progress, counted, silent
from searchmerge.data.sources.frames import Footage
from searchmerge.data.teacher import Teacher, coco_document, coco_image
from searchmerge.storage.atomic import write_atomic

__all__ = ["LabelRun", "label", "label_footage", "teacher_for_study"]

#: Labelled frames between two saves of the partial file.
SAVE_EVERY = 50


@dataclass(frozen=True)
class LabelRun:
    """What a labelling run did.

    Attributes:
        path: The labels file written.
        frames: Frames labelled in all (every ``stride``-th frame of the footage).
        labelled: Frames the teacher labelled in this run (the others came from the partial file).
        boxes: Boxes in the labels file.
        seconds: Wall-clock seconds the teacher and decoding took in this run.
    """

    path: Path
    frames: int
    labelled: int
    boxes: int
    seconds: float

    @property
    def frames_per_second(self) -> float:
        return self.labelled / self.seconds if self.seconds > 0 else 0.0


def teacher_for_study(path: Path, *, threshold: float | None = None) -> tuple[Teacher, dict[str, Any]]:
    """The teacher a study file (or a file holding only a ``teacher:`` section) names, loaded and checked.

    For a study file, every class its ``format: video`` models ask about (``data.classes``)
    must be one of the teacher's. Returns the teacher and its identity (its section and the
    size and modification time of its files), which a partial labels file must match to be
    resumed.

    Raises:
        SearchmergeError: One line, for a file that does not read or load, or a class the
            teacher does not know.
    """
    path = Path(path)
    settings = read_teacher(path)
    study = read_study_file(path) if _is_study(path) else None
    if study is not None:
        for model in study.workload.models:
            data = model.options.get("data") or {}
            if not isinstance(data, Mapping) or data.get("format") != "video":
                continue
            missing = [name for name in data.get("classes") or () if name not in settings.classes]
            if missing:
                raise SearchmergeError(f"study file {str(path)!r}: model {model.name!r} asks about class"
                                       f" {missing[0]!r}, which its teacher does not know (teacher.classes:"
                                       f" {', '.join(settings.classes)})")
    teacher = load_teacher(settings, path.parent, threshold=threshold)
    return teacher, _teacher_identity(settings, path.parent, teacher.threshold)


def label(
    source: Path,
    teacher_file: Path,
    out: Path,
    *,
    stride: int = 1,
    threshold: float | None = None,
    save_every: int = SAVE_EVERY,
    progress: Progress | None = None,
) -> LabelRun:
    """``searchmerge label``: label ``source`` with the teacher ``teacher_file`` names, into ``out``.

    Args:
        source: A video file (anything PyAV decodes) or a folder of frame images.
        teacher_file: A study file with a ``teacher:`` section, or a file holding that section.
        out: The COCO-style labels file to write.
        stride: Label every ``stride``-th frame (frame 0 first).
        threshold: The lowest score of a kept box, instead of the teacher's own.
        save_every: Labelled frames between saves of the partial file.
        progress: Where to report (a bar with an ETA on a terminal).
    """
    if stride < 1:
        raise SearchmergeError(f"stride must be a positive integer (label every stride-th frame), got {stride}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise SearchmergeError(f"threshold must be in [0, 1] (the lowest score of a kept box), got {threshold}")
    teacher, identity = teacher_for_study(Path(teacher_file), threshold=threshold)
    return label_footage(Path(source), teacher, Path(out), stride=stride, identity=identity, save_every=save_every,
                         progress=progress)


def label_footage(
    source: Path,
    teacher: Teacher,
    out: Path,
    *,
    stride: int = 1,
    identity: Mapping[str, Any] | None = None,
    save_every: int = SAVE_EVERY,
    progress: Progress | None = None,
) -> LabelRun:
    """Label every ``stride``-th frame of ``source`` with ``teacher`` into the labels file ``out``.

    ``identity`` says what the labels depend on besides the footage and the stride (default:
    the teacher's class, classes and threshold); a partial file is resumed only when it matches.
    """
    say = progress or silent
    footage = Footage.probe(source)
    if not out.parent.is_dir():
        raise SearchmergeError(f"the labels file's folder {str(out.parent)!r} does not exist")
    wanted = list(range(0, footage.frame_count, stride))
    made = {
        "footage": footage.identity, "stride": stride,
        "teacher": dict(identity) if identity is not None else {
            "teacher": type(teacher).__name__, "classes": list(teacher.classes), "threshold": teacher.threshold},
    }
    partial = out.with_name(out.name + ".partial")
    images, annotations = _resumed(partial, made, say)
    done = {int(image["frame_index"]) for image in images}
    labelled, unsaved, started = 0, 0, time.perf_counter()

    def save(where: Path) -> None:
        document = coco_document(teacher.classes, images, annotations, {"searchmerge_label": made})
        write_atomic(where, json.dumps(document).encode())

    with counted(progress, len(wanted), f"label {footage.path.name}", done=len(done), unit="frame") as bar:
        try:
            for index, frame in enumerate(footage.frames()):
                if index % stride or index in done:
                    continue
                found = teacher.detect([frame])[0]
                image, boxes = coco_image(index, found, len(annotations) + 1)
                images.append(image)
                annotations.extend(boxes)
                labelled, unsaved = labelled + 1, unsaved + 1
                bar.advance()
                if unsaved >= save_every:
                    save(partial)
                    unsaved = 0
        except SearchmergeError as exc:  # footage that stops decoding part way
            if images:
                raise SearchmergeError(f"{exc} (the {len(images)} frames labelled before it are kept in"
                                       f" {str(partial)!r})") from None
            raise
        finally:
            if unsaved:
                save(partial)  # interrupted or failed: what was labelled is kept for the rerun
    if len(images) != len(wanted):
        raise SearchmergeError(f"video {str(source)!r} decoded to fewer frames than its {footage.frame_count}:"
                               f" {len(images)} of {len(wanted)} labelled (the labels so far are in"
                               f" {str(partial)!r})")
    images.sort(key=lambda image: int(image["frame_index"]))
    save(out)
    partial.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    say(f"label: {len(images)} frames of {footage.path.name} labelled ({labelled} now, {len(images) - labelled}"
        f" resumed), {len(annotations)} boxes, written to {out}")
    return LabelRun(out, len(images), labelled, len(annotations), seconds)


def _resumed(partial: Path, made: Mapping[str, Any], say: Progress) -> tuple[list[Any], list[Any]]:
    """The images and annotations of a partial file made the same way, or none."""
    if not partial.is_file():
        return [], []
    try:
        document = json.loads(partial.read_text())
        same = document["info"]["searchmerge_label"] == json.loads(json.dumps(made))
        images, annotations = list(document["images"]), list(document["annotations"])
    except (OSError, ValueError, KeyError, TypeError):
        same = False
    if not same:
        say(f"label: {partial} holds labels of other footage, another teacher or stride, or is damaged:"
            " starting over")
        return [], []
    say(f"label: resuming after {len(images)} frames labelled in {partial}")
    return images, annotations


def _teacher_identity(settings: TeacherSettings, base_dir: Path, threshold: float) -> dict[str, Any]:
    files = [value for value in (settings.onnx, settings.weights) if value]
    stamps = {}
    for name in files:
        stat = (Path(name) if Path(name).is_absolute() else base_dir / name).stat()
        stamps[name] = [stat.st_size, stat.st_mtime_ns]  # a replaced teacher file is not resumed
    return {**settings.to_document(), "threshold": threshold, "files": stamps}


def _is_study(path: Path) -> bool:
    import yaml

    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(document, Mapping) and "models" in document
