"""The one rule that decides whether a plan is feasible.

A plan is feasible when every merged model keeps at least ``target`` of its original
metric on every split it was measured on: the validation split at the deciding check,
and the test split where a marginal pass was confirmed. The *constraint* is the margin
by which the worst of those ratios misses the target; feasible means ``<= 0``, the
convention Optuna's constrained samplers and optuna-dashboard use. The evaluator
computes the constraint, the search stores it on the trial, and every reader (the
samplers, ``best()``, export, drift check, re-search, report) decides from the stored
value through :func:`is_feasible`, so no two of them can disagree.

What counts as a model's ratio is the study's *acceptance* (``accept:`` in a study file):
the measured ratio (``point``, the default), or the lower end of its 95% interval
(``lower-bound``), in either case less a ``margin``. :func:`accepted_ratio` turns a
measurement into the ratio the rule judges, so a stricter acceptance goes through the
same :func:`constraint_value` and :func:`is_feasible` as the default.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["ACCEPT_RULES", "accepted_ratio", "constraint_value", "is_feasible"]

#: How a measured ratio is accepted: its point estimate, or its interval's lower end.
ACCEPT_RULES = ("point", "lower-bound")


def accepted_ratio(ratio: float, lower: float, *, rule: str = "point", margin: float = 0.0) -> float:
    """The ratio the rule judges: ``ratio`` (``point``) or ``lower`` (``lower-bound``), less ``margin``.

    Example:
        >>> accepted_ratio(0.96, 0.91), accepted_ratio(0.96, 0.91, rule="lower-bound")
        (0.96, 0.91)
        >>> round(accepted_ratio(0.96, 0.91, margin=0.02), 2)
        0.94
    """
    if rule not in ACCEPT_RULES:
        raise ValueError(f"accept rule must be one of {ACCEPT_RULES}, got {rule!r}")
    return (ratio if rule == "point" else lower) - margin


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
