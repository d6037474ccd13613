"""Checks that a model's splits can judge it, made before anything is trained.

A merged model is judged by its ratio to the original on the validation split, and a pass
near the target is confirmed on the test split. Neither means anything when a split lacks a
class that the model predicts (a presence detector whose test frames all hold nobody scores
1.0 by answering "nobody"), or holds so few examples of a class that one frame decides. So
``prepare`` counts, for every model and split, the examples of each class (a classifier's
labels; a detector's boxes), without reading any image, and refuses a split that lacks a
class or holds fewer than :data:`MIN_EXAMPLES` of one. It warns where a split is so small
that one example moves a ratio by more than the margin between the baseline and the target.

Example:
    >>> import numpy as np
    >>> from torch.utils.data import TensorDataset
    >>> import torch
    >>> from searchmerge.data.sources.base import SplitData
    >>> train, val, test = (TensorDataset(torch.zeros(4, 1)) for _ in range(3))
    >>> data = SplitData(train, val, test, "classification", 2, "f", "toy data",
    ...                  labels={"train": np.array([0, 1, 0, 1]), "val": np.array([0, 0, 0, 0]),
    ...                          "test": np.array([0, 1, 1, 1])})
    >>> check_data("toy", data, target=0.9).problems
    ("split 'val' has no example of class 1", "split 'test' has 1 example of class 0 (fewer than 2, the minimum)")
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from searchmerge.core.errors import SearchmergeError
from searchmerge.data.sources.base import SPLITS, TaskData

__all__ = ["MIN_EXAMPLES", "DataCheck", "SplitCount", "check_data", "check_workload_data", "split_counts"]

#: The fewest examples of each class a split may hold (a detector: boxes of each class).
#: With one, the class's share of the metric is all or nothing.
MIN_EXAMPLES = 2

#: What to try when a source does not say (its ``split_fix``).
DEFAULT_FIX = "another split of the data, with every class in every split (stratified), or more data"


@dataclass(frozen=True)
class SplitCount:
    """What one split holds.

    Attributes:
        split: ``train``, ``val`` or ``test``.
        size: Its samples (images, frames).
        per_class: Examples of each class (a detector: boxes), or ``None`` where the classes are
            not known without reading every sample (a dataset factory without ``targets``).
    """

    split: str
    size: int
    per_class: Mapping[int, int] | None


@dataclass(frozen=True)
class DataCheck:
    """One model's splits, counted and judged.

    Attributes:
        model: The model's name.
        counts: Each split's count (test left out when it is the validation split).
        problems: Why the splits cannot judge the model (a refusal), one phrase each.
        warnings: What makes its ratios coarse, one line each.
        fix: What to try, for this model's data source.
    """

    model: str
    counts: tuple[SplitCount, ...]
    problems: tuple[str, ...]
    warnings: tuple[str, ...]
    fix: str

    @property
    def line(self) -> str:
        """The refusal as one line naming the model, the splits, the classes and the fix."""
        return f"model {self.model!r}: {'; '.join(self.problems)}: its ratios would mean nothing; try {self.fix}"


def split_counts(data: TaskData) -> tuple[SplitCount, ...]:
    """Each split's size and examples per class, read from the labels (no image is read)."""
    counts = []
    for split in SPLITS:
        if split == "test" and data.test is data.val:
            continue  # no test split of its own: the validation split stands in
        size = len(getattr(data, split))
        per_class: Counter[int] | None = None
        if data.kind == "detection":
            objects = getattr(data, "object_labels", lambda _split: None)(split)
            if objects is not None:
                per_class = Counter(int(c) for sample in objects for c in sample)
        else:
            labels = data.class_labels(split)
            if labels is not None:
                per_class = Counter(int(c) for c in labels)
        counts.append(SplitCount(split, size, per_class))
    return tuple(counts)


def predicted_classes(data: TaskData) -> list[int]:
    """The classes a model on ``data`` predicts (a detector's object classes, without the background)."""
    if data.num_classes is None:
        return []
    return list(range(1, data.num_classes)) if data.kind == "detection" else list(range(data.num_classes))


def check_data(model: str, data: TaskData, *, target: float, min_examples: int = MIN_EXAMPLES) -> DataCheck:
    """Count ``model``'s splits and judge them against ``min_examples`` and the study's ``target``."""
    names = tuple(getattr(data, "class_names", ()) or ())
    what = "box" if data.kind == "detection" else "example"

    def named(label: int) -> str:
        known = label < len(names) and names[label] != str(label)
        return f"class {label} ({names[label]})" if known else f"class {label}"

    counts = split_counts(data)
    problems: list[str] = []
    warnings: list[str] = []
    classes = predicted_classes(data)
    for count in counts:
        if count.per_class is None:
            if count.split == "train":
                warnings.append(f"model {model!r}: the classes of {data.description} are not known without reading"
                                " every sample (a dataset with a 'targets' list says them): its splits are not checked")
            continue
        known = classes or sorted(count.per_class)
        missing = [c for c in known if count.per_class.get(c, 0) == 0]
        if missing:
            problems.append(f"split {count.split!r} has no {what} of {', '.join(named(c) for c in missing)}")
        for c in known:
            found = count.per_class.get(c, 0)
            if 0 < found < min_examples:
                plural = "" if found == 1 else ("es" if what == "box" else "s")
                problems.append(f"split {count.split!r} has {found} {what}{plural} of {named(c)} (fewer than"
                                f" {min_examples}, the minimum)")
    margin = 1.0 - target
    small = [c for c in counts if c.split != "train" and 0 < c.size and 1.0 / c.size > margin]
    if small:
        unit = "image" if data.kind == "detection" else "example"
        fewest = min(c.size for c in small)
        sizes = " and ".join(f"{c.split!r} has {c.size}" for c in small)
        warnings.append(
            f"model {model!r}: split {sizes} {unit}s: one {unit} of {fewest} moves the metric by {1.0 / fewest:.3f},"
            f" and a ratio by at least as much, more than the {margin:.3f} margin between the baseline and the target"
            f" {target:g}: a plan may pass or fail on one {unit}"
        )
    fix = getattr(data, "split_fix", "") or DEFAULT_FIX
    return DataCheck(model, counts, tuple(problems), tuple(warnings), fix)


def check_workload_data(
    data: Mapping[str, TaskData], *, target: float, min_examples: int = MIN_EXAMPLES
) -> dict[str, DataCheck]:
    """Every model's :func:`check_data`; a refusal names every model whose splits cannot judge it.

    Raises:
        SearchmergeError: One line per model whose splits lack a class or hold fewer than
            ``min_examples`` of one, each naming the split, the class and what to try.
    """
    checks = {name: check_data(name, task_data, target=target, min_examples=min_examples)
              for name, task_data in data.items()}
    refused = [check.line for check in checks.values() if check.problems]
    if len(refused) == 1:
        raise SearchmergeError(refused[0])
    if refused:
        lines = "\n".join(f"  {line}" for line in refused)
        raise SearchmergeError(f"the splits of {len(refused)} models cannot judge them (one line each):\n{lines}")
    return checks
