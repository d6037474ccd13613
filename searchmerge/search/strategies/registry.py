"""Strategies by name: ``make_sampler("greedy", space, seed=0)``."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

import optuna

from searchmerge.core.errors import SearchmergeError
from searchmerge.core.space import SearchSpace
from searchmerge.search.strategies.base import ConstraintsFunc
from searchmerge.search.strategies.greedy import GreedySampler
from searchmerge.search.strategies.random_plan import RandomPlanSampler
from searchmerge.search.strategies.surrogate import SurrogateSampler


def _ours(cls: type) -> Callable[..., optuna.samplers.BaseSampler]:
    def build(space: SearchSpace, seed: int | None, constraints_func: ConstraintsFunc | None, options: dict) -> Any:
        return cls(space=space, seed=seed, constraints_func=constraints_func, **options)

    build.target = cls  # type: ignore[attr-defined]
    return build


def _optunas(cls: type, defaults: dict[str, Any] | None = None) -> Callable[..., optuna.samplers.BaseSampler]:
    def build(space: SearchSpace, seed: int | None, constraints_func: ConstraintsFunc | None, options: dict) -> Any:
        kwargs = {**(defaults or {}), **options, "seed": seed}
        if constraints_func is not None:
            kwargs["constraints_func"] = constraints_func
        with warnings.catch_warnings():
            # Optuna 5 prefers Trial.set_constraint, but optuna-dashboard shows only the
            # constraints a sampler's constraints_func stores: keep it, deliberately.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return cls(**kwargs)

    build.target = cls  # type: ignore[attr-defined]
    return build


_BUILDERS: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {
    "greedy": _ours(GreedySampler),
    "surrogate": _ours(SurrogateSampler),
    "random": _ours(RandomPlanSampler),
    # Every trial retrains models, so a search runs tens of trials: Optuna's 10 random
    # start-up trials would be most of the budget. Three let the model guide from trial 4.
    "tpe": _optunas(optuna.samplers.TPESampler, {"n_startup_trials": 3}),
    "gp": _optunas(optuna.samplers.GPSampler, {"n_startup_trials": 3}),
    # Each trial retrains models, so studies run tens of trials, not thousands: a smaller
    # population than Optuna's 50 lets the evolution start within the budget.
    "nsga2": _optunas(optuna.samplers.NSGAIISampler, {"population_size": 16}),
}

STRATEGIES: tuple[str, ...] = tuple(_BUILDERS)
"""The names :func:`make_sampler` accepts."""

_COMMON = {"self", "space", "seed", "constraints_func"}


def strategy_options(name: str) -> tuple[str, ...]:
    """The options (keyword arguments) that strategy ``name`` accepts."""
    target = _builder(name).target  # type: ignore[attr-defined]
    parameters = inspect.signature(target).parameters
    return tuple(p for p in parameters if p not in _COMMON)


def make_sampler(
    name: str,
    space: SearchSpace,
    *,
    seed: int | None = None,
    constraints_func: ConstraintsFunc | None = None,
    **options: Any,
) -> optuna.samplers.BaseSampler:
    """The Optuna sampler of strategy ``name`` for ``space``.

    Args:
        name: One of :data:`STRATEGIES`: ``"greedy"``, ``"surrogate"``, ``"random"`` (our
            samplers) or ``"tpe"``, ``"gp"``, ``"nsga2"`` (Optuna's ``TPESampler``,
            ``GPSampler`` and ``NSGAIISampler``; ``tpe`` and ``gp`` default to
            ``n_startup_trials=3``, ``nsga2`` to ``population_size=16``).
        space: The search space (our samplers propose whole plans in it; Optuna's learn it
            from the trials' parameters).
        seed: Seed of the sampler.
        constraints_func: Passed to the sampler, which stores its values on every finished
            trial (feasible when all ``<= 0``). Left out, the objective may call
            ``trial.set_constraint`` instead (Optuna >= 5, which deprecates ``constraints_func``).
        **options: The strategy's own options (see :func:`strategy_options`).

    Raises:
        SearchmergeError: Unknown strategy, or an option it does not take.

    Example:
        >>> from searchmerge.core.space import GroupInfo, SearchSpace
        >>> space = SearchSpace([GroupInfo(name="a", saved_bytes=10)])
        >>> print(make_sampler("greedy", space, seed=0, block_size=1))
        GreedySampler
        >>> make_sampler("annealing", space)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        searchmerge.core.errors.SearchmergeError: unknown strategy 'annealing'; known strategies: greedy, ...
    """
    builder = _builder(name)
    accepted = strategy_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise SearchmergeError(
            f"strategy {name!r} takes no option {', '.join(map(repr, unknown))}; "
            f"its options: {', '.join(accepted) or 'none'}"
        )
    try:
        return builder(space, seed, constraints_func, options)
    except (TypeError, ValueError) as error:
        raise SearchmergeError(f"strategy {name!r}: {error}") from error


def _builder(name: str) -> Callable[..., optuna.samplers.BaseSampler]:
    try:
        return _BUILDERS[name]
    except KeyError:
        raise SearchmergeError(f"unknown strategy {name!r}; known strategies: {', '.join(STRATEGIES)}") from None
