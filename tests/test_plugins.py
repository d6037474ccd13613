"""The documented plug-in points: a data source (``register_source``) and a task kind
(``register_kind``), defined here, registered by name, and used by a study file that
``prepare`` and ``evaluate`` run."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from searchmerge.cli.commands import main
from searchmerge.config.study import open_study_file
from searchmerge.core.errors import SearchmergeError
from searchmerge.data.sources import (
    Source,
    SourceContext,
    SplitData,
    format_names,
    get_source,
    register_source,
)
from searchmerge.data.sources.base import SPLITS, digest
from searchmerge.data.tasks import Batch, get_kind, kind_names, register_kind
from searchmerge.data.tasks.classification import Classification

FORMAT = "test-brightness"
KIND = "test-bright-or-dark"


class _Brightness(Dataset[tuple[torch.Tensor, int]]):
    """Dark (class 0) and bright (class 1) 3 x 8 x 8 images, alternating, with a little noise."""

    def __init__(self, count: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.targets = [i % 2 for i in range(count)]
        self.images = [(0.25 + 0.5 * t + 0.1 * torch.randn(3, 8, 8, generator=generator)).clamp(0, 1)
                       for t in self.targets]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], self.targets[index]


class BrightnessSource(Source):
    """``format: test-brightness``, with ``count`` images per split, made in memory."""

    keys = frozenset({"count"})
    opened: ClassVar[int] = 0

    def check(self, options: Mapping[str, Any], task: str) -> None:
        count = options.get("count", 16)
        if isinstance(count, bool) or not isinstance(count, int) or count < 4:
            raise SearchmergeError(f"data ({FORMAT}): count must be an integer of at least 4, got {count!r}")

    def open(self, options: Mapping[str, Any], context: SourceContext, *, task: str) -> SplitData:
        BrightnessSource.opened += 1
        count = options.get("count", 16)
        splits = {name: _Brightness(count, context.seed + i) for i, name in enumerate(SPLITS)}
        return SplitData(
            **splits, kind=task, num_classes=2, description=f"{count} {FORMAT} images per split",
            fingerprint=digest({"format": FORMAT, "count": count, "seed": context.seed}),
            labels={name: np.asarray(split.targets) for name, split in splits.items()},
        )


class BrightOrDark(Classification):
    """A task kind of its own: classification's batches, loss and metric, counted as they are used."""

    name = KIND
    metric_name = "bright-or-dark accuracy"
    calls: ClassVar[Counter[str]] = Counter()

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        self.calls["loss"] += 1
        return super().loss(model, batch)

    def metric(self, model: nn.Module, batches: Iterable[Batch], device: torch.device) -> float:
        self.calls["metric"] += 1
        return super().metric(model, batches, device)


def tiny_model() -> nn.Module:
    """Two convolutions and a head: two of these share every layer."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


STUDY = f"""
name: plugins
seed: 0
target: 0.5
evaluator: {{fraction: 1.0, max_epochs: 1, checks_per_epoch: 1, batch_size: 8, lr: 0.001, init: first, early_exit: false}}
models:
  - {{name: left, factory: "tests.test_plugins:tiny_model", input_shape: [3, 8, 8], task: {KIND},
     data: {{format: {FORMAT}, count: 16}}}}
  - {{name: right, factory: "tests.test_plugins:tiny_model", input_shape: [3, 8, 8], task: {KIND},
     data: {{format: {FORMAT}, count: 24}}}}
"""


@pytest.fixture(scope="module", autouse=True)
def _registered() -> None:
    """Register the plug-ins, once per session (a registry cannot forget a name)."""
    if FORMAT not in format_names():
        register_source(FORMAT, "tests.test_plugins:BrightnessSource")
    if KIND not in kind_names():
        register_kind(KIND, "tests.test_plugins:BrightOrDark")


def test_registered_plugins_are_found_by_name() -> None:
    assert isinstance(get_source(FORMAT), BrightnessSource) and FORMAT in format_names()
    assert isinstance(get_kind(KIND), BrightOrDark) and KIND in kind_names()
    with pytest.raises(SearchmergeError, match=f"data format '{FORMAT}' is already registered"):
        register_source(FORMAT, "tests.test_plugins:BrightnessSource")
    with pytest.raises(SearchmergeError, match=f"task kind '{KIND}' is already registered"):
        register_kind(KIND, "tests.test_plugins:BrightOrDark")
    register_source("test-not-a-source", "tests.test_plugins:BrightOrDark")
    with pytest.raises(SearchmergeError, match="is not a Source"):
        get_source("test-not-a-source")


def test_a_study_file_uses_a_registered_source_and_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "plugins.yaml"
    path.write_text(STUDY)
    storage = f"sqlite:///{tmp_path / 'plugins.db'}"
    opened, calls = BrightnessSource.opened, Counter(BrightOrDark.calls)

    assert main(["prepare", str(path), "--storage", storage]) == 0
    out = capsys.readouterr().out
    assert out.count("bright-or-dark accuracy") == 2  # each model's baseline, by the kind's metric
    assert BrightnessSource.opened > opened and BrightOrDark.calls["metric"] > calls["metric"]

    assert main(["evaluate", str(path), "--storage", storage, "--share", "all", "--json"]) == 0
    evaluation = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in evaluation["models"]] == ["left", "right"]
    assert evaluation["saved_bytes"] > 0  # the two models share their layers
    assert BrightOrDark.calls["loss"] > calls["loss"]  # retrained with the kind's loss

    bad = tmp_path / "bad.yaml"
    bad.write_text(STUDY.replace("count: 24", "count: 2"))
    with pytest.raises(SearchmergeError, match="count must be an integer of at least 4"):
        open_study_file(bad, storage=storage)  # the source checks its options when the file is opened
