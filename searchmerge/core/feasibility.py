"""The one rule that decides whether a plan is feasible.

A plan is feasible when every merged model keeps at least ``target`` of its original
metric on every split it was measured on: the validation split at the deciding check,
and the test split where a marginal pass was confirmed. The *constraint* is the margin
by which the worst of those ratios misses the target; feasible means ``<= 0``, the
convention Optuna's constrained samplers and optuna-dashboard use. The evaluator
computes the constraint, the search stores it on the trial, and every reader (the
samplers, ``best()``, export, drift check, re-search, report) decides from the stored
value through :func:`is_feasible`, so no two of them can disagree.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["constraint_value", "is_feasible"]


def constraint_value(target: float, ratios: Iterable[float]) -> float:
    """``target`` minus the worst measured ratio (feasible when ``<= 0``).

    Raises:
        ValueError: If no ratio was measured.
    """
    measured = list(ratios)
    if not measured:
        raise ValueError("a constraint needs at least one measured ratio")
    return float(target) - min(measured)


def is_feasible(constraint: float) -> bool:
    """Whether a constraint value means feasible: ``<= 0``."""
    return constraint <= 0.0
