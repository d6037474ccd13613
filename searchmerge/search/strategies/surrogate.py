"""A learned feasibility surrogate, and the sampler that uses it to choose plans.

:class:`FeasibilitySurrogate` is a scikit-learn classifier over plan masks (one 0/1
column per group) that predicts the probability that a plan keeps every model's
accuracy. :class:`SurrogateSampler` proposes the plan that saves the most bytes among
those the surrogate is confident about, and sometimes the most informative one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_array, check_is_fitted, check_X_y

from searchmerge.core.space import SearchSpace, SharingPlan
from searchmerge.search.strategies.base import (
    ConstraintsFunc,
    PlanRecord,
    PlanSampler,
    best_feasible,
    dominated_by_failure,
    pending_plans,
)
from searchmerge.search.strategies.greedy import GreedySampler

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial

_METHODS = ("logistic", "forest")


class FeasibilitySurrogate(ClassifierMixin, BaseEstimator):
    """Predicts whether a sharing plan keeps every model's accuracy target.

    A binary classifier over plan masks: ``X`` has one 0/1 column per group, ``y`` is
    ``True`` for a feasible plan. It wraps a logistic regression (the default: sharing
    a group that hurts accuracy pushes the odds down by a learned amount, which fits few
    observations well) or a random forest (captures interactions, needs more trials).

    While the observations hold one class only (all plans feasible, or all infeasible)
    no classifier can be fitted; the surrogate then predicts the smoothed rate
    ``(n_feasible + smoothing) / (n + 2 * smoothing)`` for every plan.

    Args:
        method: ``"logistic"`` or ``"forest"``.
        C: Inverse regularisation strength of the logistic regression.
        n_estimators: Trees of the random forest.
        smoothing: Pseudo-count of the one-class fallback (Laplace smoothing at 1).
        random_state: Seed of the random forest.

    Attributes:
        classes_: ``array([False, True])``; the columns of :meth:`predict_proba`.
        n_features_in_: Number of groups seen in :meth:`fit`.
        estimator_: The fitted classifier, or ``None`` in the one-class case.
        feasible_rate_: The smoothed share of feasible plans in the training data.

    Example:
        >>> import numpy as np
        >>> X = np.array([[0, 0], [1, 0], [0, 1], [1, 1]])
        >>> y = np.array([True, True, False, False])  # group 1 breaks accuracy
        >>> surrogate = FeasibilitySurrogate(C=10.0).fit(X, y)
        >>> bool(surrogate.predict_proba([[1, 0]])[0, 1] > 0.5), bool(surrogate.predict([[0, 1]])[0])
        (True, False)
    """

    def __init__(
        self,
        *,
        method: str = "logistic",
        C: float = 1.0,
        n_estimators: int = 100,
        smoothing: float = 1.0,
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.method = method
        self.C = C
        self.n_estimators = n_estimators
        self.smoothing = smoothing
        self.random_state = random_state

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> FeasibilitySurrogate:
        """Fit on plan masks ``X`` and their feasibility ``y``; returns ``self``."""
        if self.method not in _METHODS:
            raise ValueError(f"method must be one of {', '.join(_METHODS)}, not {self.method!r}")
        X, y = check_X_y(X, y, dtype=np.float64)
        y = y.astype(bool)
        self.n_features_in_ = X.shape[1]
        self.classes_ = np.array([False, True])
        weights = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        n_feasible = float(weights[y].sum())
        self.feasible_rate_ = (n_feasible + self.smoothing) / (float(weights.sum()) + 2 * self.smoothing)
        if y.all() or not y.any():
            self.estimator_ = None
            return self
        if self.method == "logistic":
            # Newton-Cholesky: exact and fast for few samples and a few hundred groups.
            estimator = LogisticRegression(C=self.C, solver="newton-cholesky", max_iter=1000)
        else:
            estimator = RandomForestClassifier(n_estimators=self.n_estimators, random_state=self.random_state)
        self.estimator_ = estimator.fit(X, y, sample_weight=sample_weight)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Probabilities of ``[infeasible, feasible]`` for each plan mask in ``X``."""
        check_is_fitted(self, "classes_")
        X = check_array(X, dtype=np.float64)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but the surrogate was fitted with {self.n_features_in_}")
        if self.estimator_ is None:
            feasible = np.full(len(X), self.feasible_rate_)
        else:
            column = list(self.estimator_.classes_).index(True)
            feasible = self.estimator_.predict_proba(X)[:, column]
        return np.column_stack([1.0 - feasible, feasible])

    def predict(self, X: Any) -> np.ndarray:
        """Whether each plan mask in ``X`` is predicted feasible."""
        return self.predict_proba(X)[:, 1] >= 0.5


class SurrogateSampler(PlanSampler):
    """Proposes the plan that saves the most bytes among those a surrogate trusts.

    The first ``n_startup`` trials follow the greedy search (largest groups first, see
    :class:`~searchmerge.search.strategies.GreedySampler`), which gives informative, nested
    plans. After that, each trial:

    1. fits the surrogate on every evaluated plan, plus the empty plan marked feasible
       (sharing nothing leaves the original models, which meet their targets by
       definition), so it can learn even before the first feasible trial;
    2. generates candidate plans: random masks of varied densities, single-group flips of
       the best feasible plan, random additions to it, and the greedy prefixes (the k
       largest groups); drops plans already evaluated or being evaluated, and plans
       containing a plan found infeasible;
    3. exploits: proposes the candidate that saves the most bytes among those with
       predicted ``P(feasible) >= confidence``;
    4. explores instead, with probability ``explore`` or when no candidate is confident
       enough: proposes the candidate maximising ``saved_bytes * P * (1 - P)``, a large
       plan whose outcome the surrogate is unsure of, so its result teaches the most.

    An evaluated plan is never proposed again while an untried one exists.

    A search evaluates a proposal that extends a stored feasible plan incrementally, from
    the largest such plan's merged weights (one rule for every strategy,
    :func:`searchmerge.search.merge_search.incremental_start`); the surrogate learns from
    those verdicts like any other.

    Args:
        space: The search space.
        n_startup: Trials that follow the greedy order before the surrogate is used.
        confidence: ``P(feasible)`` a plan needs to be exploited.
        explore: Probability of an exploration step.
        n_candidates: Random candidate masks per proposal (more are added around the best plan).
        estimator: A scikit-learn classifier with ``predict_proba``, cloned and fitted for
            each proposal; default ``FeasibilitySurrogate()``.
        prior: Outcomes known from elsewhere, e.g. an earlier study of the same groups
            before a drift: the surrogate learns from them too, with ``prior_weight``
            each (evaluated plans weigh 1), but they count as neither tried nor failed.
        prior_weight: Sample weight of each prior record.
        seed: Seed of candidates, exploration and the estimator.
        constraints_func: See :class:`~searchmerge.search.strategies.PlanSampler`.

    Example:
        >>> import optuna
        >>> from searchmerge.core.space import GroupInfo, SearchSpace
        >>> space = SearchSpace([GroupInfo(name=f"g{i}", saved_bytes=10 + i) for i in range(8)])
        >>> def objective(trial):
        ...     plan = space.suggest(trial)
        ...     trial.set_user_attr("feasible", "g7" not in plan.shared)
        ...     return space.saved_bytes(plan)
        >>> sampler = SurrogateSampler(space=space, seed=0)
        >>> study = optuna.create_study(direction="maximize", sampler=sampler)
        >>> study.optimize(objective, n_trials=12)
    """

    def __init__(
        self,
        *,
        space: SearchSpace,
        n_startup: int = 4,
        confidence: float = 0.7,
        explore: float = 0.2,
        n_candidates: int = 256,
        estimator: Any = None,
        prior: Sequence[PlanRecord] = (),
        prior_weight: float = 0.5,
        seed: int | None = None,
        constraints_func: ConstraintsFunc | None = None,
    ) -> None:
        super().__init__(space=space, seed=seed, constraints_func=constraints_func)
        if n_startup < 0:
            raise ValueError(f"n_startup must be >= 0, not {n_startup!r}")
        if not 0.0 <= confidence <= 1.0:
            raise ValueError(f"confidence must be in [0, 1], not {confidence!r}")
        if not 0.0 <= explore <= 1.0:
            raise ValueError(f"explore must be in [0, 1], not {explore!r}")
        if n_candidates < 1:
            raise ValueError(f"n_candidates must be >= 1, not {n_candidates!r}")
        self._n_startup = n_startup
        self._confidence = confidence
        self._explore = explore
        self._n_candidates = n_candidates
        if not 0.0 < prior_weight <= 1.0:
            raise ValueError(f"prior_weight must be in (0, 1], not {prior_weight!r}")
        self._estimator = estimator if estimator is not None else FeasibilitySurrogate()
        self._prior = tuple(prior)
        self._prior_weight = prior_weight
        for record in self._prior:
            record.plan.checked(space.names)
        self._greedy = GreedySampler(space=space, seed=self._seed)
        self._order = [g.name for g in sorted(space.groups, key=lambda g: (-g.saved_bytes, g.name))]
        self._bytes = np.array([group.saved_bytes for group in space.groups], dtype=np.float64)

    def propose(self, study: Study, trial: FrozenTrial, records: Sequence[PlanRecord]) -> SharingPlan:
        if len(records) < self._n_startup:
            return self._greedy.propose(study, trial, records)
        rng = self.rng(trial)
        tried = {record.plan for record in records} | pending_plans(study, self._space, trial)
        failed = [record.plan for record in records if not record.feasible]
        best = best_feasible(records)

        candidates = [plan for plan in self._candidates(rng, best) if plan not in tried]
        viable = [plan for plan in candidates if not dominated_by_failure(plan, failed)]
        candidates = viable or candidates
        if not candidates:
            fallback = self.random_untried(rng, tried, failed)
            if fallback is not None:
                return fallback
            return best.plan if best is not None else SharingPlan.of(())

        probability = self._feasibility(rng, records, candidates)
        saved = np.array([self._space.saved_bytes(plan) for plan in candidates], dtype=np.float64)
        confident = probability >= self._confidence
        if rng.uniform() >= self._explore and confident.any():
            # Most bytes among the confident plans; the more probable among equals.
            index = max(np.flatnonzero(confident), key=lambda i: (saved[i], probability[i]))
        else:
            index = int(np.argmax(saved * probability * (1.0 - probability)))
        return candidates[index]

    def surrogate(self, study: Study) -> Any:
        """The surrogate fitted on the history of ``study`` (for reports and analysis)."""
        records = self.history(study)
        return self._fit(np.random.default_rng(self._seed), records)

    def _feasibility(
        self, rng: np.random.Generator, records: Sequence[PlanRecord], candidates: list[SharingPlan]
    ) -> np.ndarray:
        model = self._fit(rng, records)
        proba = model.predict_proba(self._masks(candidates))
        classes = list(getattr(model, "classes_", [False, True]))
        if True in classes:
            return np.asarray(proba[:, classes.index(True)], dtype=np.float64)
        return np.zeros(len(candidates))

    def _fit(self, rng: np.random.Generator, records: Sequence[PlanRecord]) -> Any:
        plans = [SharingPlan.of(())] + [record.plan for record in [*records, *self._prior]]
        y = np.array([True] + [record.feasible for record in [*records, *self._prior]])
        model = clone(self._estimator)
        if "random_state" in model.get_params():
            model.set_params(random_state=int(rng.integers(2**31 - 1)))
        if not self._prior:
            return model.fit(self._masks(plans), y)
        weights = np.array([1.0] * (1 + len(records)) + [self._prior_weight] * len(self._prior))
        return model.fit(self._masks(plans), y, sample_weight=weights)

    def _masks(self, plans: Sequence[SharingPlan]) -> np.ndarray:
        names = self._space.names
        return np.array([[name in plan.shared for name in names] for plan in plans], dtype=np.float64)

    def _candidates(self, rng: np.random.Generator, best: PlanRecord | None) -> list[SharingPlan]:
        names = np.array(self._space.names, dtype=object)
        n = len(names)
        masks = [rng.uniform(size=(self._n_candidates, n)) < rng.uniform(size=(self._n_candidates, 1))]
        position = {name: i for i, name in enumerate(self._space.names)}
        prefixes = np.zeros((n, n), dtype=bool)
        for k, name in enumerate(self._order):
            prefixes[k:, position[name]] = True
        masks.append(prefixes)
        if best is not None:
            base = np.array([name in best.plan.shared for name in self._space.names])
            masks.append(base ^ np.eye(n, dtype=bool))
            extra = max(1, self._n_candidates // 4)
            masks.append(base | (rng.uniform(size=(extra, n)) < rng.uniform(size=(extra, 1))))
        plans: list[SharingPlan] = []
        seen: set[SharingPlan] = set()
        for mask in np.concatenate(masks):
            plan = SharingPlan.of(names[mask].tolist())
            if plan not in seen:
                seen.add(plan)
                plans.append(plan)
        return plans
