"""The search as an Optuna study: create, resume, run, read.

Every strategy is an Optuna sampler, so storage, resume after a crash
(heartbeats fail trials left RUNNING by a killed process and retry their plans),
distributed workers on PostgreSQL and optuna-dashboard work the same for all of
them. One trial is one sharing plan: the objective is the bytes it saves, and
the constraint ``target - worst accuracy ratio`` (feasible when <= 0, the one rule
of :mod:`searchmerge.core.feasibility`) says whether every model kept its accuracy.

A plan the evaluator gives up as hopeless is recorded COMPLETE with its saved bytes
and its violated constraint, not PRUNED: Optuna's constrained samplers learn from
it (NSGA-II and GP read only COMPLETE trials), and a replay of every strategy on the
benchmark table measured it (``docs/strategies.md``). A plan that an Optuna pruner
stops is PRUNED.

Constructing a search trains nothing: it is given the prepared originals
(:func:`open_search` prepares them, or loads them from the store, first).
"""

from __future__ import annotations

import functools
import json
import os
import socket
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import upload_artifact
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import exc as sa_exc

from searchmerge.analysis.groups import ShareableGroup
from searchmerge.config.settings import EvaluatorSettings
from searchmerge.config.study import StudyFile
from searchmerge.core.errors import SearchmergeError
from searchmerge.core.progress import Counter, Progress, counted
from searchmerge.core.space import GroupInfo, SearchSpace, SharingPlan
from searchmerge.runtime.objective import DeployObjective
from searchmerge.search.dashboard import constraint_text, save_trial_note
from searchmerge.search.drift_targets import (
    BASELINES_ATTR,
    REACHABLE,
    baselines_attr,
    reachable_baselines,
    rebased,
    recorded_baselines,
)
from searchmerge.search.scenarios import drifted_workload, get_scenario
from searchmerge.search.strategies import (
    SAVED_BYTES_OBJECTIVE,
    make_sampler,
    trial_feasible,
)
from searchmerge.training.deployment import export_deployment
from searchmerge.training.evaluate import (
    Evaluation,
    Evaluator,
    StartPoint,
    evaluator_identity,
    merged_key,
)
from searchmerge.training.merge import load_merged_state, merge_models, merged_state
from searchmerge.training.prepare import PreparedWorkload, prepare_study

__all__ = [
    "CONFIRMED_ATTR",
    "FINISHED",
    "MergeSearch",
    "TrialSummary",
    "WarmStart",
    "constraint_of",
    "default_study_name",
    "deployed_plan",
    "incremental_start",
    "load_search",
    "open_search",
    "referenced_checkpoints",
    "searchmerge_studies",
]

#: The name the dashboard shows for the objective (the samplers read it: see ``maximises_saved_bytes``).
OBJECTIVE_NAME = SAVED_BYTES_OBJECTIVE
#: ... and with a ``deploy:`` section (memory-aware search), where it is the simulated share of frames.
DEPLOY_OBJECTIVE_NAME = "frames processed (share, ties by bytes saved)"

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
#: The trial user attribute a confirmation records its verdict in (see :mod:`searchmerge.search.confirmation`).
CONFIRMED_ATTR = "confirmed"
_ATTR_PREFIX = "searchmerge:"
#: A RUNNING trial without parameters and without a heartbeat is abandoned after this long (the
#: default of ``MergeSearch(abandoned_after_s=...)``).
ABANDONED_AFTER_S = 60.0


def worker_id() -> str:
    """This process as a search's trials name it: ``host:pid`` (asked anew by every search)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class _SurplusTrial(Exception):
    """A trial started by one worker too many; it fails without evaluating anything."""


def constraint_of(trial: FrozenTrial) -> tuple[float]:
    """The constraint every sampler stores: ``target - worst ratio`` (feasible when <= 0)."""
    return (float(trial.user_attrs.get("constraint", 1.0)),)


def default_study_name(study: StudyFile, strategy: str) -> str:
    return f"{study.workload.name}-{strategy}"


@dataclass(frozen=True)
class TrialSummary:
    """One evaluated plan as the study recorded it."""

    number: int
    state: str
    plan: SharingPlan
    feasible: bool
    saved_bytes: int
    unique_bytes: int
    worst_ratio: float
    seconds: float
    checkpoint: str | None
    strategy: str

    @classmethod
    def from_trial(cls, trial: FrozenTrial, space: SearchSpace, strategy: str) -> TrialSummary:
        attrs = trial.user_attrs
        return cls(
            number=trial.number,
            state=trial.state.name,
            plan=space.plan_from_params(trial.params),
            feasible=trial_feasible(trial, constraint_of),
            saved_bytes=int(attrs.get("saved_bytes", 0)),
            unique_bytes=int(attrs.get("unique_bytes", 0)),
            worst_ratio=float(attrs.get("worst_ratio", 0.0)),
            seconds=float(attrs.get("cost_seconds", 0.0)),
            checkpoint=attrs.get("checkpoint"),
            strategy=strategy,
        )


@dataclass(frozen=True)
class WarmStart:
    """Where a re-search starts instead of the originals (see :mod:`searchmerge.search.research`).

    Attributes:
        parent_study: The earlier study whose deployed plan this search continues.
        parent_checkpoint: The checkpoint of that plan's merged weights.
        models: Per model, the module to merge from (the parent's merged weights, unmerged).
        settled: Models whose deployed weights need no retraining under ``settled_plan``
            (after a workload change, on unchanged data: the parent's models).
        settled_plan: The deployed plan in this search's groups.
    """

    parent_study: str
    parent_checkpoint: str
    models: Mapping[str, Any]
    settled: frozenset[str] = frozenset()
    settled_plan: SharingPlan | None = None

    def frozen_for(self, plan: SharingPlan) -> frozenset[str]:
        """The models to keep exactly as deployed while ``plan`` is evaluated.

        Only the deployed plan itself keeps its settled models: there they are the
        deployed models, and a model that joins adapts to them alone. Any other plan
        moves shared weights, so every model retrains.
        """
        return self.settled if plan == self.settled_plan else frozenset()

    def start_models(
        self, plan: SharingPlan, groups: Sequence[ShareableGroup], originals: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Where each model starts when ``plan`` is evaluated.

        A model ``plan`` shares (or keeps settled) starts from the parent's merged weights; any other
        starts from its ``originals``, not from a copy an earlier evaluation retrained under sharing:
        the evaluator keeps such a model as it is, scores it on the new data and fine-tunes it only if it
        misses its target there.
        """
        kept = {model for group in groups if group.name in plan.shared for model in group.models}
        kept |= self.frozen_for(plan)
        return {name: model if name in kept else originals[name] for name, model in self.models.items()}


class MergeSearch:
    """A resumable search for the best sharing plan of one study file.

    Args:
        study: The loaded study file (workload, settings, storage, checkpoint store).
        prepared: The study's prepared originals (:func:`~searchmerge.training.prepare.prepare_study`),
            or, to search a drift scenario's data, the drifted workload
            (:func:`~searchmerge.search.scenarios.drifted_workload`) with ``scenario`` naming it.
        strategy: ``greedy``, ``tpe``, ``gp``, ``nsga2``, ``surrogate`` or ``random``.
        study_name: The Optuna study name (default: workload name and strategy).
        seed: Seed of the sampler and of the retraining.
        heartbeat_interval: Seconds between heartbeats of a running trial; a trial
            whose heartbeat is older than ``grace_period`` is failed and its plan
            retried by the next worker that starts a trial.
        grace_period: Seconds without a heartbeat before a trial counts as stale
            (default: twice ``heartbeat_interval``).
        abandoned_after_s: A RUNNING trial without parameters and without any heartbeat
            (its process died while the sampler proposed) is failed and retried once it
            is older than this and ``grace_period``.
        pruner: An Optuna pruner consulted at every check of the evaluator. The
            default never prunes: the evaluator's own learning-curve rule already stops
            hopeless plans, and a pruner comparing a new plan's first checks (before
            much retraining) with finished plans would stop feasible plans too.
        progress: Called with one line per event of a long run.
        scenario: The drift scenario whose data ``prepared`` holds (see
            :mod:`searchmerge.search.scenarios`); recorded in the study, and it selects the study's
            ``drift_evaluator`` settings.
        warm_start: Retrain from these models instead of the originals, and record the
            parent study and checkpoint in the study and on every trial.
        sampler_options: The strategy's own options (see
            :func:`~searchmerge.search.strategies.strategy_options`), e.g. a surrogate's ``prior``.
        incremental: Evaluate a plan that extends a stored feasible plan of the study from
            that plan's merged weights, retraining only the members of the added groups (the
            start is chosen by :func:`incremental_start`; ``docs/strategies.md`` says what it
            changes about "feasible"). False retrains every plan from the originals.

    Example:
        >>> from searchmerge.training.prepare import prepare_study
        >>> from searchmerge.config.study import open_study_file
        >>> study = open_study_file("studies/digits-edge.yaml")  # doctest: +SKIP
        >>> search = MergeSearch(study, prepare_study(study), strategy="greedy")  # doctest: +SKIP
        >>> search.run(10)  # doctest: +SKIP
        >>> search.best()  # doctest: +SKIP
    """

    def __init__(
        self,
        study: StudyFile,
        prepared: PreparedWorkload,
        *,
        strategy: str = "greedy",
        study_name: str | None = None,
        seed: int = 0,
        heartbeat_interval: int = 10,
        grace_period: int | None = None,
        abandoned_after_s: float = ABANDONED_AFTER_S,
        pruner: optuna.pruners.BasePruner | None = None,
        progress: Progress | None = None,
        scenario: str | None = None,
        warm_start: WarmStart | None = None,
        sampler_options: Mapping[str, Any] | None = None,
        incremental: bool = True,
    ) -> None:
        self.study_file = study
        self.strategy = strategy
        self.seed = seed
        self.say = progress or (lambda _line: None)
        self.prepared = prepared
        self.scenario = scenario
        self.warm_start = warm_start
        self.incremental = incremental
        self.evaluator = Evaluator(self.prepared, self.evaluator_settings, study.settings.target, progress=None)
        self.space = SearchSpace([GroupInfo(g.name, g.saved_bytes, g.models) for g in self.evaluator.analysis.groups])
        sampler = make_sampler(strategy, self.space, seed=seed, constraints_func=constraint_of, **(sampler_options or {}))
        self._grace_period = grace_period or 2 * heartbeat_interval
        self._abandoned_after_s = abandoned_after_s
        #: How this search's trials name the process that ran them (``host:pid``).
        self.worker = worker_id()
        storage = _open_storage(study.storage, heartbeat_interval, self._grace_period)
        self.study_name = study_name or default_study_name(study, strategy)
        self.optuna_study = optuna.create_study(
            study_name=self.study_name,
            storage=storage,
            sampler=sampler,
            pruner=pruner or optuna.pruners.NopPruner(),
            direction="maximize",
            load_if_exists=True,
        )
        self._claim_study()
        recorded = recorded_baselines(self.optuna_study.user_attrs, self.prepared) if self.rebases else None
        if recorded is not None:
            self._judge_by(recorded)

    @property
    def rebases(self) -> bool:
        """Whether this search holds its models to what they can reach on its drifted data
        (``drift_baseline: reachable``; :mod:`~searchmerge.search.drift_targets`)."""
        return self.scenario is not None and self.study_file.settings.drift_baseline == REACHABLE

    def _judge_by(self, prepared: PreparedWorkload) -> None:
        """Judge every plan from now on against ``prepared``'s baselines."""
        self.prepared = prepared
        self.evaluator.prepared = prepared

    def _rebase(self) -> None:
        """Measure what sharing nothing reaches on the drifted data and record the baselines that follow."""
        reached = reachable_baselines(self.prepared, self.evaluator_settings, self.evaluator.target, seed=self.seed,
                                      analysis=self.evaluator.analysis, progress=self.say)
        self._judge_by(rebased(self.prepared, reached.baselines, reached.rebased))
        self.optuna_study.set_user_attr(_ATTR_PREFIX + "baselines_seconds", round(reached.seconds, 3))
        self.optuna_study.set_user_attr(BASELINES_ATTR, baselines_attr(self.prepared))

    @property
    def evaluator_settings(self) -> EvaluatorSettings:
        """The study's evaluator, or its drift evaluator when searching a drift scenario's data."""
        settings = self.study_file.settings
        return settings.evaluator if self.scenario is None else settings.drift_evaluator

    @functools.cached_property
    def deploy_objective(self) -> DeployObjective:
        """The study file's edge box (``deploy:``) as the objective; the models are measured at first use."""
        return DeployObjective(self.study_file.settings.deploy, self.prepared.workload, self.prepared.models,
                               self.evaluator.analysis.groups, progress=self.say)

    # ----------------------------------------------------------------- identity
    def _identity(self) -> dict[str, Any]:
        settings = self.study_file.settings
        return {
            "workload_fingerprint": self.prepared.workload_fingerprint,
            "data_fingerprint": self.prepared.data_fingerprint,
            "space_fingerprint": self.space.fingerprint,
            "target": settings.target,
            "evaluator": evaluator_identity(self.evaluator_settings),
            **({"scenario": self.scenario} if self.scenario is not None else {}),
            **({"drift_baseline": REACHABLE} if self.rebases else {}),
            **({"deploy": settings.deploy.to_dict()} if settings.deploy is not None else {}),
            **(
                {"parent_study": self.warm_start.parent_study, "parent_checkpoint": self.warm_start.parent_checkpoint}
                if self.warm_start is not None
                else {}
            ),
        }

    def _claim_study(self) -> None:
        """Mark a new study as ours, or refuse one that belongs to another workload."""
        attrs = self.optuna_study.user_attrs
        identity = self._identity()
        if f"{_ATTR_PREFIX}workload_fingerprint" not in attrs:
            if self.optuna_study.trials:
                raise SearchmergeError(
                    f"study {self.study_name!r} exists in {self.study_file.storage} but was not made by searchmerge;"
                    " choose another --study-name"
                )
            self.optuna_study.set_user_attr(_ATTR_PREFIX + "workload", self.study_file.workload.name)
            self.optuna_study.set_user_attr(_ATTR_PREFIX + "strategy", self.strategy)
            self.optuna_study.set_user_attr(_ATTR_PREFIX + "max_saved_bytes", self.space.max_saved_bytes)
            self.optuna_study.set_user_attr(_ATTR_PREFIX + "max_saved_mb", round(self.space.max_saved_bytes / 1e6, 4))
            # What the dashboard's intermediate-value plot shows (it labels it "Objective Value").
            self.optuna_study.set_user_attr(
                _ATTR_PREFIX + "intermediate_values",
                f"worst accuracy ratio of the merged models at each check (feasible at >= {self.evaluator.target});"
                " the objective is the bytes saved, in MB in each trial's saved_mb",
            )
            with warnings.catch_warnings():  # experimental since Optuna 3.2, stable in use
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                memory_aware = self.study_file.settings.deploy is not None
                self.optuna_study.set_metric_names([DEPLOY_OBJECTIVE_NAME if memory_aware else OBJECTIVE_NAME])
            # The workload fingerprint goes last: a worker that sees it sees the whole identity.
            for key, value in sorted(identity.items(), key=lambda item: item[0] == "workload_fingerprint"):
                self.optuna_study.set_user_attr(_ATTR_PREFIX + key, value)
            return
        # ``drift_baseline`` is recorded only when ``reachable`` (older drifted studies lack it): absent is "original".
        compared = {**identity, "drift_baseline": identity.get("drift_baseline")} if self.scenario else identity
        for key, value in compared.items():
            if attrs.get(_ATTR_PREFIX + key) != value:
                raise SearchmergeError(
                    f"study {self.study_name!r} was made for a different workload or settings ({key} differs);"
                    " refusing to mix trials: choose another --study-name"
                )

    # ----------------------------------------------------------------- running
    def finished_trials(self) -> list[FrozenTrial]:
        return self.optuna_study.get_trials(deepcopy=False, states=FINISHED)

    def run(self, n_trials: int, *, announce: bool = True) -> None:
        """Run until the study has ``n_trials`` finished (complete or pruned) trials in total.

        ``announce=False`` keeps quiet about reaching ``n_trials`` (a caller running one
        trial at a time towards a larger total, as the re-search's warm-up does).
        """
        if n_trials < 1:
            raise SearchmergeError(f"n-trials must be at least 1, got {n_trials}")
        self._n_trials = n_trials
        if self.rebases and BASELINES_ATTR not in self.optuna_study.user_attrs:
            self._rebase()  # before the first trial: every trial is judged by the same baselines
        done = len(self.finished_trials())
        with counted(self.say if announce else None, n_trials, f"search {self.study_name}", done=min(done, n_trials),
                     unit="trial") as trials:
            self._run(n_trials, announce, trials)

    def _run(self, n_trials: int, announce: bool, trials: Counter) -> None:
        while True:
            _fail_abandoned(self.optuna_study, max(self._grace_period, self._abandoned_after_s))
            done = len(self.finished_trials())
            trials.reach(done)  # this worker's trials and those of others on the same storage
            running = len(self.optuna_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
            if done >= n_trials:
                if announce:
                    self.say(f"study {self.study_name!r}: {done} finished trials, as many as requested ({n_trials})")
                return
            if done + running >= n_trials and running:
                # Other workers hold the remaining trials: wait for them rather than overshoot.
                time.sleep(1.0)
                continue
            self.optuna_study.optimize(self._objective, n_trials=1, catch=(_SurplusTrial,))

    def _objective(self, trial: optuna.Trial) -> float:
        # Optuna's heartbeat thread writes its first beat asynchronously; one written here,
        # before the plan is chosen, means a trial killed from now on is always found stale.
        self.optuna_study._storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
        self._check_not_surplus(trial, self._n_trials)
        plan = self.space.suggest(trial)
        done = len(self.finished_trials())
        self.say(f"trial {trial.number}: {len(plan)} of {len(self.space.names)} groups,"
                 f" {self.space.saved_bytes(plan) / 1e6:.2f} MB to save ({done} finished so far)")
        start = incremental_start(plan, self.history()) if self.incremental else None
        evaluation, checkpoint, cached = self._evaluate(plan, trial, start)
        attrs = {**_trial_attributes(evaluation, checkpoint, cached), "worker": self.worker}
        if self.warm_start is not None:
            attrs.update(parent_study=self.warm_start.parent_study, start_checkpoint=self.warm_start.parent_checkpoint)
        if start is not None:  # incremental: started from that trial's merged weights
            attrs.update(start_trial=start.number, start_checkpoint=start.checkpoint)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        self._attach_artifacts(trial, evaluation, checkpoint)
        save_trial_note(trial, evaluation)
        verdict = "feasible" if evaluation.feasible else "infeasible"
        self.say(f"trial {trial.number}: {verdict} (worst ratio {evaluation.worst_ratio:.3f}, {evaluation.stop_reason},"
                 f" {'from the store' if cached else f'{evaluation.cost.seconds:.1f} s'})")
        if evaluation.stop_reason == "pruned":  # an Optuna pruner stopped it; hopeless plans stay COMPLETE
            raise optuna.TrialPruned("stopped by the pruner")
        if self.study_file.settings.deploy is None:
            return float(evaluation.saved_bytes)
        # Memory-aware: the frames the edge box processes in time, ties broken by bytes saved.
        value, simulated = self.deploy_objective.score(plan, evaluation.saved_bytes, self.space.max_saved_bytes)
        for key, recorded in simulated.items():
            trial.set_user_attr(key, recorded)
        return value

    def _attach_artifacts(self, trial: optuna.Trial, evaluation: Evaluation, checkpoint: str) -> None:
        """Attach what a person opening the trial in optuna-dashboard wants to see.

        Every trial gets ``models.csv`` (per model: accuracy, baseline, ratios, target
        met); a feasible one also its merged deployment's ``manifest.json`` (the plan,
        each tensor's place in the weights file, sizes, SHA-256), as Optuna artifacts in
        the study's blob location, which ``searchmerge dashboard`` serves.
        """
        header = "model,accuracy,baseline,ratio,ratio_ci95_low,ratio_ci95_high,samples,test_ratio,meets_target,"
        rows = [header + "scored_at_check"]
        for m in evaluation.models:
            low, high = ("", "") if m.ratio_interval is None else (f"{m.ratio_interval.low:.5f}",
                                                                   f"{m.ratio_interval.high:.5f}")
            rows.append(f"{m.name},{m.accuracy:.5f},{m.baseline:.5f},{m.ratio:.5f},{low},{high},{m.samples},"
                        f"{'' if m.test_ratio is None else f'{m.test_ratio:.5f}'},{m.meets_target},{m.check}")
        with tempfile.TemporaryDirectory(prefix="searchmerge-artifacts-") as folder:
            table = Path(folder) / "models.csv"
            table.write_text("\n".join(rows) + "\n")
            files = [(table, "text/csv")]
            if evaluation.feasible:
                plan = self.space.plan_from_params(trial.params)
                summary = TrialSummary(trial.number, "RUNNING", plan, True, evaluation.saved_bytes,
                                       evaluation.unique_bytes, evaluation.worst_ratio, 0.0, checkpoint, self.strategy)
                deployment = self.export(Path(folder) / "deployment", summary)
                files.append((deployment / "manifest.json", "application/json"))
            store = self.study_file.store.artifacts
            for path, mimetype in files:
                upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial, mimetype=mimetype)

    def _check_not_surplus(self, trial: optuna.Trial, n_trials: int) -> None:
        """Give up a trial that workers started at the same moment would take past ``n_trials``.

        Trial numbers are handed out atomically by the storage, so the trials with
        lower numbers that are finished or still running have the first claim.
        """
        ahead = [
            t
            for t in self.optuna_study.get_trials(deepcopy=False)
            if t.number < trial.number and (t.state in FINISHED or t.state == TrialState.RUNNING)
        ]
        if len(ahead) >= n_trials:
            trial.set_user_attr("surplus", True)
            raise _SurplusTrial(f"{len(ahead)} trials already finished or running for a study of {n_trials}")

    def _evaluate(
        self, plan: SharingPlan, trial: optuna.Trial, start: TrialSummary | None = None
    ) -> tuple[Evaluation, str, bool]:
        """The plan's evaluation, its checkpoint id, and whether it came from the store.

        ``start``: a stored feasible trial whose plan ``plan`` extends; the evaluation starts
        from its merged weights and retrains only the members of the added groups (the key
        records the start's checkpoint and plan, so each start has a record of its own).

        Only a complete evaluation is looked up and reused: one an Optuna pruner stopped was
        not judged, so its plan is evaluated again, and its weights are stored under a key of
        their own (see :func:`~searchmerge.training.evaluate.merged_key`), never under the key the full
        evaluation of the same plan is stored under.
        """
        frozen = self.warm_start.frozen_for(plan) if self.warm_start is not None else frozenset()
        start_checkpoint = self.warm_start.parent_checkpoint if self.warm_start is not None else None
        if start is not None:
            added = plan.shared - start.plan.shared
            retrained = {model for group in self.evaluator.analysis.groups if group.name in added for model in group.models}
            frozen = frozenset(frozen | (set(self.prepared.models) - retrained))
            start_checkpoint = start.checkpoint
        key_of = functools.partial(
            merged_key, self.prepared, plan, target=self.evaluator.target, settings=self.evaluator_settings,
            seed=self.seed, start_checkpoint=start_checkpoint, frozen=frozen,
            start_plan=start.plan if start is not None else None,
        )
        record = self.study_file.store.find(key_of())
        # A store written before pruned evaluations had keys of their own may hold one here: it is no
        # result, so the plan is evaluated again (though a full run is then stored as that record).
        if record is not None and record.metadata["evaluation"]["stop_reason"] != "pruned":
            return Evaluation.from_dict(plan, record.metadata["evaluation"]), record.id, True

        def report(check: int, worst_ratio: float) -> bool:
            trial.report(worst_ratio, step=check)
            return trial.should_prune()

        start_from = (self.warm_start.start_models(plan, self.evaluator.analysis.groups, self.prepared.models)
                      if self.warm_start is not None else None)
        evaluation, merged = self.evaluator.evaluate(
            plan, seed=self.seed, report=report, start_from=start_from, frozen=frozen,
            start=self._start_point(start) if start is not None else None,
        )
        evaluated_with = {**self._identity(), "seed": self.seed}
        if start is not None:
            evaluated_with.update(start_checkpoint=start.checkpoint, start_plan=sorted(start.plan.shared))
        metadata = {"evaluation": evaluation.to_dict(), "evaluated_with": evaluated_with}
        pruned = evaluation.stop_reason == "pruned"
        key = key_of(pruned_after_steps=evaluation.cost.steps) if pruned else key_of()
        checkpoint = self.study_file.store.put(key, merged_state(merged), metadata)
        return evaluation, checkpoint, False

    def stored_evaluation(self, trial: TrialSummary) -> Evaluation | None:
        """The evaluation stored with a trial's merged weights (``None`` when it has none)."""
        if not trial.checkpoint:
            return None
        record = self.study_file.store.record(str(trial.checkpoint))
        return Evaluation.from_dict(trial.plan, record.metadata["evaluation"])

    def _start_point(self, trial: TrialSummary) -> StartPoint:
        """A stored trial's merged weights and evaluation, to start an incremental evaluation from."""
        store, checkpoint = self.study_file.store, str(trial.checkpoint)
        evaluation = self.stored_evaluation(trial)
        assert evaluation is not None  # a start is a stored feasible trial
        return StartPoint(plan=trial.plan, checkpoint=checkpoint, tensors=store.load(checkpoint), evaluation=evaluation)

    # ----------------------------------------------------------------- reading
    def lineage(self) -> dict[str, Any]:
        """Where this study comes from: ``parent_study``, ``scenario``, ``parent_checkpoint`` (those set)."""
        attrs = self.optuna_study.user_attrs
        keys = ("parent_study", "scenario", "parent_checkpoint")
        return {key: attrs[_ATTR_PREFIX + key] for key in keys if _ATTR_PREFIX + key in attrs}

    def history(self) -> list[TrialSummary]:
        return [TrialSummary.from_trial(t, self.space, self.strategy) for t in self.finished_trials()]

    def best(self) -> TrialSummary | None:
        """The best feasible trial: most bytes saved (with ``deploy:``, most frames processed first); ``None`` if none."""
        ranked = self.ranked()
        return ranked[0] if ranked else None

    def ranked(self) -> list[TrialSummary]:
        """The feasible trials, best first, as :meth:`best` ranks them (the publish gate tries them in this order)."""
        feasible = [t for t in self.history() if t.feasible]
        if self.study_file.settings.deploy is not None:  # memory-aware: the most frames processed first
            processed = {t.number: t.user_attrs.get("processed_fraction", 0.0) for t in self.finished_trials()}
            return sorted(feasible, key=lambda t: (-processed[t.number], -t.saved_bytes, t.number))
        return sorted(feasible, key=lambda t: (-t.saved_bytes, t.number))

    def pareto_front(self) -> list[TrialSummary]:
        """Trials no other trial beats on both bytes saved and worst accuracy ratio."""
        trials = self.history()
        return [
            t
            for t in trials
            if not any(
                o.saved_bytes >= t.saved_bytes
                and o.worst_ratio >= t.worst_ratio
                and (o.saved_bytes, o.worst_ratio) != (t.saved_bytes, t.worst_ratio)
                for o in trials
            )
        ]

    def merged_models(self, trial: TrialSummary) -> dict[str, Any]:
        """A trial's merged models, tied by its plan, with the weights from its checkpoint."""
        if trial.checkpoint is None:
            raise SearchmergeError(f"trial {trial.number} of study {self.study_name!r} has no stored weights")
        merged = merge_models(self.prepared.models, self.evaluator.analysis.groups, trial.plan)
        load_merged_state(merged, self.study_file.store.load(trial.checkpoint))
        return merged

    def trial(self, number: int) -> TrialSummary:
        """The finished trial ``number``."""
        for trial in self.history():
            if trial.number == number:
                return trial
        numbers = [t.number for t in self.history()]
        raise SearchmergeError(
            f"study {self.study_name!r} has no finished trial {number} (finished: {numbers or 'none yet'})"
        )

    def export(self, directory: str | Path, trial: TrialSummary | None = None) -> Path:
        """Write a trial's merged deployment (weights and manifest) to ``directory``.

        Args:
            directory: Where to write.
            trial: The trial to export (default: the best feasible one).

        Raises:
            SearchmergeError: If the study has no feasible trial (and none was named).
        """
        chosen = trial if trial is not None else self.best()
        if chosen is None:
            raise SearchmergeError(
                f"study {self.study_name!r} has no feasible plan yet ({len(self.history())} finished trials);"
                f" run more trials (searchmerge search {self.study_file.path} --study-name {self.study_name}"
                " --n-trials N) or export a given trial with --trial K"
            )
        merged = self.merged_models(chosen)
        metadata = {"study": self.study_name, "trial": chosen.number, "checkpoint": chosen.checkpoint,
                    "feasible": chosen.feasible,
                    # True or False once confirmed by full retraining from the originals; None: never confirmed.
                    CONFIRMED_ATTR: self.trial_attributes(chosen.number).get(CONFIRMED_ATTR)}
        return export_deployment(directory, self.prepared.workload, merged, plan=chosen.plan, metadata=metadata,
                                 settings=self.study_file.settings)

    def trial_attributes(self, number: int) -> dict[str, Any]:
        """Trial ``number``'s user attributes as stored now (read afresh: a confirmation may have added some)."""
        backend, trial_id = self._backend_trial(number)
        return dict(backend.get_trial(trial_id).user_attrs)

    def annotate_trial(self, number: int, attrs: Mapping[str, Any]) -> None:
        """Record ``attrs`` as user attributes of trial ``number``, finished or not (the dashboard shows them).

        Optuna refuses to change a finished trial through its API; a confirmation is a
        verdict about a finished trial's plan, so it is written into the trial's user
        attributes table directly (the one place searchmerge does so).
        """
        backend, trial_id = self._backend_trial(number)
        _set_user_attrs(backend, trial_id, attrs)

    def _backend_trial(self, number: int) -> tuple[RDBStorage, int]:
        storage = self.optuna_study._storage
        backend = getattr(storage, "_backend", storage)  # below Optuna's cache of finished trials
        return backend, backend.get_trial_id_from_study_id_trial_number(self.optuna_study._study_id, number)

    def export_best(self, directory: str | Path) -> Path:
        """Write the best feasible plan's merged deployment (weights and manifest) to ``directory``."""
        return self.export(directory)


def incremental_start(plan: SharingPlan, trials: Sequence[TrialSummary]) -> TrialSummary | None:
    """The stored feasible plan that ``plan`` is evaluated from incrementally, or ``None``.

    The rule, for every strategy: among the finished feasible trials with stored weights
    whose plan is a strict, non-empty subset of ``plan``, the one that saves the most bytes
    (ties: the earliest trial). The largest start leaves the fewest groups to add, so the
    fewest models retrain; for greedy it is the plan accepted so far, so every step after
    an accepted one builds on it. Sharing nothing is no start: its weights are the originals.
    """
    starts = [
        t for t in trials
        if t.feasible and t.checkpoint is not None and t.plan.shared and t.plan.shared < plan.shared
    ]
    return max(starts, key=lambda t: (t.saved_bytes, -t.number)) if starts else None


def deployed_plan(search: MergeSearch) -> TrialSummary:
    """The plan a study deployed: its best feasible trial, whose merged weights are stored."""
    best = search.best()
    if best is None or best.checkpoint is None:
        raise SearchmergeError(
            f"study {search.study_name!r} has no feasible plan to start from; run a full search first"
            f" (searchmerge search {search.study_file.path} --study-name {search.study_name})"
        )
    return best


def open_search(
    study: StudyFile,
    *,
    scenario: str | None = None,
    prepared: PreparedWorkload | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> MergeSearch:
    """Prepare the originals (or load them from the store) and open a search on them.

    Args:
        study: The study file.
        scenario: Search on this drift scenario's data (see :mod:`searchmerge.search.scenarios`).
        prepared: The prepared originals when the caller has them already.
        progress: Called with one line per step.
        **options: Passed to :class:`MergeSearch` (strategy, study_name, seed, ...).

    Example:
        >>> from searchmerge.config.study import open_study_file
        >>> search = open_search(open_study_file("studies/digits-edge.yaml"), strategy="tpe")  # doctest: +SKIP
        >>> search.run(20)  # doctest: +SKIP
    """
    if scenario is not None:
        get_scenario(study, scenario)  # an unknown scenario fails before any work
    originals = prepared if prepared is not None else prepare_study(study, progress=progress)
    data = drifted_workload(study, originals, scenario) if scenario is not None else originals
    return MergeSearch(study, data, scenario=scenario, progress=progress, **options)


def _open_storage(url: str, heartbeat_interval: int, grace_period: int) -> RDBStorage:
    """An RDB storage with heartbeats: stale RUNNING trials are failed and their plans retried.

    Workers started together on a fresh PostgreSQL database all create Optuna's tables,
    and PostgreSQL's ``CREATE TABLE IF NOT EXISTS`` is not safe against a concurrent
    one: the losers fail with a unique violation on ``pg_type`` (or a duplicate table).
    By then the winner's tables exist, so such a failure is retried a few times.
    """
    for attempt in range(_CREATE_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    url,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
                )
        except (sa_exc.IntegrityError, sa_exc.ProgrammingError) as exc:
            if attempt + 1 == _CREATE_ATTEMPTS:
                raise SearchmergeError(f"cannot open storage {url!r}: {str(exc).splitlines()[0]}") from None
            time.sleep(0.2 * (attempt + 1))
        except Exception as exc:  # noqa: BLE001 - any other failure to open means an unusable URL
            raise SearchmergeError(f"cannot open storage {url!r}: {str(exc).splitlines()[0]}") from None
    raise AssertionError("unreachable")


#: How often opening a storage is tried when a concurrent worker is creating its tables.
_CREATE_ATTEMPTS = 5


def _fail_stale(study: optuna.Study) -> None:
    from optuna.storages import fail_stale_trials

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        fail_stale_trials(study)


def _fail_abandoned(study: optuna.Study, after_s: float) -> None:
    """Fail RUNNING trials whose process died before their first heartbeat, and retry them.

    A worker killed between creating a trial and the trial's first heartbeat (while the
    sampler proposes the plan) leaves a RUNNING trial that heartbeats never mark stale,
    so it would stay RUNNING for ever and a search waiting for it would never finish.
    Such a trial has no parameters yet; once it is older than ``after_s`` (the grace
    period, and by default at least a minute, so a live worker's slow sampler is left
    alone) it is failed and handed to the same retry callback as a stale one.
    """
    storage = study._storage
    _fail_stale(study)
    oldest = datetime.now() - timedelta(seconds=after_s)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.params or trial.datetime_start is None or trial.datetime_start > oldest:
            continue
        try:
            storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first
        retry = storage.get_heartbeat_stale_trial_callback()
        if retry is not None:
            retry(study, storage.get_trial(trial._trial_id))


def _set_user_attrs(storage: RDBStorage, trial_id: int, attrs: Mapping[str, Any]) -> None:
    """Insert or replace user attributes of a trial in an RDB storage, whatever the trial's state."""
    from optuna.storages._rdb import models as rdb

    session = storage.scoped_session()
    try:
        for key, value in attrs.items():
            row = session.query(rdb.TrialUserAttributeModel).filter_by(trial_id=trial_id, key=key).one_or_none()
            if row is None:
                session.add(rdb.TrialUserAttributeModel(trial_id=trial_id, key=key, value_json=json.dumps(value)))
            else:
                row.value_json = json.dumps(value)
        session.commit()
    except Exception:
        session.rollback()
        raise
    finally:
        session.close()


def _trial_attributes(evaluation: Any, checkpoint: str, cached: bool) -> dict[str, Any]:
    """What a trial records for the dashboard and every reader: the verdict first, beside its numbers.

    ``feasible``, the ``constraint`` and the ``worst_ratio`` with the model it belongs to and how
    the constraint follows from it (``constraint_is``), then per model its ratio, the validation
    samples it was measured on (``samples:MODEL``) and its 95% interval (``ratio_ci95:MODEL``).
    """
    attrs: dict[str, Any] = {
        "feasible": evaluation.feasible,
        "constraint": evaluation.constraint,
        "worst_ratio": evaluation.worst_ratio,
        "worst_model": evaluation.worst_model.name,
        "constraint_is": constraint_text(evaluation),
        "stop_reason": evaluation.stop_reason,
        "unique_bytes": evaluation.unique_bytes,
        "saved_bytes": evaluation.saved_bytes,
        "unique_mb": round(evaluation.unique_bytes / 1e6, 4),
        "saved_mb": round(evaluation.saved_bytes / 1e6, 4),
        "cost_steps": evaluation.cost.steps,
        "cost_samples": evaluation.cost.samples,
        "cost_seconds": round(evaluation.cost.seconds, 3),
        "checkpoint": checkpoint,
        "from_store": cached,
        "plan_hash": evaluation.plan.plan_hash,
        "retrained_models": [m.name for m in evaluation.models if m.retrained],
    }
    if evaluation.accept != "point" or evaluation.accept_margin:  # the default says nothing new
        attrs.update(accept=evaluation.accept, accept_margin=evaluation.accept_margin)
    for model in evaluation.models:
        attrs[f"accuracy:{model.name}"] = round(model.accuracy, 5)
        attrs[f"ratio:{model.name}"] = round(model.ratio, 5)
        attrs[f"samples:{model.name}"] = model.samples
        interval = model.ratio_interval
        attrs[f"ratio_ci95:{model.name}"] = None if interval is None else (
            f"[{interval.low:.4f}, {interval.high:.4f}] n={interval.samples} {interval.method}")
        baseline = model.baseline_interval
        attrs[f"baseline_ci95:{model.name}"] = None if baseline is None else (
            f"{model.baseline:.4f} [{baseline.low:.4f}, {baseline.high:.4f}] n={baseline.samples} {baseline.method}")
    return attrs


def load_search(
    study: StudyFile, *, strategy: str | None = None, study_name: str | None = None, seed: int = 0
) -> MergeSearch:
    """Open an existing search for reading (report, export)."""
    name = study_name or default_study_name(study, strategy or "greedy")
    summaries = _study_summaries(study.storage)
    found = next((s for s in summaries if s.study_name == name), None)
    if found is None:
        known = ", ".join(s.study_name for s in summaries) or "none"
        raise SearchmergeError(f"no study named {name!r} in {study.storage} (studies there: {known})")
    strategy = strategy or str(found.user_attrs.get(_ATTR_PREFIX + "strategy", "greedy"))
    scenario = found.user_attrs.get(_ATTR_PREFIX + "scenario")  # a search on drifted data reads that data
    return open_search(study, scenario=scenario, strategy=strategy, study_name=name, seed=seed)


def _study_summaries(storage: str) -> list[optuna.study.StudySummary]:
    try:
        return optuna.get_all_study_summaries(storage)
    except Exception as exc:  # noqa: BLE001 - any failure to open means an unusable URL
        raise SearchmergeError(f"cannot open storage {storage!r}: {str(exc).splitlines()[0]}") from None


def searchmerge_studies(study: StudyFile) -> list[str]:
    """Names of the searchmerge studies of this study file's workload in its storage."""
    summaries = _study_summaries(study.storage)
    return [s.study_name for s in summaries if s.user_attrs.get(_ATTR_PREFIX + "workload") == study.workload.name]


def referenced_checkpoints(storage: str) -> set[str]:
    """Every checkpoint id that a trial or study of ``storage`` names (what ``store gc`` keeps)."""
    referenced: set[str] = set()
    for summary in _study_summaries(storage):
        parent = summary.user_attrs.get(_ATTR_PREFIX + "parent_checkpoint")
        if parent:
            referenced.add(str(parent))
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for trial in study.get_trials(deepcopy=False):
            for key in ("checkpoint", "start_checkpoint"):
                if trial.user_attrs.get(key):
                    referenced.add(str(trial.user_attrs[key]))
    return referenced
