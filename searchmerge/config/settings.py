"""The settings of a study file beyond its models: target, data, training, evaluator.

Parsed and validated once from the YAML document, so that a bad value is reported
with its name before any training starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from searchmerge.config.deploy import DeploySettings
from searchmerge.core.errors import SearchmergeError
from searchmerge.core.keys import check_keys

#: The keys of a study file's top-level ``data:`` section (each model's own is ``models[].data``).
DATA_KEYS = ("image_size", "channels", "workers", "cache")


@dataclass(frozen=True)
class TrainSettings:
    """Plain supervised training of one model (pretraining and fine-tuning the originals)."""

    epochs: int = 8
    lr: float = 0.003
    batch_size: int = 64
    weight_decay: float = 5e-4


@dataclass(frozen=True)
class EvaluatorSettings:
    """How a plan is retrained and judged.

    Attributes:
        fraction: Share of each model's training split used (stratified subsample).
        max_epochs: Retraining budget, in epochs of the subsample.
        checks_per_epoch: How often validation accuracy is checked.
        lr: Learning rate of the joint retraining (Adam).
        batch_size: Samples per model per step.
        init: How a shared copy starts: ``first`` member's weights or ``average``.
        recalibrate: Recompute the batch-norm statistics of merged models before
            the first check (cheap, and it removes most of a merge's first shock).
        early_exit: Stop on success, or when a model cannot reach its target in
            the remaining budget; off means full retraining judged at the end.
        min_checks: Checks (after the one before training) before judging a plan hopeless.
        optimism: Multiplies the recent learning rate of a model's curve when
            extrapolating; above 1 keeps marginal plans alive longer.
        pace_decay: Learning curves flatten: each further check is expected to gain
            at most this share of the previous check's gain, in (0, 1]; 1 extrapolates
            the recent pace linearly over the whole remaining budget.
        confirm_margin: A pass within this margin above the target is confirmed
            on the test split before it counts.
    """

    fraction: float = 0.5
    max_epochs: int = 8
    checks_per_epoch: int = 1
    lr: float = 0.002
    batch_size: int = 64
    init: str = "average"
    recalibrate: bool = True
    early_exit: bool = True
    min_checks: int = 2
    optimism: float = 1.5
    pace_decay: float = 1.0
    confirm_margin: float = 0.02

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise SearchmergeError(f"evaluator.fraction must be in (0, 1], got {self.fraction}")
        if not 0 < self.pace_decay <= 1:
            raise SearchmergeError(f"evaluator.pace_decay must be in (0, 1], got {self.pace_decay}")
        if self.init not in ("first", "average"):
            raise SearchmergeError(f"evaluator.init must be 'first' or 'average', got {self.init!r}")
        for name in ("max_epochs", "checks_per_epoch", "batch_size"):
            if getattr(self, name) < 1:
                raise SearchmergeError(f"evaluator.{name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class StudySettings:
    """Everything a study file sets besides its models."""

    target: float = 0.95
    seed: int = 0
    image_size: int = 32
    channels: int = 3
    #: Processes that read and decode data for each ``DataLoader`` (0: the calling process).
    workers: int = 0
    #: Keep decoded, resized images in a cache folder next to the study's store.
    cache: bool = True
    pretrain_task: str = "digit"
    pretrain: TrainSettings = field(default_factory=TrainSettings)
    finetune: TrainSettings = field(default_factory=TrainSettings)
    evaluator: EvaluatorSettings = field(default_factory=EvaluatorSettings)
    #: The evaluator on a drift scenario's data: ``evaluator`` with the study file's
    #: ``drift_evaluator`` section on top. Adapting to new data is slower work than
    #: re-judging a plan on data the models know, so it may need a larger budget.
    drift_evaluator: EvaluatorSettings = field(default_factory=EvaluatorSettings)
    #: The edge box (``deploy:``): with it, the search maximises the simulated frames processed.
    deploy: DeploySettings | None = None
    #: The footage of ``format: video`` models (the ``video:`` section: source, labels, split, ...),
    #: checked by that source when it reads the footage.
    video: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_target(self.target)

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> StudySettings:
        """Read the settings of a study file's YAML document (missing keys keep their defaults)."""
        data = document.get("data") or {}
        if not isinstance(data, Mapping):
            raise SearchmergeError(f"data must be a mapping of data settings, got {data!r}")
        check_keys("data", data, DATA_KEYS)
        workers = data.get("workers", cls.workers)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise SearchmergeError(f"data.workers must be an integer >= 0, got {workers!r}")
        pretrain = dict(document.get("pretrain") or {})
        task = pretrain.pop("task", cls.pretrain_task)
        evaluator = document.get("evaluator") or {}
        drift = document.get("drift_evaluator") or {}
        if not isinstance(drift, Mapping):
            raise SearchmergeError(f"drift_evaluator must be a mapping of evaluator settings, got {drift!r}")
        return cls(
            target=_number(document.get("target", cls.target), "target"),
            seed=int(document.get("seed", cls.seed)),
            image_size=int(data.get("image_size", cls.image_size)),
            channels=int(data.get("channels", cls.channels)),
            workers=workers,
            cache=bool(data.get("cache", cls.cache)),
            pretrain_task=str(task),
            pretrain=_section(TrainSettings, pretrain, "pretrain"),
            finetune=_section(TrainSettings, document.get("finetune") or {}, "finetune"),
            evaluator=_section(EvaluatorSettings, evaluator, "evaluator"),
            drift_evaluator=_section(EvaluatorSettings, {**evaluator, **drift}, "drift_evaluator"),
            deploy=DeploySettings.from_document(document.get("deploy")),
            video=_mapping(document.get("video") or {}, "video"),
        )

    def with_target(self, target: float | None) -> StudySettings:
        return self if target is None else dataclasses.replace(self, target=target)

    def with_evaluator(self, **changes: Any) -> StudySettings:
        """These settings with ``changes`` to the evaluator, on drifted data as well."""
        return dataclasses.replace(
            self,
            evaluator=dataclasses.replace(self.evaluator, **changes),
            drift_evaluator=dataclasses.replace(self.drift_evaluator, **changes),
        )


def check_target(target: float) -> float:
    """An accuracy target is a share of the original accuracy, in (0, 1]."""
    if not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise SearchmergeError(f"target must be in (0, 1] (a share of each model's original accuracy), got {target}")
    return float(target)


def _number(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SearchmergeError(f"{name} must be a number, got {value!r}") from None


def _mapping(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise SearchmergeError(f"{name} must be a mapping, got {value!r}")
    return dict(value)


def _section(kind: type, values: Mapping[str, Any], name: str) -> Any:
    values = _mapping(values, name)
    known = {f.name: f.type for f in dataclasses.fields(kind)}
    check_keys(name, values, known)
    defaults = kind()
    converted = {}
    for key, value in values.items():
        default = getattr(defaults, key)
        try:
            converted[key] = type(default)(value) if not isinstance(default, bool) else bool(value)
        except (TypeError, ValueError):
            raise SearchmergeError(f"{name}.{key} must be a {type(default).__name__}, got {value!r}") from None
    return kind(**converted)
