"""The base of every searchmerge sampler, and the study history they all read.

A :class:`PlanSampler` proposes a whole sharing plan at once: Optuna's relative
sampling hands it every group's parameter, and it answers with the plan returned by
:meth:`PlanSampler.propose`. Samplers keep no state between trials: each proposal is
computed from the study's trials (its *history*), so a study resumed in another
process, or shared by several workers, is searched the same way.
"""

from __future__ import annotations

import abc
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.samplers._base import _process_constraints_after_trial
from optuna.trial import FrozenTrial, TrialState

from searchmerge.core.feasibility import is_feasible
from searchmerge.core.space import SearchSpace, SharingPlan

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.study import Study

ConstraintsFunc = Callable[[FrozenTrial], Sequence[float]]

_CONSTRAINTS_KEY = "constraints"  # where Optuna keeps a trial's constraint values

#: The objective's name in a study that maximises the bytes a plan saves (the search's, without ``deploy:``).
#: The value stays in bytes (the samplers and the greedy order compare values, and stored studies
#: keep theirs); the name says the unit, and each trial's ``saved_mb`` gives it in MB.
SAVED_BYTES_OBJECTIVE = "bytes saved (B)"
#: The name studies made before the unit was named carry; they maximise bytes saved too.
LEGACY_SAVED_BYTES_OBJECTIVE = "bytes saved"


@dataclass(frozen=True)
class PlanRecord:
    """One evaluated plan of a study.

    Attributes:
        plan: The plan the trial evaluated.
        feasible: Whether every model kept its accuracy target.
        saved_bytes: Bytes the plan saves.
        number: The trial's number in the study.
        value: The trial's objective value, what the study maximises (bytes saved, or with
            a ``deploy:`` section the simulated frames processed, as the search computed
            it); ``None`` when there is none (a pruned trial, a record made by hand).
    """

    plan: SharingPlan
    feasible: bool
    saved_bytes: int
    number: int = -1
    value: float | None = None


def trial_constraints(trial: FrozenTrial) -> tuple[float, ...] | None:
    """The constraint values stored on ``trial``, or ``None`` when it has none.

    Reads both ways Optuna stores them: the list a sampler's ``constraints_func``
    writes (system attribute ``constraints``) and the values of
    ``trial.set_constraint(key, value)`` (system attributes ``constraints:<key>``).
    """
    values: list[float] = []
    found = False
    stored = trial.system_attrs.get(_CONSTRAINTS_KEY)
    if stored is not None:
        found = True
        values.extend(float(value) for value in stored)
    prefix = f"{_CONSTRAINTS_KEY}:"
    for key, value in trial.system_attrs.items():
        if key.startswith(prefix):
            found = True
            values.append(float(value))
    return tuple(values) if found else None


def trial_feasible(trial: FrozenTrial, constraints_func: ConstraintsFunc | None = None) -> bool:
    """Whether a finished trial's plan kept every model's accuracy target.

    The rule, first match wins:

    1. a PRUNED trial is infeasible (its evaluation stopped as hopeless);
    2. constraint values stored on the trial (by a sampler's ``constraints_func``, or by
       ``trial.set_constraint``): feasible when
       :func:`~searchmerge.core.feasibility.is_feasible` holds for each. These are the
       values Optuna's own samplers and the dashboard see; when a ``constraints_func`` is
       given they are exactly its output;
    3. ``constraints_func(trial)``, when given and nothing is stored yet (e.g. a trial
       added to the study by hand): feasible by the same rule;
    4. the user attribute ``feasible``;
    5. otherwise feasible, as Optuna counts a trial without constraints.
    """
    if trial.state == TrialState.PRUNED:
        return False
    constraints = trial_constraints(trial)
    if constraints is None and constraints_func is not None:
        constraints = tuple(float(value) for value in constraints_func(trial))
    if constraints is not None:
        return all(is_feasible(value) for value in constraints)
    feasible = trial.user_attrs.get("feasible")
    return True if feasible is None else bool(feasible)


def history(
    study: Study, space: SearchSpace, constraints_func: ConstraintsFunc | None = None
) -> list[PlanRecord]:
    """The study's COMPLETE and PRUNED trials as plan records, ordered by trial number.

    Feasibility follows :func:`trial_feasible`.

    Example:
        >>> import optuna
        >>> from searchmerge.core.space import GroupInfo, SearchSpace
        >>> space = SearchSpace([GroupInfo(name="a", saved_bytes=10)])
        >>> study = optuna.create_study(direction="maximize")
        >>> study.enqueue_trial({"a": True})
        >>> def objective(trial):
        ...     trial.set_user_attr("feasible", False)
        ...     return space.saved_bytes(space.suggest(trial))
        >>> study.optimize(objective, n_trials=1)
        >>> history(study, space)
        [PlanRecord(plan=SharingPlan(shared=frozenset({'a'})), feasible=False, saved_bytes=10, number=0, value=10.0)]
    """
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    records = []
    for trial in sorted(trials, key=lambda t: t.number):
        plan = space.plan_from_params(trial.params)
        records.append(
            PlanRecord(
                plan=plan,
                feasible=trial_feasible(trial, constraints_func),
                saved_bytes=space.saved_bytes(plan),
                number=trial.number,
                value=trial.values[0] if trial.values else None,
            )
        )
    return records


def maximises_saved_bytes(study: Study) -> bool:
    """Whether ``study``'s objective is the bytes a plan saves.

    Only then can a plan saving no more bytes than a feasible one be passed over as
    unable to improve the result. The search names its objective (Optuna's metric
    names): ``bytes saved (B)`` (``bytes saved`` before the unit was named), or with a
    ``deploy:`` section the simulated frames processed, where a plan saving fewer bytes may
    process more frames (its merged models swap in smaller units, say), and nothing short
    of evaluating it tells. A study that names no objective (a plain Optuna study, as in
    the examples) is taken to maximise bytes saved.
    """
    return study.metric_names in (None, [SAVED_BYTES_OBJECTIVE], [LEGACY_SAVED_BYTES_OBJECTIVE])


def pending_plans(study: Study, space: SearchSpace, trial: FrozenTrial | None = None) -> set[SharingPlan]:
    """Plans that other workers are evaluating now (RUNNING trials with every group's parameter set)."""
    names = set(space.names)
    plans = set()
    for other in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial is not None and other.number == trial.number:
            continue
        if names <= other.params.keys():
            plans.add(space.plan_from_params(other.params))
    return plans


def best_feasible(records: Iterable[PlanRecord]) -> PlanRecord | None:
    """The feasible record the study ranks first (the earliest among equals).

    Records are ranked by their objective value, the one the search computed (bytes saved,
    or with ``deploy:`` frames processed, ties by bytes saved), not by a ranking of our
    own, so that the samplers' best is the search's best. Records without a value (made by
    hand, such as a re-search's prior records, which are never mixed with a study's own)
    rank by the bytes they save.
    """
    best = None
    for record in records:
        if record.feasible and (best is None or _rank(record) > _rank(best)):
            best = record
    return best


def _rank(record: PlanRecord) -> float:
    return record.value if record.value is not None else float(record.saved_bytes)


def dominated_by_failure(plan: SharingPlan, failed: Iterable[SharingPlan]) -> bool:
    """Whether ``plan`` contains a plan that was found infeasible.

    Sharing more groups rarely restores an accuracy that sharing fewer lost, so such a
    plan is treated as infeasible without evaluating it.
    """
    return any(bad.shared <= plan.shared for bad in failed)


class PlanSampler(optuna.samplers.BaseSampler, abc.ABC):
    """An Optuna sampler that proposes a whole sharing plan per trial.

    Subclasses implement :meth:`propose`. Everything else is shared: the relative
    search space is the space's distributions, proposals are derived from the study
    history only, and when ``constraints_func`` is given, every finished trial's
    constraint values are stored the way Optuna's own samplers store them (the
    ``constraints`` system attribute that optuna-dashboard shows).

    Args:
        space: The search space whose parameters this sampler proposes.
        seed: Seed for every random choice. A proposal depends only on the seed, the
            trial number and the history, so two studies with the same seed and history
            get the same plans. ``None`` draws a seed once.
        constraints_func: Optional ``FrozenTrial -> sequence of floats`` (feasible
            when all ``<= 0``), evaluated after each COMPLETE or PRUNED trial and
            stored on it. With Optuna >= 5 calling ``trial.set_constraint`` in the
            objective works too, without this argument.
    """

    def __init__(
        self,
        *,
        space: SearchSpace,
        seed: int | None = None,
        constraints_func: ConstraintsFunc | None = None,
    ) -> None:
        if not isinstance(space, SearchSpace):
            raise TypeError(f"space must be a SearchSpace, not {type(space).__name__}")
        self._space = space
        self._seed = seed if seed is not None else secrets.randbits(32)
        self._constraints_func = constraints_func
        self._independent_sampler = optuna.samplers.RandomSampler(seed=self._seed)

    @property
    def space(self) -> SearchSpace:
        """The search space this sampler proposes plans in."""
        return self._space

    @abc.abstractmethod
    def propose(self, study: Study, trial: FrozenTrial, records: Sequence[PlanRecord]) -> SharingPlan:
        """The plan to evaluate in ``trial``, given the study's evaluated plans.

        Args:
            study: The study.
            trial: The trial being started (use its number, not its state).
            records: :func:`history` of the study, ordered by trial number.
        """

    def history(self, study: Study) -> list[PlanRecord]:
        """:func:`history` of ``study`` under this sampler's space and constraints."""
        return history(study, self._space, self._constraints_func)

    def rng(self, trial: FrozenTrial) -> np.random.Generator:
        """The random generator for ``trial``: seeded by the sampler's seed and the trial number."""
        return np.random.default_rng([self._seed, trial.number])

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._space.distributions()

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        plan = self.propose(study, trial, self.history(study))
        params = self._space.params_from_plan(plan)
        return {name: value for name, value in params.items() if name in search_space}

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._independent_sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        if self._constraints_func is not None:
            _process_constraints_after_trial(self._constraints_func, study, trial, state)

    def reseed_rng(self) -> None:
        # Proposals are seeded per trial number, so copies of this sampler in threads
        # (``n_jobs > 1``) already draw differently; only the fallback needs a new seed.
        self._independent_sampler.reseed_rng()

    def random_untried(
        self,
        rng: np.random.Generator,
        tried: set[SharingPlan],
        failed: Sequence[SharingPlan] = (),
        attempts: int = 256,
        more_than: int | None = None,
    ) -> SharingPlan | None:
        """A random plan not in ``tried`` (each group shared with a random density), or ``None``.

        Plans containing a failed plan are avoided while others can be found. Only plans
        saving more than ``more_than`` bytes, when given, are drawn (when the study maximises
        bytes saved, see :func:`maximises_saved_bytes`, a plan saving no more than the best
        feasible one cannot improve the result).
        """
        names = self._space.names
        fallback = None
        for _ in range(attempts):
            density = rng.uniform()
            mask = rng.uniform(size=len(names)) < density
            plan = SharingPlan.of(name for name, on in zip(names, mask) if on)
            if plan in tried or (more_than is not None and self._space.saved_bytes(plan) <= more_than):
                continue
            if not dominated_by_failure(plan, failed):
                return plan
            fallback = fallback or plan
        return fallback
