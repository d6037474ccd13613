"""The retraining evaluator: does a sharing plan keep every model accurate?

The merged models are retrained jointly (each model's loss on its own data,
summed, so shared weights get every model's gradient) on a stratified subsample
of each model's training data, and scored on their validation splits at regular
checks. It exits early on success (every model at ``target`` x baseline at one
check) and on hopeless failure (a model's learning curve, extrapolated
optimistically over the remaining budget, cannot reach its target; or the caller,
e.g. an Optuna pruner, says stop). Validation accuracy on small splits is noisy,
so a pass by a hair is confirmed on the test split before it counts.

Every ratio is kept with the number of samples it was measured on and its 95% interval
(:mod:`searchmerge.core.uncertainty`), and a study may accept a ratio on that interval's
lower end or with a margin (``accept:``): the evaluator's own pass at a check and the
stored constraint judge by the same :func:`~searchmerge.core.feasibility.accepted_ratio`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from searchmerge.analysis import AnalysisResult, analyze
from searchmerge.analysis.memory import model_tensors, unique_tensor_bytes
from searchmerge.config.settings import LOSS_WEIGHT_CAP, EvaluatorSettings, check_target
from searchmerge.config.study import StudyFile
from searchmerge.core.errors import SearchmergeError
from searchmerge.core.feasibility import accepted_ratio, constraint_value, is_feasible
from searchmerge.core.progress import Progress
from searchmerge.core.space import SharingPlan
from searchmerge.core.uncertainty import Interval, exact, wilson
from searchmerge.data.sources import subsample
from searchmerge.storage.store import CheckpointKey, variant_of
from searchmerge.training.deployment import export_deployment
from searchmerge.training.merge import load_merged_state, merge_models, merged_state
from searchmerge.training.prepare import PreparedWorkload, prepare_study
from searchmerge.training.train import (
    batch_norms,
    batches,
    default_device,
    recalibrate_batch_norm,
    repeatable_kernels,
    score,
    score_interval,
    steps_per_epoch,
)

__all__ = [
    "Cost",
    "Evaluation",
    "Evaluator",
    "ModelOutcome",
    "ObserveFn",
    "ReportFn",
    "StartPoint",
    "StopPolicy",
    "evaluate_plan",
    "evaluator_identity",
    "export_plan",
    "full_retraining",
    "merged_key",
    "ratio_interval",
]

#: Called after every check with (check index, worst accuracy ratio); returns True to stop (prune).
ReportFn = Callable[[int, float], bool]
#: Called after every check with (check index, each model's ratio, the merged models).
ObserveFn = Callable[[int, Mapping[str, float], Mapping[str, nn.Module]], None]


def ratio_interval(
    ratio: float, baseline: float, samples: int, method: str, bounds: tuple[float, float] | None = None
) -> Interval | None:
    """The 95% interval of a ratio measured on ``samples`` samples against a ``baseline``.

    ``method``: ``wilson`` (the metric is a proportion: its accuracy's Wilson interval over
    the baseline), ``bootstrap`` (the metric's bootstrap ``bounds`` over the baseline),
    ``exact`` (an unchanged model on its baseline's data: nothing to estimate), or ``""``
    (no interval: a metric that is not a proportion and was not bootstrapped, or a record
    made before sample counts were kept).
    """
    if method == "exact":
        return exact(ratio, samples)
    if method == "wilson" and samples > 0:
        return wilson(ratio * baseline, samples).scaled(baseline)
    if method == "bootstrap" and bounds is not None:
        return Interval(bounds[0], bounds[1], samples, "bootstrap").scaled(baseline)
    return None


@dataclass(frozen=True)
class ModelOutcome:
    """One merged model's accuracy at the deciding check, with how many samples measured it."""

    name: str
    accuracy: float
    baseline: float
    ratio: float
    meets_target: bool
    test_ratio: float | None = None
    #: The check that measured ``ratio`` (the deciding check unless the model was not due then).
    check: int = 0
    #: Whether its weights trained: False for a model the plan shares nothing with (it keeps
    #: its weights bit for bit) unless, on new data, it missed its target there, and for a frozen one.
    retrained: bool = True
    #: The validation samples ``ratio`` was measured on (0: a record made before counts were kept).
    samples: int = 0
    #: How its interval is computed: ``wilson``, ``bootstrap``, ``exact`` or ``""`` (none; see :func:`ratio_interval`).
    interval: str = ""
    #: The bootstrap interval of the merged model's metric (``bootstrap`` only).
    metric_bounds: tuple[float, float] | None = None
    #: The test samples and the original's test metric, where ``test_ratio`` was measured.
    test_samples: int = 0
    test_baseline: float | None = None

    @property
    def ratios(self) -> tuple[float, ...]:
        """Every ratio measured for this model: validation, and test where it was confirmed."""
        return (self.ratio,) if self.test_ratio is None else (self.ratio, self.test_ratio)

    @property
    def ratio_interval(self) -> Interval | None:
        """The 95% interval of the validation ratio (``None`` where there is none)."""
        return ratio_interval(self.ratio, self.baseline, self.samples, self.interval, self.metric_bounds)

    @property
    def baseline_interval(self) -> Interval | None:
        """The 95% interval of the original's validation accuracy, on the same samples (Wilson's only)."""
        return wilson(self.baseline, self.samples) if self.interval in ("wilson", "exact") and self.samples else None

    @property
    def test_interval(self) -> Interval | None:
        """The 95% interval of the test ratio, where one was measured."""
        if self.test_ratio is None or self.test_baseline is None:
            return None
        return ratio_interval(self.test_ratio, self.test_baseline, self.test_samples, self.interval)

    def accepted_ratios(self, rule: str = "point", margin: float = 0.0) -> tuple[float, ...]:
        """Each of :attr:`ratios` as the study's acceptance judges it (its point or lower end, less ``margin``)."""
        intervals = (self.ratio_interval, self.test_interval)
        accepted = []
        for ratio, interval in zip(self.ratios, intervals):
            if rule != "point" and interval is None:
                raise SearchmergeError(f"model {self.name!r} has no interval to accept its ratio on ({rule})")
            accepted.append(accepted_ratio(ratio, interval.low if interval else ratio, rule=rule, margin=margin))
        return tuple(accepted)

    def to_dict(self) -> dict[str, Any]:
        """Its fields, with the intervals spelled out (what ``evaluate --json`` prints)."""
        intervals = {"ratio_interval": self.ratio_interval, "baseline_interval": self.baseline_interval,
                     "test_interval": self.test_interval}
        return {**asdict(self), **{k: None if v is None else v.to_dict() for k, v in intervals.items()}}


_OUTCOME_FIELDS = frozenset(f.name for f in dataclasses.fields(ModelOutcome))


def _outcome(data: Mapping[str, Any]) -> ModelOutcome:
    """A :class:`ModelOutcome` as :meth:`ModelOutcome.to_dict` wrote it (JSON lists back to tuples)."""
    fields = {k: v for k, v in data.items() if k in _OUTCOME_FIELDS}
    if fields.get("metric_bounds") is not None:
        fields["metric_bounds"] = tuple(fields["metric_bounds"])
    return ModelOutcome(**fields)


@dataclass(frozen=True)
class Cost:
    """What an evaluation spent."""

    steps: int
    samples: int
    seconds: float
    checks: int


@dataclass(frozen=True)
class Evaluation:
    """The outcome of evaluating one plan.

    Feasibility is not stored but derived, by :mod:`searchmerge.core.feasibility`'s one rule,
    from the measured ratios: a pass on validation whose confirmation on the test split
    failed is infeasible here exactly as it is for the samplers.
    """

    plan: SharingPlan
    stop_reason: str
    target: float
    models: tuple[ModelOutcome, ...]
    unique_bytes: int
    saved_bytes: int
    cost: Cost
    curve: tuple[float, ...] = field(default=())
    #: The acceptance it was judged by (the evaluator's ``accept`` and ``accept_margin``).
    accept: str = "point"
    accept_margin: float = 0.0

    @property
    def worst_ratio(self) -> float:
        """The worst validation ratio at the deciding check (what the learning curve shows)."""
        return min(m.ratio for m in self.models)

    @property
    def worst_model(self) -> ModelOutcome:
        """The model with the worst accepted ratio on any split: the one that decides the constraint."""
        return min(self.models, key=lambda m: min(self.accepted(m)))

    def accepted(self, model: ModelOutcome) -> tuple[float, ...]:
        """``model``'s ratios as this evaluation's acceptance judges them."""
        return model.accepted_ratios(self.accept, self.accept_margin)

    @property
    def constraint(self) -> float:
        """``target`` minus the worst accepted ratio on any split (feasible when ``<= 0``)."""
        return constraint_value(self.target, (r for m in self.models for r in self.accepted(m)))

    @property
    def feasible(self) -> bool:
        return is_feasible(self.constraint)

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": sorted(self.plan.shared),
            "plan_hash": self.plan.plan_hash,
            "feasible": self.feasible,
            "constraint": self.constraint,
            "stop_reason": self.stop_reason,
            "target": self.target,
            "models": [m.to_dict() for m in self.models],
            "unique_bytes": self.unique_bytes,
            "saved_bytes": self.saved_bytes,
            "cost": asdict(self.cost),
            "curve": list(self.curve),
            "accept": self.accept,
            "accept_margin": self.accept_margin,
        }

    @classmethod
    def from_dict(cls, plan: SharingPlan, data: Mapping[str, Any]) -> Evaluation:
        """The evaluation :meth:`to_dict` wrote (e.g. kept with a checkpoint)."""
        return cls(
            plan=plan,
            stop_reason=data["stop_reason"],
            target=data["target"],
            models=tuple(_outcome(m) for m in data["models"]),
            unique_bytes=data["unique_bytes"],
            saved_bytes=data["saved_bytes"],
            cost=Cost(**data["cost"]),
            curve=tuple(data["curve"]),
            accept=data.get("accept", "point"),
            accept_margin=data.get("accept_margin", 0.0),
        )


@dataclass(frozen=True)
class StopPolicy:
    """When the retraining of a plan stops, and why: one decision after each check.

    The reasons, in the order they are considered:

    - ``success``: every model passed (confirmed on the test split where marginal), with
      early exit; without it (full retraining) only a pass at the last check counts;
    - ``budget``: the last check, passed or not (a failed confirmation there decides);
    - ``pruned``: the caller (an Optuna pruner) said stop, at a check the plan failed;
    - ``hopeless``: with early exit, some model's learning curve cannot reach its target.

    Args:
        early_exit: Stop on success and on hopeless failure.
        last_check: The last check of the budget (0 when nothing trains).
        report: Told ``(check, worst ratio)`` at every check; returns True to stop.
        hopeless: Whether the curves at a check are hopeless.
        watched: Someone follows every check (an observer), so none is skipped.

    Example:
        >>> policy = StopPolicy(early_exit=True, last_check=4)
        >>> policy.decide(1, 0.8, passed=False), policy.decide(2, 0.96, passed=True)
        (None, 'success')
        >>> StopPolicy(early_exit=False, last_check=4).checks_at(2)  # full retraining: judged at the end
        False
    """

    early_exit: bool
    last_check: int
    report: ReportFn | None = None
    hopeless: Callable[[int], bool] = field(default=lambda _check: False)
    watched: bool = False

    def is_last(self, check: int) -> bool:
        return check >= self.last_check

    def checks_at(self, check: int) -> bool:
        """Whether ``check`` is scored: every one unless full retraining, unwatched, needs only the last."""
        return self.early_exit or self.report is not None or self.watched or self.is_last(check)

    def decide(self, check: int, worst_ratio: float, passed: bool) -> str | None:
        """The reason to stop after ``check``, or ``None`` to train on.

        The caller is told every scored check, the deciding one included (so a feasible
        plan's reported curve ends at its passing check), but may stop only a plan that
        fails at a check before the last.
        """
        last = self.is_last(check)
        stop = self.report is not None and self.report(check, worst_ratio)
        if passed and (self.early_exit or last):
            return "success"
        if last:
            return "budget"
        if stop and not passed:
            return "pruned"
        if self.early_exit and self.hopeless(check):
            return "hopeless"
        return None


@dataclass(frozen=True)
class StartPoint:
    """A stored feasible plan whose merged weights a plan extending it starts from.

    Incremental evaluation: when plan P extends a stored feasible plan Q, P starts from Q's
    merged weights. Only the members of the groups P adds retrain; every other model is
    frozen with Q's weights (as ``frozen`` freezes a deployed model, tensors it shares
    included) and keeps the ratios Q's evaluation measured for it, so it is not scored
    again. Each added group starts from its first member's tensors in Q's weights.

    Attributes:
        plan: Q, a strict subset of each plan evaluated from it.
        checkpoint: The id of Q's stored weights (recorded in the key of what starts from them).
        tensors: Q's merged weights, ``model/tensor`` as :func:`merged_state` writes them.
        evaluation: Q's evaluation.
    """

    plan: SharingPlan
    checkpoint: str
    tensors: Mapping[str, torch.Tensor]
    evaluation: Evaluation

    def retrained_by(self, plan: SharingPlan, groups: Sequence[Any]) -> set[str]:
        """The models ``plan`` retrains when it starts here: the members of the groups it adds."""
        if not self.plan.shared < plan.shared:
            raise SearchmergeError(f"plan {sorted(plan.shared)} does not extend the start plan {sorted(self.plan.shared)}")
        added = plan.shared - self.plan.shared
        return {model for group in groups if group.name in added for model in group.models}

    def models(self, originals: Mapping[str, nn.Module]) -> dict[str, nn.Module]:
        """Each model as its own module (nothing tied) with the start's weights."""
        models = {}
        for name, original in originals.items():
            model = copy.deepcopy(original)
            prefix = f"{name}/"
            model.load_state_dict({k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)})
            models[name] = model
        return models


class Evaluator:
    """Scores sharing plans of one prepared workload.

    Args:
        prepared: The workload's data, originals and baselines.
        settings: Retraining budget and early-exit rules.
        target: Share of its baseline accuracy each model must keep, in (0, 1].
        analysis: The workload's analysis (computed from the originals if not given).
        device: Where to retrain (CUDA when present by default).
        progress: Called with one line after every check of a long evaluation.
    """

    def __init__(
        self,
        prepared: PreparedWorkload,
        settings: EvaluatorSettings,
        target: float,
        *,
        analysis: AnalysisResult | None = None,
        device: torch.device | str | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.prepared = prepared
        self.settings = settings
        self.target = check_target(target)
        self.analysis = analysis or analyze(prepared.workload, built=prepared.models)
        self.device = torch.device(device) if device is not None else default_device()
        self.progress = progress
        if settings.accept != "point":
            vague = sorted(n for n, kind in prepared.kinds.items() if not kind.proportion)
            if vague:
                raise SearchmergeError(
                    f"accept: {settings.accept} needs a Wilson interval, but the metric of {', '.join(vague)} is not a"
                    " proportion of samples; use accept: {margin: ...} instead")

    def samples(self, name: str, split: str) -> int:
        """How many samples ``name``'s ``split`` holds (what its ratios there are measured on)."""
        return len(getattr(self.prepared.data[name], split))

    def interval_method(self, name: str, *, unchanged: bool = False) -> str:
        """How ``name``'s ratios get their interval (see :func:`ratio_interval`)."""
        return "exact" if unchanged else "wilson" if self.prepared.kinds[name].proportion else ""

    def passes(self, name: str, ratio: float, split: str = "val", *, unchanged: bool = False) -> bool:
        """Whether ``name``'s ``ratio`` on ``split`` meets the target as the study accepts ratios."""
        settings = self.settings
        lower = ratio
        if settings.accept != "point":
            baseline = getattr(self.prepared.baselines[name], f"{split}_accuracy")
            interval = ratio_interval(ratio, baseline, self.samples(name, split), self.interval_method(name,
                                                                                                      unchanged=unchanged))
            assert interval is not None  # refused in __init__ otherwise
            lower = interval.low
        accepted = accepted_ratio(ratio, lower, rule=settings.accept, margin=settings.accept_margin)
        return is_feasible(constraint_value(self.target, [accepted]))

    @repeatable_kernels()
    def evaluate(
        self,
        plan: SharingPlan,
        *,
        seed: int = 0,
        report: ReportFn | None = None,
        start_from: Mapping[str, nn.Module] | None = None,
        frozen: Collection[str] = (),
        observe: ObserveFn | None = None,
        start: StartPoint | None = None,
    ) -> tuple[Evaluation, dict[str, nn.Module]]:
        """Merge, retrain and judge ``plan``; returns the evaluation and the merged models.

        The merged models returned carry the weights of the deciding check (for a
        feasible plan: the check where every model met its target at once).

        ``frozen`` models are scored but not retrained, and neither is any tensor they
        share: a model joining a deployed merge adapts to it alone, the deployed
        models keep their weights exactly, and a step costs only the others' passes.

        ``observe`` is called after every check with the ratios scored so far and the
        merged models (to record learning curves, as ``benchmarks/calibrate_evaluator.py`` does).

        ``start``: evaluate incrementally from a stored feasible plan that ``plan`` extends
        (see :class:`StartPoint`); its weights replace ``start_from``'s.
        """
        started = time.perf_counter()
        run = _Retraining(self, plan, seed=seed, start_from=start_from, frozen=frozen, start=start)
        policy = StopPolicy(early_exit=self.settings.early_exit, last_check=run.last_check, report=report,
                            hopeless=lambda check: run.scores.hopeless(check, run.last_check),
                            watched=observe is not None or self.settings.loss_weights > 0)
        reason, ratios, test_ratios = self._retrain(run, policy, observe)
        return self._judged(run, reason, ratios, test_ratios, time.perf_counter() - started), run.merged

    def _retrain(
        self, run: _Retraining, policy: StopPolicy, observe: ObserveFn | None
    ) -> tuple[str, dict[str, float], dict[str, float]]:
        """Train between checks until the policy stops; the stop reason and the ratios it was decided on."""
        for check in range(run.last_check + 1):
            if check > 0:
                run.train(run.check_every)
            if not policy.checks_at(check):
                continue
            ratios = run.scores.score(check, everyone=policy.is_last(check) or not policy.early_exit)
            run.curve.append(min(ratios.values()))
            if observe is not None:
                observe(check, ratios, run.merged)
            self._say_check(check, run, ratios)
            passed, test_ratios = self._confirm(run.merged, ratios, run.scores.known_tests, run.scores.unchanged)
            reason = policy.decide(check, min(ratios.values()), passed)
            if reason is not None:
                return reason, ratios, test_ratios  # a failed confirmation is kept: it decides
        raise AssertionError("the last check always decides")

    def _say_check(self, check: int, run: _Retraining, ratios: Mapping[str, float]) -> None:
        if self.progress is not None:
            worst = min(ratios, key=ratios.__getitem__)
            self.progress(f"check {check}/{run.last_check} after {run.steps} steps: worst accuracy ratio"
                          f" {ratios[worst]:.3f} ({worst}), target {self.target}")

    def _judged(
        self, run: _Retraining, reason: str, ratios: Mapping[str, float], test_ratios: Mapping[str, float],
        seconds: float,
    ) -> Evaluation:
        """The evaluation of a finished run (its merged models back on the CPU)."""
        for model in run.merged.values():
            model.to("cpu").eval()
        baselines, unchanged = self.prepared.baselines, run.scores.unchanged
        models = tuple(
            ModelOutcome(
                name=n,
                accuracy=ratios[n] * baselines[n].val_accuracy,
                baseline=baselines[n].val_accuracy,
                ratio=ratios[n],
                meets_target=self.passes(n, ratios[n], unchanged=n in unchanged)
                and (n not in test_ratios or self.passes(n, test_ratios[n], "test")),
                test_ratio=test_ratios.get(n),
                check=run.scores.measured_at(n),
                retrained=n in run.learners,
                samples=self.samples(n, "val"),
                interval=self.interval_method(n, unchanged=n in unchanged),
                test_samples=self.samples(n, "test") if n in test_ratios else 0,
                test_baseline=baselines[n].test_accuracy if n in test_ratios else None,
            )
            for n in run.merged
        )
        samples = run.steps * self.settings.batch_size * len(run.learners)
        return Evaluation(
            plan=run.plan,
            stop_reason=reason,
            target=self.target,
            models=models,
            unique_bytes=run.unique_bytes,
            saved_bytes=self.analysis.total_bytes - run.unique_bytes,
            cost=Cost(steps=run.steps, samples=samples, seconds=seconds, checks=len(run.curve)),
            curve=tuple(run.curve),
            accept=self.settings.accept,
            accept_margin=self.settings.accept_margin,
        )

    def score(self, model: nn.Module, name: str, split: str) -> float:
        """The metric of ``model`` (merged from ``name``) on that model's ``split``, by its task kind."""
        return score(model, getattr(self.prepared.data[name], split), self.prepared.kinds[name], device=self.device,
                     workers=self.prepared.settings.workers)

    def _confirm(
        self, merged: Mapping[str, nn.Module], ratios: Mapping[str, float], known: Mapping[str, float] | None = None,
        unchanged: Collection[str] = (),
    ) -> tuple[bool, dict[str, float]]:
        """Whether a pass holds, and the test ratios measured to tell.

        Only when every model passes on validation are the marginal passes (within
        ``confirm_margin`` of the target) measured on the test split; the pass holds when
        each of those meets the target there too. ``known``: test ratios measured before
        with the same weights (a frozen model's, from the start plan's evaluation).
        ``unchanged``: models still holding their original's weights on its data (ratio exactly 1).
        """
        known = known or {}
        if not all(self.passes(n, r, unchanged=n in unchanged) for n, r in ratios.items()):
            return False, {}
        measured: dict[str, float] = {}
        for name, ratio in ratios.items():
            if ratio >= self.target + self.settings.confirm_margin:
                continue
            baseline = self.prepared.baselines[name].test_accuracy
            measured[name] = known[name] if name in known else self.score(merged[name], name, "test") / baseline
            if not self.passes(name, measured[name], "test"):
                return False, measured
        return True, measured


def evaluator_identity(settings: EvaluatorSettings) -> dict[str, Any]:
    """The evaluator settings as keys and study identities record them.

    A setting added later is left out while it has the value that behaves as before it
    existed (``loss_weights`` 0, ``accept`` ``point``, ``accept_margin`` 0), so records and
    studies made before it keep their keys.
    """
    identity = asdict(settings)
    for name, before in (("loss_weights", 0), ("accept", "point"), ("accept_margin", 0)):
        if identity[name] == before:
            del identity[name]
    return identity


def merged_key(
    prepared: PreparedWorkload,
    plan: SharingPlan,
    *,
    target: float,
    settings: EvaluatorSettings,
    seed: int,
    start_checkpoint: str | None = None,
    frozen: Collection[str] = (),
    pruned_after_steps: int | None = None,
    start_plan: SharingPlan | None = None,
) -> CheckpointKey:
    """The checkpoint key of a plan's merged weights: everything that determines them.

    The originals and data (fingerprints), the plan, and in the variant: the seed, the
    target (early exit stops at a different check for another target), the evaluator's
    settings, the checkpoint retraining started from (a re-search's parent, or the stored
    plan an incremental evaluation extends, then named in ``start_plan`` too) and the frozen models.
    The same evaluation asked again finds its record; any other gets a record of its own,
    so a stored record is never replaced and every trial's checkpoint id keeps resolving.

    An evaluation that an Optuna pruner stopped is not determined by those alone: where
    it stopped depends on the pruner and on the other trials. Its partially trained
    weights get a key of their own (``pruned_after_steps``: the steps trained before the
    stop), so the key without it only ever holds a complete evaluation; otherwise the
    same plan evaluated in full later would find the pruned record in its place, and
    records are never replaced.
    """
    determined: dict[str, Any] = {
        "seed": seed,
        "target": target,
        "evaluator": evaluator_identity(settings),
        "start_checkpoint": start_checkpoint,
        "frozen": sorted(frozen),
    }
    if pruned_after_steps is not None:  # absent otherwise, so complete evaluations keep their stored keys
        determined["pruned_after_steps"] = pruned_after_steps
    if start_plan is not None:  # an incremental evaluation (see StartPoint), likewise
        determined["start_plan"] = start_plan.plan_hash
    if prepared.rebased:  # early exit stops where the baselines say, likewise
        determined["baselines"] = {name: [prepared.baselines[name].val_accuracy, prepared.baselines[name].test_accuracy]
                                   for name in prepared.rebased}
    return CheckpointKey(
        prepared.workload_fingerprint, plan.plan_hash, prepared.data_fingerprint, "merged", variant_of(determined)
    )


def full_retraining(settings: EvaluatorSettings, *, judged: str = "first-pass") -> EvaluatorSettings:
    """``settings`` as full retraining: all the training data, never given up as hopeless.

    Judged at the ``first-pass`` (early stopping on validation: the first check where every
    model meets its target at once, as ``confirm`` does; footage needs it, since models
    trained on a few hundred early frames drift away from the later validation frames), or
    at the ``end`` of the budget.
    """
    if judged == "end":
        return dataclasses.replace(settings, fraction=1.0, early_exit=False)
    if judged != "first-pass":
        raise SearchmergeError(f"full retraining is judged at the 'end' or the 'first-pass', not {judged!r}")
    # Success still stops it; a plan is never given up before the budget ends.
    return dataclasses.replace(settings, fraction=1.0, early_exit=True, min_checks=10**9)


def evaluate_plan(
    study: StudyFile,
    share: str | SharingPlan,
    *,
    seed: int = 0,
    progress: Progress | None = None,
) -> tuple[Evaluation, str]:
    """Evaluate one plan (``none``, ``all``, ``GROUP,...`` or a :class:`SharingPlan`) and store its weights.

    Returns the evaluation and the id of the checkpoint that keeps the merged weights
    (the key a search uses for the same plan, seed and settings, so a search answers
    that plan from the store). An evaluation stored already is retrained anyway and
    its fresh outcome returned; the stored record is kept.
    """
    prepared = prepare_study(study, progress=progress)
    settings = study.settings.evaluator
    evaluator = Evaluator(prepared, settings, study.settings.target, progress=progress)
    names = [g.name for g in evaluator.analysis.groups]
    plan = share if isinstance(share, SharingPlan) else SharingPlan.parse(share, names)
    evaluation, merged = evaluator.evaluate(plan.checked(names), seed=seed)
    evaluation = _bootstrapped(evaluator, evaluation, merged)
    key = merged_key(prepared, plan, target=evaluator.target, settings=settings, seed=seed)
    checkpoint = study.store.put(key, merged_state(merged), {"evaluation": evaluation.to_dict()})
    return evaluation, checkpoint


def _bootstrapped(evaluator: Evaluator, evaluation: Evaluation, merged: Mapping[str, nn.Module]) -> Evaluation:
    """``evaluation`` with a bootstrap interval for each model whose metric is not a proportion (mAP).

    Done for the one plan ``evaluate`` reports, not at every check or search trial: it scores
    the split once more and recomputes the metric for every resample (seconds per detector).
    """
    models = []
    for m in evaluation.models:
        kind = evaluator.prepared.kinds[m.name]
        interval = None if kind.proportion else score_interval(
            merged[m.name], evaluator.prepared.data[m.name].val, kind, device=evaluator.device,
            workers=evaluator.prepared.settings.workers)
        models.append(m if interval is None else dataclasses.replace(
            m, interval="bootstrap", metric_bounds=(interval.low, interval.high)))
    return dataclasses.replace(evaluation, models=tuple(models))


def export_plan(
    study: StudyFile,
    share: str,
    directory: str | Path,
    *,
    seed: int = 0,
    progress: Progress | None = None,
) -> tuple[Path, Evaluation | None]:
    """Export the stored merged weights of a plan evaluated by :func:`evaluate_plan` (``searchmerge evaluate``).

    The weights are those stored under the plan's key for the study's evaluator settings and
    target and this ``seed``; nothing is retrained. ``none`` exports the originals (no
    evaluation needed). Returns the deployment folder and the stored evaluation (``None`` for
    the originals).

    Raises:
        SearchmergeError: If the plan was never evaluated with these settings and seed (the
            message names the ``evaluate`` command to run), or names an unknown group.
    """
    prepared = prepare_study(study, progress=progress)
    analysis = analyze(prepared.workload, built=prepared.models)
    plan = SharingPlan.parse(share, [g.name for g in analysis.groups])
    metadata: dict[str, Any] = {"plan_given": share, "seed": seed, "target": study.settings.target, "confirmed": None}
    if not plan.shared:
        models = {name: copy.deepcopy(model) for name, model in prepared.models.items()}
        folder = export_deployment(directory, prepared.workload, models, plan=plan, metadata={**metadata, "originals": True})
        return folder, None
    key = merged_key(prepared, plan, target=study.settings.target, settings=study.settings.evaluator, seed=seed)
    record = study.store.find(key)
    if record is None or record.metadata["evaluation"]["stop_reason"] == "pruned":
        raise SearchmergeError(
            f"plan {share!r} was never evaluated with this study's settings, target and seed {seed}; run: searchmerge"
            f" evaluate {study.path} --share {share} --seed {seed} --target {study.settings.target}"
        )
    evaluation = Evaluation.from_dict(plan, record.metadata["evaluation"])
    merged = merge_models(prepared.models, analysis.groups, plan)
    load_merged_state(merged, study.store.load(record.id))
    metadata.update(checkpoint=record.id, feasible=evaluation.feasible)
    return export_deployment(directory, prepared.workload, merged, plan=plan, metadata=metadata), evaluation


class _Retraining:
    """One plan's merged models and what retrains them: learners, data streams, optimiser, schedule.

    Only the models whose weights the plan moves learn (and, on new data, an untouched
    model that misses its target there); frozen models and any tensor they share stay.
    """

    def __init__(
        self,
        evaluator: Evaluator,
        plan: SharingPlan,
        *,
        seed: int,
        start_from: Mapping[str, nn.Module] | None,
        frozen: Collection[str],
        start: StartPoint | None = None,
    ) -> None:
        settings, prepared, groups = evaluator.settings, evaluator.prepared, evaluator.analysis.groups
        names = list(prepared.models)
        plan.checked([g.name for g in groups])
        unknown = sorted(set(frozen) - set(names))
        if unknown:
            raise SearchmergeError(f"cannot freeze model(s) {unknown}: not in the workload {names}")
        self.plan, self.settings, self.kinds, self.device = plan, settings, prepared.kinds, evaluator.device
        originals = start_from if start_from is not None else prepared.models
        init, known = settings.init, {}
        if start is not None:  # incremental: only the added groups' members retrain, from the start's weights
            originals = start.models(originals)
            frozen = set(frozen) | (set(names) - start.retrained_by(plan, groups))
            known = {m.name: m for m in start.evaluation.models if m.name in frozen}
            init = "first"
        self.merged = merge_models(originals, groups, plan, init=init)  # type: ignore[arg-type]
        self.unique_bytes = unique_tensor_bytes(model_tensors(self.merged.values()))

        torch.manual_seed(seed)
        train = {n: subsample(prepared.data[n], "train", settings.fraction, seed=seed) for n in names}
        touched = {model for group in groups if group.name in plan.shared for model in group.models}
        touched -= set(frozen)  # a frozen model keeps its batch-norm statistics too
        untouched = [n for n in names if n not in touched and n not in frozen]
        self.kept_norms = _frozen_norms(self.merged, frozen)
        # Scored before the move to the device: an untouched model is compared with its original there.
        self.scores = _Scoreboard(evaluator, self.merged, train, touched, set(frozen) | set(untouched), self.kept_norms,
                                  known=known)
        for model in self.merged.values():
            model.to(self.device)
        # A model the plan shares nothing with keeps its weights and is scored once; only on new
        # data, where it may miss its target, is it fine-tuned (alone: it shares nothing).
        missing = self.scores.missing(untouched)
        self.learners = [n for n in names if n in touched or n in missing]
        self.streams = {
            n: batches(train[n], self.kinds[n], settings.batch_size, seed=seed + i, workers=prepared.settings.workers)
            for i, n in enumerate(names)
            if n in self.learners
        }
        parameters = _trainable_parameters(self.merged, self.learners, frozen)
        self.optimizer = torch.optim.Adam(parameters, lr=settings.lr) if parameters else None
        if self.optimizer is None:
            self.learners = []  # nothing they own may move

        epoch_steps = max((steps_per_epoch(train[n], settings.batch_size) for n in self.learners), default=1)
        self.check_every = max(1, epoch_steps // settings.checks_per_epoch)
        total_checks = max(1, math.ceil(settings.max_epochs * epoch_steps / self.check_every))
        self.last_check = total_checks if self.optimizer is not None else 0
        self.schedule = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, total_checks * self.check_every)
            if self.optimizer is not None
            else None
        )
        self.steps = 0
        self.curve: list[float] = []  # the worst ratio at each check scored

    def train(self, steps: int) -> None:
        """``steps`` joint steps: each learner's loss on its own batch, weighted (see :meth:`loss_weights`), summed."""
        assert self.optimizer is not None and self.schedule is not None
        _start_training(self.merged, self.learners, self.kept_norms)
        kinds, device, weights = self.kinds, self.device, self.loss_weights()
        for _ in range(steps):
            self.optimizer.zero_grad(set_to_none=True)
            loss = sum(weights[n] * kinds[n].loss(self.merged[n], kinds[n].to_device(next(self.streams[n]), device))
                       for n in self.learners)
            loss.backward()  # type: ignore[union-attr]
            self.optimizer.step()
            self.schedule.step()
            self.steps += 1

    def loss_weights(self) -> dict[str, float]:
        """Each learner's loss weight until the next check: Gemel's ``(target / ratio) ** p``, capped.

        ``p`` is the evaluator's ``loss_weights`` (0: every weight is 1); the ratio is the
        model's latest measured one (a model not measured yet weighs 1).
        """
        power, target = self.settings.loss_weights, self.scores.target
        weights = {}
        for name in self.learners:
            points = self.scores.curves[name]
            ratio = points[-1][1] if points else target
            weights[name] = 1.0 if power == 0 else (
                LOSS_WEIGHT_CAP if ratio <= 0 else min(LOSS_WEIGHT_CAP, (target / ratio) ** power))
        return weights


class _Scoreboard:
    """Each model's accuracy ratio through one evaluation, measured only when a check needs it.

    Scoring is the part of a check that costs: recalibrating a model's batch norms and
    running its validation split. A check scores the models that can decide it; the
    others keep the ratio of their last measurement until every model must pass at once.
    """

    def __init__(
        self,
        evaluator: Evaluator,
        merged: Mapping[str, nn.Module],
        train: Mapping[str, Dataset[Any]],
        touched: set[str],
        fixed: Collection[str],
        kept_norms: Collection[nn.Module],
        *,
        known: Mapping[str, ModelOutcome] | None = None,
    ) -> None:
        # ``fixed``: the models whose weights do not move (frozen, or shared nothing with);
        # ``known``: what an earlier evaluation measured with the weights some of them hold.
        known = known or {}
        self.known_tests = {name: m.test_ratio for name, m in known.items() if m.test_ratio is not None}
        self.evaluator, self.merged, self.train, self.touched = evaluator, merged, train, touched
        self.fixed = set(fixed)
        self.target, self.settings, self.kept_norms = evaluator.target, evaluator.settings, kept_norms
        # Each model's measured ratios as (check, ratio). A model whose weights are still
        # exactly the ones its baseline was measured with scores 1 without being run, on the
        # data the baseline was measured on (on a drift scenario's data it must be scored).
        prepared = evaluator.prepared
        self.curves: dict[str, list[tuple[int, float]]] = {
            name: [(0, known[name].ratio)] if name in known
            else [(0, 1.0)] if prepared.on_baseline_data and _same_weights(model, prepared.models[name])
            else []
            for name, model in merged.items()
        }
        #: The models whose ratio is that exact 1 (never run since): nothing to estimate, no interval.
        self.unchanged = {name for name, points in self.curves.items() if points and name not in known}

    def score(self, check: int, *, everyone: bool) -> dict[str, float]:
        """Every model's ratio after scoring the ones due at ``check`` (all if ``everyone``)."""
        self._measure(check, self._due(everyone))
        if all(self._passes(name, points[-1][1]) for name, points in self.curves.items()):
            # Feasible only with every model's weights of this one check: re-measure the rest.
            self._measure(check, [n for n, points in self.curves.items() if points[-1][0] != check])
        return {name: points[-1][1] for name, points in self.curves.items()}

    def missing(self, names: Sequence[str]) -> set[str]:
        """Those of the fixed models ``names`` that miss their target before training; they train from now on.

        Each is scored once, at check 0 (on the data its baseline was measured on, an
        unchanged model scores 1 without being run); one that meets its target keeps
        that score for good.
        """
        self._measure(0, names)
        missing = {name for name in names if not self._passes(name, self.curves[name][-1][1])}
        self.fixed -= missing
        return missing

    def _passes(self, name: str, ratio: float) -> bool:
        return self.evaluator.passes(name, ratio, unchanged=name in self.unchanged)

    def measured_at(self, name: str) -> int:
        """The check that measured ``name``'s latest ratio."""
        return self.curves[name][-1][0]

    def _due(self, everyone: bool) -> list[str]:
        """The models to measure at a check: those that can decide it.

        Every model at the last check (and in full retraining); otherwise the ones never
        measured and the ones below or near their target. A model comfortably above it
        is measured again only when all the others pass, before a pass counts.
        """
        margin = self.target + self.settings.confirm_margin
        return [n for n, points in self.curves.items() if everyone or not points or points[-1][1] < margin]

    def _measure(self, check: int, due: Sequence[str]) -> None:
        """Append the current accuracy ratio of each model in ``due`` to its curve.

        A fixed model, once measured, scores the same for good: its weights do not move.
        """
        prepared, device = self.evaluator.prepared, self.evaluator.device
        for name in due:
            curve = self.curves[name]
            if curve and curve[-1][0] == check:
                continue
            if name in self.fixed and curve:
                curve.append((check, curve[-1][1]))
                continue
            if self.settings.recalibrate and name in self.touched:
                recalibrate_batch_norm(self.merged[name], self.train[name], prepared.kinds[name], device=device,
                                       keep=self.kept_norms, workers=prepared.settings.workers)
            ratio = self.evaluator.score(self.merged[name], name, "val")
            curve.append((check, ratio / prepared.baselines[name].val_accuracy))
            self.unchanged.discard(name)

    def hopeless(self, check: int, total_checks: int) -> bool:
        """Some model's curve, extrapolated from its best recent pace, stays below its target.

        Learning curves flatten, so each further check is expected to gain at most
        ``pace_decay`` times the one before (1 extrapolates the pace linearly). The
        pace now is the best gain per check over the model's last three measurements,
        each shrunk by that decay for every check since; ``optimism`` scales the
        whole estimate. A model that came within ``confirm_margin`` of its target is
        never given up on: on small validation splits a miss by that much can be
        noise (the margin a pass within it is confirmed with).
        """
        settings = self.settings
        if check < settings.min_checks:
            return False
        remaining = total_checks - check
        decay = settings.pace_decay
        horizon = remaining if decay >= 1 else decay * (1 - decay**remaining) / (1 - decay)
        for points in self.curves.values():
            best = max((r for _, r in points), default=self.target)
            if best >= self.target - settings.confirm_margin or len(points) < 2:
                continue  # at or near its target (where a miss may be noise), or no pace yet
            recent = points[-3:]
            pace = max(
                [(rb - ra) / (cb - ca) * decay ** (check - cb) for (ca, ra), (cb, rb) in zip(recent, recent[1:])]
                + [0.0]
            )
            if best + settings.optimism * pace * horizon < self.target:
                return True
        return False


def _trainable_parameters(
    merged: Mapping[str, nn.Module], learners: Sequence[str], frozen: Collection[str]
) -> list[nn.Parameter]:
    """The learners' parameters, each once, except those a frozen model uses too."""
    fixed = {id(p) for name in frozen for p in merged[name].parameters()}
    return [p for p in _unique_parameters(merged[name] for name in learners) if id(p) not in fixed]


def _start_training(
    merged: Mapping[str, nn.Module], learners: Sequence[str], kept_norms: Collection[nn.Module]
) -> None:
    """The learners in training mode, except batch norms whose statistics a frozen model shares."""
    for name in learners:
        merged[name].train()
    for norm in kept_norms:
        norm.eval()  # in training mode it would move the frozen model's running statistics


def _frozen_norms(merged: Mapping[str, nn.Module], frozen: Collection[str]) -> set[nn.Module]:
    """Batch norms of any model whose running statistics a frozen model shares (with ``share_norm``)."""
    fixed = {id(b) for name in frozen for b in merged[name].buffers()}
    return {
        norm for model in merged.values() for norm in batch_norms(model) if any(id(b) in fixed for b in norm.buffers())
    }


def _same_weights(model: nn.Module, original: nn.Module) -> bool:
    """Whether ``model`` still holds exactly ``original``'s tensors (same outputs)."""
    mine, theirs = model.state_dict(), original.state_dict()
    return mine.keys() == theirs.keys() and all(
        mine[k].shape == theirs[k].shape and torch.equal(mine[k].cpu(), theirs[k].cpu()) for k in mine
    )


def _unique_parameters(models: Sequence[nn.Module] | Any) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for model in models:
        for parameter in model.parameters():
            if parameter.requires_grad:
                seen.setdefault(id(parameter), parameter)
    return list(seen.values())
