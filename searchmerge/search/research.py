"""Incremental re-search: adapt a deployed merge to drifted data or a changed workload.

A full search retrains tens of plans from the originals. After a drift, or when a model
joins or leaves the workload, most of what the earlier (parent) study learned still holds,
so a re-search starts from it:

1. the deployed plan (the parent's best feasible trial) is re-validated first, retrained
   from its own stored merged weights rather than from the originals (after a workload
   change on unchanged data, only the new models retrain: the deployed ones are settled);
2. if it fails, it backs off from the groups the failing models take part in: the larger
   half of them is dropped, and again from the next failure, until a plan passes or
   nothing implicated is left;
3. then the strategy explores as in any search. Greedy adopts the best feasible plan so
   far and tries to add the remaining groups; every strategy reads these first trials
   like its own.

Every trial retrains from the parent's merged weights (each model unmerged into its own
module; the new plan ties them again), and records ``parent_study`` and
``start_checkpoint``. The study's user attributes ``searchmerge:parent_study``,
``searchmerge:scenario`` and ``searchmerge:parent_checkpoint`` show the lineage in the
dashboard and the report. The new study lives in the parent's storage; the parent's trials
and checkpoints are only read. Re-running the same call resumes the re-search.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from optuna.trial import FrozenTrial, TrialState

from searchmerge.analysis import ShareableGroup, analyze
from searchmerge.analysis.layers import shareable_tensors
from searchmerge.config.study import StudyFile
from searchmerge.core.errors import SearchmergeError
from searchmerge.core.feasibility import constraint_value, is_feasible
from searchmerge.core.progress import Progress
from searchmerge.core.space import SearchSpace, SharingPlan
from searchmerge.search.merge_search import (
    MergeSearch,
    WarmStart,
    constraint_of,
    deployed_plan,
    load_search,
    open_search,
)
from searchmerge.search.scenarios import get_scenario
from searchmerge.search.strategies import PlanRecord, trial_feasible
from searchmerge.training.evaluate import Evaluation
from searchmerge.training.prepare import prepare_study

__all__ = [
    "WARM_ATTR",
    "back_off",
    "default_research_name",
    "failing_models",
    "join_deployed_groups",
    "mapped_plan",
    "next_warm_plan",
    "prior_records",
    "research",
    "start_models",
    "trial_evaluation",
]

#: Trial user attribute marking the re-search's own first trials: ``deployed`` or ``backoff``.
WARM_ATTR = "warm_start"


def default_research_name(parent: str, study: StudyFile, parent_file: StudyFile, scenario: str | None) -> str:
    """``PARENT-SCENARIO`` after a drift; ``WORKLOAD-from-PARENT`` after a workload change."""
    name = parent if study.workload.name == parent_file.workload.name else f"{study.workload.name}-from-{parent}"
    return f"{name}-{scenario}" if scenario else name


def research(
    study: StudyFile,
    *,
    scenario: str | None = None,
    parent_file: StudyFile | None = None,
    parent_study: str | None = None,
    strategy: str = "greedy",
    n_trials: int = 10,
    study_name: str | None = None,
    seed: int = 0,
    heartbeat_interval: int = 10,
    progress: Progress | None = None,
) -> MergeSearch:
    """Re-search ``study`` incrementally from a parent study's deployed plan.

    Args:
        study: The study file to search: the same as the parent's after a drift, or one
            with a model added or retired.
        scenario: Search on this drift scenario's data (see :mod:`searchmerge.search.scenarios`).
        parent_file: The parent's study file when the workload changed (default: ``study``).
            Its storage holds the parent study; the re-search is stored there too.
        parent_study: The parent study's name (default: ``WORKLOAD-greedy``).
        strategy: The strategy that explores after the re-validation and back-off.
        n_trials: Finished trials the re-search should have in total.
        study_name: The new study (default: :func:`default_research_name`).
        seed: Seed of the sampler and the retraining.
        heartbeat_interval: See :class:`~searchmerge.search.merge_search.MergeSearch`.
        progress: Called with one line per event.

    Returns:
        The re-search, run to ``n_trials`` finished trials.

    Example:
        >>> from searchmerge.config.study import open_study_file
        >>> search = research(open_study_file("studies/digits-edge.yaml"), scenario="night", n_trials=6)  # doctest: +SKIP
        >>> search.best(), search.lineage()  # doctest: +SKIP
    """
    say = progress or (lambda _line: None)
    if n_trials < 1:
        raise SearchmergeError(f"n-trials must be at least 1, got {n_trials}")
    parent_file = parent_file or study
    if scenario is not None:
        get_scenario(study, scenario)  # fail on an unknown scenario before any work
    elif parent_file.workload.name == study.workload.name:
        raise SearchmergeError("nothing changed to re-search for: give a drift scenario (--data) or, for a changed"
                               " workload, the parent's study file (--parent-study-file)")
    parent = load_search(parent_file, study_name=parent_study)
    deployed = deployed_plan(parent)
    say(f"parent study {parent.study_name!r}: deployed plan is trial {deployed.number}"
        f" ({len(deployed.plan)} shared groups, checkpoint {deployed.checkpoint})")
    tensors = parent.study_file.store.load(deployed.checkpoint)  # type: ignore[arg-type]

    # After a drift the parent searched this very workload on its original data: its
    # prepared originals are ours, so they are not loaded a second time.
    same_originals = parent_file is study and parent.scenario is None
    prepared = parent.prepared if same_originals else prepare_study(study, progress=say)
    models = start_models(prepared.models, tensors, say)  # type: ignore[arg-type]
    warm = WarmStart(parent.study_name, deployed.checkpoint, models)
    name = study_name or default_research_name(parent.study_name, study, parent_file, scenario)
    if name == parent.study_name and study.storage == parent_file.storage:
        raise SearchmergeError(f"the re-search needs a study name of its own, not the parent's {name!r}")
    options = {"prior": prior_records(parent, study)} if strategy == "surrogate" else {}
    search = open_search(study, scenario=scenario, prepared=prepared, progress=say, strategy=strategy,
                         study_name=name, seed=seed, heartbeat_interval=heartbeat_interval, warm_start=warm,
                         sampler_options=options)
    start = mapped_plan(deployed.plan, search.space)
    dropped = sorted(deployed.plan.shared - start.shared)
    if dropped:
        say(f"groups of the deployed plan that no longer exist: {', '.join(dropped)}")
    parent_models = tensors_models(tensors)
    join_deployed_groups(models, search.evaluator.analysis.groups, start, parent_models=parent_models, say=say)
    if scenario is None:  # on unchanged data the parent's models are settled: only a new one adapts
        settled = frozenset(search.prepared.models) & parent_models
        search.warm_start = dataclasses.replace(warm, settled=settled, settled_plan=start)
        new = sorted(set(search.prepared.models) - settled)
        if new:
            say(f"deployed plan: {', '.join(new)} adapt(s) alone; the deployed models keep their weights")
    _warm_up(search, start, n_trials)
    search.run(n_trials)
    return search


def start_models(originals: Mapping[str, Any], tensors: Mapping[str, Any], say: Progress) -> dict[str, Any]:
    """Each model as its own module, with the parent's merged weights where it had them.

    A model the parent did not have (a new one) starts from its original. Copies are
    separate modules, so weights that were tied in the parent are now equal but not
    shared, and the new plan decides again what to tie.
    """
    models = {}
    for name, original in originals.items():
        prefix = f"{name}/"
        state = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
        model = copy.deepcopy(original)
        if state:
            try:
                model.load_state_dict(state)
            except RuntimeError as exc:
                raise SearchmergeError(
                    f"model {name!r} does not fit the parent's merged weights of a model of the same name"
                    f" ({str(exc).splitlines()[0]}); give a changed model a new name so it starts from its original"
                ) from None
        else:
            say(f"{name}: new in this workload, starts from its original")
        models[name] = model
    return models


def tensors_models(tensors: Mapping[str, Any]) -> set[str]:
    """The models that have weights in a checkpoint of merged weights (``model/tensor`` keys)."""
    return {key.split("/", 1)[0] for key in tensors}


def join_deployed_groups(
    models: Mapping[str, Any],
    groups: Sequence[ShareableGroup],
    plan: SharingPlan,
    *,
    parent_models: set[str],
    say: Progress,
) -> None:
    """A new model joins the deployed shared groups with their deployed weights.

    The parent's models in a group of ``plan`` hold one trained copy (they were tied).
    Averaging a new member's original weights into it would move the weights every
    deployed model has adapted to; copying that copy into the new member instead leaves
    them exactly as deployed, and only the new model has to adapt. Its other layers keep
    its original weights.
    """
    joined: dict[str, list[str]] = {}
    for group in groups:
        if group.name not in plan.shared:
            continue
        deployed = [(model, layer) for model, layer in group.members if model in parent_models]
        if not deployed:
            continue
        source = shareable_tensors(models[deployed[0][0]].get_submodule(deployed[0][1]))
        for model, layer in group.members:
            if model in parent_models:
                continue
            target = shareable_tensors(models[model].get_submodule(layer))
            with torch.no_grad():
                for tensor_name, value in source.items():
                    target[tensor_name].copy_(value)
            joined.setdefault(model, []).append(group.name)
    for model, names in joined.items():
        say(f"{model}: joins {len(names)} deployed shared group(s) with their deployed weights")


def mapped_plan(plan: SharingPlan, space: SearchSpace) -> SharingPlan:
    """A parent's plan in a (possibly changed) workload's groups, matched by group name.

    A group that kept its name keeps the parent's decision, also when it gained a new
    model (the back-off drops it if that fails); a group that no longer exists is dropped.
    """
    return SharingPlan.of(name for name in space.names if name in plan.shared)


def prior_records(parent: MergeSearch, study: StudyFile) -> list[PlanRecord]:
    """The parent's outcomes in the new workload's groups, as prior data for a surrogate.

    They were measured before the change, so the surrogate weighs them less than its own
    trials; they still tell it which groups were hard to share.
    """
    if study.workload.name == parent.study_file.workload.name:
        space = parent.space
    else:
        space = SearchSpace.from_groups(analyze(study.workload).groups)
    return [
        PlanRecord(plan=(plan := mapped_plan(t.plan, space)), feasible=t.feasible, saved_bytes=space.saved_bytes(plan))
        for t in parent.history()
    ]


def failing_models(evaluation: Evaluation) -> list[str]:
    """Models that miss the target in ``evaluation``, by the one feasibility rule.

    Each model is judged on every ratio measured for it (validation, and test where a
    marginal pass was confirmed), exactly, so a model the plan failed for is never read
    as passing: an infeasible plan always names some failing model, and the back-off
    goes on from it.
    """
    return sorted(
        m.name for m in evaluation.models if not is_feasible(constraint_value(evaluation.target, m.ratios))
    )


def trial_evaluation(search: MergeSearch, trial: FrozenTrial) -> Evaluation:
    """The evaluation a finished trial recorded, from the checkpoint it names.

    The trial's ``ratio:`` attributes are validation ratios rounded for display, without
    the test-split confirmation; the store keeps the evaluation itself with the weights.
    """
    record = search.study_file.store.record(str(trial.user_attrs["checkpoint"]))
    return Evaluation.from_dict(search.space.plan_from_params(trial.params), record.metadata["evaluation"])


def back_off(plan: SharingPlan, failing: list[str], space: SearchSpace) -> SharingPlan | None:
    """``plan`` without the larger half of the groups the failing models take part in.

    Larger groups first: they save the most but also tie the most weights, so they
    are the likeliest cause; halving finds a feasible plan in a few steps, as greedy's
    halving of a failed block does. ``None`` when no shared group involves a failing
    model (then sharing is not what broke it).
    """
    implicated = sorted(
        (name for name in plan.shared if set(space.group(name).models) & set(failing)),
        key=lambda name: (-space.group(name).saved_bytes, name),
    )
    if not implicated:
        return None
    return SharingPlan.of(plan.shared - set(implicated[: math.ceil(len(implicated) / 2)]))


def next_warm_plan(search: MergeSearch, start: SharingPlan) -> tuple[SharingPlan, str] | None:
    """The next re-validation or back-off plan, from the study's trials; ``None`` once done.

    Derived from the trials alone, so a resumed re-search continues where it stopped.
    """
    trials = sorted(search.finished_trials(), key=lambda t: t.number)
    if not trials:
        return start, "deployed"
    if any(WARM_ATTR not in t.user_attrs for t in trials):
        return None  # the strategy has taken over
    last = trials[-1]
    if trial_feasible(last, constraint_of):
        return None
    plan = search.space.plan_from_params(last.params)
    smaller = back_off(plan, failing_models(trial_evaluation(search, last)), search.space)
    return (smaller, "backoff") if smaller is not None else None


def _warm_up(search: MergeSearch, start: SharingPlan, n_trials: int) -> None:
    """Run the re-validation and back-off trials, one at a time, before the strategy's own."""
    study = search.optuna_study
    while (done := len(search.finished_trials())) < n_trials:
        if not study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)):
            step = next_warm_plan(search, start)
            if step is None:
                return
            plan, role = step
            search.say(f"{role} plan: {len(plan)} shared group(s)")
            study.enqueue_trial(search.space.params_from_plan(plan), user_attrs={WARM_ATTR: role})
        search.run(done + 1, announce=False)
