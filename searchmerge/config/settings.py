"""The settings of a study file beyond its models: target, data, training, evaluator, drift, deploy.

Parsed and validated once from the YAML document, by the schema of
:mod:`searchmerge.config.schema` (each setting's type and range is declared on its field),
so that a bad value is reported with its path before any training starts; nothing past
:mod:`searchmerge.config` sees the document. :meth:`StudySettings.to_document` writes the
settings back (a deployment's manifest keeps them for the edge).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from searchmerge.config import schema
from searchmerge.config.deploy import DeploySettings
from searchmerge.config.drift import DriftScenario, drift_scenarios
from searchmerge.config.teacher import TeacherSettings
from searchmerge.core.errors import SearchmergeError
from searchmerge.core.feasibility import ACCEPT_RULES
from searchmerge.core.keys import check_keys

#: The keys of a study file's top-level ``data:`` section (each model's own is ``models[].data``).
DATA_KEYS = ("image_size", "channels", "workers", "cache")
#: The top-level keys of a study file that :class:`StudySettings` reads (the others are
#: ``name``, ``models`` and ``storage``: see :mod:`searchmerge.config.study`).
SETTINGS_KEYS = (
    "seed", "target", "drift_baseline", "accept", "data", "pretrain", "finetune", "evaluator", "drift_evaluator", "drift", "deploy",
    "video", "teacher",
)
#: Top-level keys that belong to the study file as a whole; :meth:`StudySettings.from_document` skips them.
STUDY_FILE_KEYS = ("name", "models", "storage")


@dataclass(frozen=True)
class TrainSettings:
    """Plain supervised training of one model (pretraining and fine-tuning the originals)."""

    epochs: int = schema.setting(8, at_least=1)
    lr: float = schema.setting(0.003, above=0)
    batch_size: int = schema.setting(64, at_least=1)
    weight_decay: float = schema.setting(5e-4, at_least=0)

    def __post_init__(self) -> None:
        schema.validate(self, "training")


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
        loss_weights: Per-model loss weights, as Gemel weighs them: each model's loss is
            multiplied by ``(target / its latest ratio) ** loss_weights``, capped at
            ``LOSS_WEIGHT_CAP``, so a model lagging its target pulls the shared weights
            harder. 0 (the default) weighs every model 1; Gemel uses 0.75.
        accept: How a model's ratio is accepted against the target (a study file's
            top-level ``accept:``): its measured value (``point``, the default) or the
            lower end of its 95% Wilson interval (``lower-bound``); see
            :func:`searchmerge.core.feasibility.accepted_ratio`.
        accept_margin: Subtracted from the accepted ratio: a plan must pass by this much.
    """

    fraction: float = schema.setting(0.5, above=0, at_most=1)
    max_epochs: int = schema.setting(8, at_least=1)
    checks_per_epoch: int = schema.setting(1, at_least=1)
    lr: float = schema.setting(0.002, above=0)
    batch_size: int = schema.setting(64, at_least=1)
    init: str = schema.setting("average", choices=("first", "average"))
    recalibrate: bool = True
    early_exit: bool = True
    min_checks: int = schema.setting(2, at_least=0)
    optimism: float = schema.setting(1.5, above=0)
    pace_decay: float = schema.setting(1.0, above=0, at_most=1)
    confirm_margin: float = schema.setting(0.02, at_least=0)
    loss_weights: float = schema.setting(0.0, at_least=0)
    accept: str = schema.setting("point", choices=ACCEPT_RULES)
    accept_margin: float = schema.setting(0.0, at_least=0, at_most=0.5)

    def __post_init__(self) -> None:
        schema.validate(self, "evaluator")


@dataclass(frozen=True)
class AcceptSettings:
    """A study file's ``accept:`` section: ``lower-bound``, or ``{rule: ..., margin: ...}``.

    It sets the evaluator's ``accept`` and ``accept_margin`` (on drifted data too), so the
    evaluator's early exit, the constraint stored on each trial and every reader judge by it.
    """

    rule: str = schema.setting("point", choices=ACCEPT_RULES)
    margin: float = schema.setting(0.0, at_least=0, at_most=0.5, hint="a ratio the plan must pass the target by")

    @classmethod
    def from_document(cls, section: Any) -> AcceptSettings:
        """``accept: lower-bound`` (a rule alone) or a mapping of ``rule`` and ``margin``."""
        if isinstance(section, str):
            section = {"rule": section}
        return schema.parse(cls, section, "accept")


#: The largest per-model loss weight (see ``EvaluatorSettings.loss_weights``).
LOSS_WEIGHT_CAP = 4.0


@dataclass(frozen=True)
class StudySettings:
    """Everything a study file sets besides its models."""

    target: float = schema.setting(0.95, above=0, at_most=1, hint="a share of each model's original accuracy")
    seed: int = schema.setting(0, at_least=0)
    #: What a model is held to on drifted data: its ``original`` (day) baseline, or, when sharing nothing
    #: cannot reach that there, what it can (``reachable``; :mod:`searchmerge.search.drift_targets`).
    drift_baseline: str = schema.setting("original", choices=("original", "reachable"))
    image_size: int = schema.setting(32, at_least=1)
    channels: int = schema.setting(3, at_least=1)
    #: Processes that read and decode data for each ``DataLoader`` (0: the calling process).
    workers: int = schema.setting(0, at_least=0)
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
    #: The study file's own drift scenarios (``drift:``), by name; every workload also has the
    #: built-in ones (:func:`searchmerge.search.scenarios.scenarios`).
    drift: Mapping[str, DriftScenario] = field(default_factory=dict)
    #: The model that labels the study's frames (``teacher:``; :mod:`searchmerge.config.teacher`).
    teacher: TeacherSettings | None = None

    def __post_init__(self) -> None:
        schema.validate(self, "")

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> StudySettings:
        """Read the settings of a study file's YAML document (missing keys keep their defaults).

        ``name``, ``models`` and ``storage`` are the study file's (:mod:`searchmerge.config.study`)
        and are skipped; any other unknown key, a value of the wrong type or out of range is
        refused with its path.
        """
        own = {k: v for k, v in schema.mapping(document, "a study file").items() if k not in STUDY_FILE_KEYS}
        check_keys("study file", own, SETTINGS_KEYS)
        top = schema.values(cls, {k: own[k] for k in ("target", "seed", "drift_baseline") if k in own}, "")
        data = schema.values(cls, schema.mapping(own.get("data"), "data", "data settings"), "data", fields=DATA_KEYS)
        pretrain = schema.mapping(own.get("pretrain"), "pretrain", "training settings")
        check_keys("pretrain", pretrain, ["task", *(f.name for f in dataclasses.fields(TrainSettings))])
        task = schema.typed("pretrain.task", pretrain.pop("task"), str) if "task" in pretrain else "digit"
        evaluator = schema.mapping(own.get("evaluator"), "evaluator", "evaluator settings")
        drift = schema.mapping(own.get("drift_evaluator"), "drift_evaluator", "evaluator settings")
        if "accept" in own:
            given = [f"{where}.{key}" for where, section in (("evaluator", evaluator), ("drift_evaluator", drift))
                     for key in ("accept", "accept_margin") if key in section]
            if given:
                raise SearchmergeError(f"accept is given twice: at the top and as {', '.join(given)}; keep one")
            accept = AcceptSettings.from_document(own["accept"])
            evaluator = {**evaluator, "accept": accept.rule, "accept_margin": accept.margin}
        return cls(
            **top,
            **data,
            pretrain_task=task,
            pretrain=schema.parse(TrainSettings, pretrain, "pretrain"),
            finetune=schema.parse(TrainSettings, own.get("finetune"), "finetune"),
            evaluator=schema.parse(EvaluatorSettings, evaluator, "evaluator"),
            drift_evaluator=schema.parse(EvaluatorSettings, {**evaluator, **drift}, "drift_evaluator"),
            deploy=DeploySettings.from_document(own.get("deploy")),
            video=schema.mapping(own.get("video"), "video"),
            drift=drift_scenarios(own.get("drift")),
            teacher=TeacherSettings.from_document(own["teacher"]) if own.get("teacher") is not None else None,
        )

    def to_document(self) -> dict[str, Any]:
        """These settings as a study file's sections: :meth:`from_document` reads them back equal."""
        document: dict[str, Any] = {
            "target": self.target,
            "seed": self.seed,
            "drift_baseline": self.drift_baseline,
            "data": {"image_size": self.image_size, "channels": self.channels, "workers": self.workers,
                     "cache": self.cache},
            "pretrain": {"task": self.pretrain_task, **dataclasses.asdict(self.pretrain)},
            "finetune": dataclasses.asdict(self.finetune),
            "evaluator": dataclasses.asdict(self.evaluator),
            "drift_evaluator": dataclasses.asdict(self.drift_evaluator),
            "video": dict(self.video),
            "drift": {name: scenario.to_document() for name, scenario in self.drift.items()},
        }
        if self.deploy is not None:
            document["deploy"] = self.deploy.to_dict()
        if self.teacher is not None:
            document["teacher"] = self.teacher.to_document()
        return document

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
    """An accuracy target is a share of the original accuracy, in (0, 1] (the study file's rule)."""
    return float(schema.values(StudySettings, {"target": target}, "")["target"])
