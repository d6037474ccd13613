"""A model's data and task kind, resolved from its study-file entry.

A model's entry names its task (``task: classification``, ``detection``, or a task of a
source such as the digits demo's ``parity``) and its data (``data: {format: ..., ...}``;
without one, the digits demo, whose camera is the entry's ``camera:``). This resolves
the two into a :class:`DataRequest` when the study file is opened, so a typo, an unknown
format or a detection model on classification data is refused before anything is read,
trained or written; the data is read later, by :meth:`DataRequest.open`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from searchmerge.config.workload import ModelSpec
from searchmerge.core.errors import SearchmergeError
from searchmerge.core.keys import check_keys, did_you_mean
from searchmerge.data.loading import in_order
from searchmerge.data.sources import (
    DEFAULT_FORMAT,
    Source,
    SourceContext,
    TaskData,
    format_names,
    get_source,
)
from searchmerge.data.tasks import TaskKind, get_kind, kind_names

__all__ = ["DataRequest", "check_fits", "model_request"]


@dataclass(frozen=True)
class DataRequest:
    """What data a model asks for and what kind of task it does, checked but not yet read.

    Attributes:
        model: The model's name (in messages).
        format: The data source's name.
        options: The source's options (the ``data:`` section without ``format``).
        task: The entry's ``task:`` as written.
        kind: The task kind (``classification``, ``detection``).
    """

    model: str
    format: str
    options: Mapping[str, Any]
    task: str
    kind: str

    @property
    def source(self) -> Source:
        return get_source(self.format)

    @property
    def adapter(self) -> TaskKind:
        """The task kind's adapter: batches, loss, metric, statistics."""
        return get_kind(self.kind)

    @property
    def makes_originals(self) -> bool:
        """Whether a model on this data without weights is made by the study's recipe."""
        return self.source.makes_originals

    def open(self, context: SourceContext) -> TaskData:
        """Read the data (file lists and labels; images are read when a sample is)."""
        try:
            data = self.source.open(self.options, context, task=self.task)
        except SearchmergeError as exc:
            raise SearchmergeError(f"model {self.model!r}: {exc}") from None
        if data.kind != self.kind:
            raise SearchmergeError(f"model {self.model!r}: its data is for {data.kind}, its task is {self.kind}")
        return data

    def drifted(self, changes: Mapping[str, float]) -> DataRequest:
        """This request with a drift scenario's camera changes applied."""
        try:
            return dataclasses.replace(self, options=self.source.drifted(self.options, changes))
        except SearchmergeError as exc:
            raise SearchmergeError(f"model {self.model!r}: {exc}") from None

    def replaced(self, data: Mapping[str, Any]) -> DataRequest:
        """The same model and task on other data (a drift scenario's own ``data:``)."""
        return _request(self.model, self.task, data)


def model_request(spec: ModelSpec) -> DataRequest:
    """The checked data and task of a model's study-file entry."""
    data = spec.options.get("data")
    if data is None:
        data = {"format": DEFAULT_FORMAT}
    if not isinstance(data, Mapping):
        raise SearchmergeError(f"model {spec.name!r}: 'data' must be a mapping with a 'format', got {data!r}")
    if "camera" in spec.options:  # the digits demo's camera, written beside the task
        data = {**data, "camera": spec.options["camera"]}
    return _request(spec.name, spec.options.get("task"), data)


def _request(model: str, task: Any, data: Mapping[str, Any]) -> DataRequest:
    where = f"model {model!r}"
    if not isinstance(data, Mapping):
        raise SearchmergeError(f"{where}: 'data' must be a mapping with a 'format', got {data!r}")
    if "format" not in data:
        raise SearchmergeError(f"{where}: its data needs a 'format' ({', '.join(format_names())})")
    fmt = str(data["format"])
    try:
        source = get_source(fmt)
    except SearchmergeError as exc:
        raise SearchmergeError(f"{where}: {exc}") from None
    options = {k: v for k, v in data.items() if k != "format"}
    check_keys(f"{where}, data ({fmt})", options, source.keys)
    if task is None and source.kind is not None and not source.makes_originals:
        task = source.kind  # image folders are for classification, YOLO and COCO for detection
    if not task:
        example = "digit" if source.makes_originals else "classification"
        raise SearchmergeError(f"{where} has no 'task' in the study file (e.g. task: {example})")
    task = str(task)
    try:
        source.check(options, task)  # a source with tasks of its own names them when one is unknown
    except SearchmergeError as exc:
        raise SearchmergeError(f"{where}: {exc}") from None
    kind = task if task in kind_names() else source.task_kind(task)
    if kind is None:
        raise SearchmergeError(f"{where}: unknown task {task!r}{did_you_mean(task, kind_names())};"
                               f" known: {', '.join(kind_names())}")
    if source.kind is not None and kind != source.kind:
        raise SearchmergeError(f"{where}: task {task!r} is {kind}, but format {fmt!r} holds {source.kind} data")
    return DataRequest(model=model, format=fmt, options=options, task=task, kind=kind)



def check_fits(name: str, model: nn.Module, data: TaskData, kind: TaskKind) -> None:
    """The first sample of every split is of the task's kind, and the model takes a batch of it.

    A dataset factory's samples are the user's own, so their form is checked before any
    of them is trained on; the model is checked by the kind (see :meth:`TaskKind.check_model`).
    """
    for split in ("train", "val", "test"):
        kind.check_sample(f"model {name!r}, {data.description}, split {split!r}, sample 0", getattr(data, split)[0],
                          data.num_classes)
    batch = next(in_order(data.val, kind, 2))
    kind.check_model(name, model, batch, data.num_classes, data.description)
