"""Search strategies: each is an Optuna sampler proposing sharing plans.

Ours (:class:`GreedySampler`, :class:`SurrogateSampler`, :class:`RandomPlanSampler`)
propose the whole plan of a trial at once and keep no state between trials, so
storage, resume, distributed workers and the dashboard work as with Optuna's own
samplers, which are available by name too (:func:`make_sampler`). No torch here.

Example:
    >>> import optuna
    >>> from searchmerge.core.space import GroupInfo, SearchSpace
    >>> from searchmerge.search.strategies import make_sampler
    >>> space = SearchSpace([GroupInfo(name=f"g{i}", saved_bytes=2**i) for i in range(4)])
    >>> sampler = make_sampler("greedy", space, seed=0)
    >>> study = optuna.create_study(direction="maximize", sampler=sampler)
    >>> study.optimize(lambda trial: space.saved_bytes(space.suggest(trial)), n_trials=4)
    >>> study.best_value
    15.0
"""

from __future__ import annotations

from searchmerge.search.strategies.base import (
    SAVED_BYTES_OBJECTIVE,
    PlanRecord,
    PlanSampler,
    history,
    maximises_saved_bytes,
    trial_constraints,
    trial_feasible,
)
from searchmerge.search.strategies.greedy import GreedySampler, GreedyState
from searchmerge.search.strategies.random_plan import RandomPlanSampler
from searchmerge.search.strategies.registry import (
    STRATEGIES,
    make_sampler,
    strategy_options,
)
from searchmerge.search.strategies.surrogate import (
    FeasibilitySurrogate,
    SurrogateSampler,
)

__all__ = [
    "SAVED_BYTES_OBJECTIVE",
    "STRATEGIES",
    "FeasibilitySurrogate",
    "GreedySampler",
    "GreedyState",
    "PlanRecord",
    "PlanSampler",
    "RandomPlanSampler",
    "SurrogateSampler",
    "history",
    "make_sampler",
    "maximises_saved_bytes",
    "strategy_options",
    "trial_constraints",
    "trial_feasible",
]
