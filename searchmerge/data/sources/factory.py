"""Data from the user's own code: ``format: python`` with a dataset factory.

``factory: package.module:function`` is called with ``kwargs`` and must return a mapping
``{"train": Dataset, "val": Dataset[, "test": Dataset]}`` of map-style datasets (with
``__len__`` and ``__getitem__``) whose samples are what the model's task takes:
``(image tensor C x H x W, class)`` for classification, ``(image tensor, {"boxes",
"labels"})`` for detection (see :mod:`searchmerge.data.tasks`). The model's ``task:`` names
the kind. A dataset with a ``targets`` sequence (as torchvision's have) gives the class of
each sample for stratified subsamples. A dataset's string attribute ``fingerprint``
identifies its content; without one, the data is identified by the factory's module file
(size and modification time), its kwargs and the split lengths.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from searchmerge.core.errors import SearchmergeError
from searchmerge.core.imports import import_callable
from searchmerge.data.sources.base import (
    SPLITS,
    Source,
    SourceContext,
    SplitData,
    TaskData,
    digest,
)

__all__ = ["FactorySource"]


class FactorySource(Source):
    """``format: python``: ``factory``, and optionally ``kwargs`` and ``classes``."""

    keys = frozenset({"factory", "kwargs", "classes"})

    def open(self, options: Mapping[str, Any], context: SourceContext, *, task: str) -> TaskData:
        where = "data (python)"
        if "factory" not in options:
            raise SearchmergeError(f"{where}: needs 'factory', a 'package.module:function' returning the splits")
        path = str(options["factory"])
        kwargs = options.get("kwargs") or {}
        if not isinstance(kwargs, Mapping):
            raise SearchmergeError(f"{where}: kwargs must be a mapping, got {kwargs!r}")
        factory = import_callable(path, f"{where}: factory")
        try:
            splits = factory(**kwargs)
        except TypeError as exc:
            raise SearchmergeError(f"{where}: calling {path!r} failed: {exc}") from None
        datasets = _checked_splits(path, splits)
        datasets.setdefault("test", datasets["val"])
        labels = {name: _targets(dataset) for name, dataset in datasets.items()}
        classes = options.get("classes")
        if classes is not None and (isinstance(classes, bool) or not isinstance(classes, int) or classes < 2):
            raise SearchmergeError(f"{where}: classes must be an integer of 2 or more, got {classes!r}")
        known = [v for v in labels.values() if v is not None]
        if classes is None and task == "classification" and len(known) == len(labels):
            classes = int(max(int(v.max()) for v in known)) + 1
        identity = {
            "format": "python", "factory": path, "kwargs": dict(kwargs), "module": _module_identity(factory),
            "lengths": {name: len(d) for name, d in datasets.items()},
            "own": {name: getattr(d, "fingerprint", None) for name, d in datasets.items()},
        }
        return SplitData(
            train=datasets["train"], val=datasets["val"], test=datasets["test"], kind=task, num_classes=classes,
            fingerprint=digest(identity), description=f"dataset factory {path!r}",
            labels={name: v for name, v in labels.items() if v is not None and task == "classification"},
            split_fix=f"splits stratified by class from {path!r} (e.g. scikit-learn's train_test_split(...,"
                      " stratify=labels)), another split ratio, or more data",
        )


def _checked_splits(path: str, splits: Any) -> dict[str, Any]:
    """The factory's mapping, refused unless it is the documented one."""
    documented = 'a mapping {"train": Dataset, "val": Dataset[, "test": Dataset]}'
    if not isinstance(splits, Mapping):
        raise SearchmergeError(f"dataset factory {path!r} returned {type(splits).__name__}, not {documented}")
    unknown = sorted(str(k) for k in splits if k not in SPLITS)
    missing = [k for k in ("train", "val") if k not in splits]
    if unknown or missing:
        problem = f"unknown split(s) {unknown}" if unknown else f"no {missing[0]!r} split"
        raise SearchmergeError(f"dataset factory {path!r} returned {problem}; it must return {documented}")
    for name, dataset in splits.items():
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise SearchmergeError(
                f"dataset factory {path!r}: split {name!r} is {type(dataset).__name__}, not a map-style Dataset"
                " (with __len__ and __getitem__)"
            )
        if len(dataset) == 0:
            raise SearchmergeError(f"dataset factory {path!r}: split {name!r} is empty")
    return dict(splits)


def _targets(dataset: Any) -> np.ndarray | None:
    targets = getattr(dataset, "targets", None)
    if targets is None:
        return None
    try:
        values = np.asarray(targets, dtype=np.int64)
    except (TypeError, ValueError):
        return None
    return values if values.shape == (len(dataset),) else None


def _module_identity(factory: Any) -> tuple[str, int, int] | None:
    try:
        path = Path(inspect.getfile(factory))
        stat = path.stat()
    except (TypeError, OSError):
        return None
    return (str(path), stat.st_size, stat.st_mtime_ns)
