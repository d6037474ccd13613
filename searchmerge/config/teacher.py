"""A study file's ``teacher:`` section: the model that labels its frames, checked and loaded.

The teacher labels footage once (``searchmerge label``) and, in the merging service, the
frames the edges send; both read it from the study file, so that the labels a study trains
on and the labels its drift is judged by come from one model. The section names exactly one
model, one of three ways::

    teacher:
      onnx: campus/ssdlite-person.onnx     # an ONNX file, run by onnxruntime (searchmerge[teacher])
      layout: tf_object_detection          # or torchvision (what torch.onnx.export writes)
      classes: [person]                    # the model's class names, in class-id order
      threshold: 0.5                       # the lowest score of a kept box
      input_size: [288, 384]               # optional: frames resized to [height, width] first

    teacher:
      arch: fasterrcnn_mobilenet_v3_large_fpn   # a torchvision detection architecture,
      kwargs: {num_classes: 2}                   # or factory: package.module:function
      weights: teacher.safetensors               # its weights (no download, ever)
      classes: [person]

Relative paths are read against the study file's folder. :func:`load_teacher` makes the
:class:`~searchmerge.data.teacher.Teacher`; :func:`read_teacher` reads the section from a
study file, or from a file holding only the section (``searchmerge label --teacher``).

A study of the digits generator needs no section: without one, the service takes the
generator itself as the study's teacher, labelling each sample by its provenance (the
service's ``study_teacher``, :mod:`searchmerge.service.cloud.labelling`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from searchmerge.config import schema
from searchmerge.config.workload import ModelSpec
from searchmerge.core.errors import SearchmergeError
from searchmerge.data.teacher import ONNX_LAYOUTS, OnnxTeacher, Teacher, TorchTeacher

__all__ = ["TEACHER_KEYS", "TeacherSettings", "load_teacher", "read_teacher"]

#: The keys of a ``teacher:`` section.
TEACHER_KEYS = ("onnx", "layout", "arch", "factory", "kwargs", "weights", "classes", "threshold", "input_size")
#: The keys that name the model; a section has exactly one.
MODEL_KEYS = ("onnx", "arch", "factory")


@dataclass(frozen=True)
class TeacherSettings:
    """The ``teacher:`` section, validated.

    Attributes:
        onnx: An ONNX file (``kind`` ``onnx``), as written (relative to the study file).
        layout: How the ONNX file's input and outputs are laid out (:data:`ONNX_LAYOUTS`).
        arch: A torchvision detection architecture (``kind`` ``torchvision``).
        factory: A ``package.module:function`` returning a detection module (``kind`` ``factory``).
        kwargs: Keyword arguments of the architecture or factory.
        weights: The weights file of ``arch`` or ``factory`` (``.safetensors`` or a ``.pt`` state dict).
        classes: The model's class names, in class-id order.
        threshold: The lowest score of a kept box.
        input_size: (height, width) frames are resized to before the model; ``None``: as they are.
    """

    onnx: str = ""
    layout: str = schema.setting("torchvision", choices=ONNX_LAYOUTS)
    arch: str = ""
    factory: str = ""
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    weights: str = ""
    classes: tuple[str, ...] = ()
    threshold: float = schema.setting(0.5, at_least=0, at_most=1, hint="the lowest score of a kept box")
    input_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        schema.validate(self, "teacher")
        named = [key for key in MODEL_KEYS if getattr(self, key)]
        if len(named) != 1:
            raise SearchmergeError(f"teacher needs exactly one of onnx, arch or factory, got"
                                   f" {', '.join(named) if named else 'none'}")
        if not self.classes:
            raise SearchmergeError("teacher.classes must list the teacher's class names, in class-id order")

    @property
    def kind(self) -> str:
        """``onnx``, ``torchvision`` or ``factory``."""
        return "onnx" if self.onnx else "torchvision" if self.arch else "factory"

    @classmethod
    def from_document(cls, section: Any, where: str = "teacher") -> TeacherSettings:
        """The section as written in a study file; every error names its key (``teacher.threshold``)."""
        given = schema.mapping(section, where, "teacher settings")
        plain = {key: value for key, value in given.items() if key not in ("kwargs", "classes", "input_size")}
        checked = schema.values(cls, plain, where, fields=TEACHER_KEYS)
        for key in ("onnx", "arch", "factory", "weights"):
            if key in checked and not checked[key].strip():
                raise SearchmergeError(f"{where}.{key} must not be empty")
        if "onnx" not in given and "layout" in given:
            raise SearchmergeError(f"{where}.layout is for an ONNX teacher (onnx: FILE)")
        if "onnx" in given and ("weights" in given or "kwargs" in given):
            raise SearchmergeError(f"{where}: an ONNX teacher holds its weights; weights and kwargs are for arch or"
                                   " factory")
        kwargs = schema.mapping(given.get("kwargs"), f"{where}.kwargs", "keyword arguments")
        return cls(**checked, kwargs=kwargs, classes=_classes(given.get("classes"), where),
                   input_size=_input_size(given.get("input_size"), where))

    def to_document(self) -> dict[str, Any]:
        """The section as a study file writes it: :meth:`from_document` reads it back equal."""
        document: dict[str, Any] = {key: getattr(self, key) for key in MODEL_KEYS if getattr(self, key)}
        if self.onnx:
            document["layout"] = self.layout
        else:
            document.update({"kwargs": dict(self.kwargs)} if self.kwargs else {})
            document.update({"weights": self.weights} if self.weights else {})
        document.update({"classes": list(self.classes), "threshold": self.threshold})
        if self.input_size is not None:
            document["input_size"] = list(self.input_size)
        return document


def load_teacher(settings: TeacherSettings, base_dir: Path, *, threshold: float | None = None) -> Teacher:
    """The teacher ``settings`` describe, its files read against ``base_dir`` (the study file's folder).

    Args:
        settings: The validated ``teacher:`` section.
        base_dir: The folder relative paths are read against.
        threshold: A score threshold instead of the section's (``searchmerge label --threshold``).

    Raises:
        SearchmergeError: One line, when a file is missing or does not load, or onnxruntime is
            not installed for an ONNX teacher.
    """
    kept = settings.threshold if threshold is None else threshold
    if settings.kind == "onnx":
        return OnnxTeacher(_resolved(settings.onnx, base_dir), layout=settings.layout, classes=settings.classes,
                           threshold=kept, input_size=settings.input_size)
    weights = str(_resolved(settings.weights, base_dir)) if settings.weights else None
    spec = ModelSpec(name="teacher", arch=settings.arch or settings.factory, kwargs=settings.kwargs, weights=weights)
    return TorchTeacher(spec.build(), classes=settings.classes, threshold=kept, input_size=settings.input_size)


def read_teacher(path: Path) -> TeacherSettings:
    """The ``teacher:`` section of a study file, or of a YAML file that holds only that section.

    A file with a ``teacher:`` key is read for it (a study file); any other mapping is taken
    as the section itself. Errors name the file.
    """
    where = f"teacher file {str(path)!r}"
    try:
        document = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise SearchmergeError(f"cannot read {where}: {exc.strerror or exc}") from None
    except yaml.YAMLError:
        raise SearchmergeError(f"{where} is not valid YAML (a study file or a teacher: section)") from None
    if not isinstance(document, Mapping):
        raise SearchmergeError(f"{where} must be a study file with a teacher: section, or that section")
    if "models" in document and "teacher" not in document:
        raise SearchmergeError(f"study file {str(path)!r} has no teacher: section (docs/study-files.md)")
    section = document.get("teacher", document)
    try:
        return TeacherSettings.from_document(section)
    except SearchmergeError as exc:
        raise SearchmergeError(f"{where}: {exc}") from None


def _resolved(value: str, base_dir: Path) -> Path:
    path = Path(value)
    return path if path.is_absolute() else Path(base_dir) / path


def _classes(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        raise SearchmergeError(f"{where}.classes must list the teacher's class names, in class-id order")
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v for v in value):
        raise SearchmergeError(f"{where}.classes must be a list of class names, got {value!r}")
    if len(set(value)) != len(value):
        raise SearchmergeError(f"{where}.classes names a class twice: {list(value)!r}")
    return tuple(value)


def _input_size(value: Any, where: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value
    ):
        raise SearchmergeError(f"{where}.input_size must be [height, width] in pixels (or one size), got {value!r}")
    return (int(value[0]), int(value[1]))
