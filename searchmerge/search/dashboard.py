"""What optuna-dashboard shows at the top of a trial's page: its verdict, in words and numbers.

The dashboard lists every finished trial as "Complete", feasible or not, sorts user
attributes alphabetically in a small scrolling box, and gives its "Best Trial" badge to the
largest objective value whatever the constraint (it asks the storage's ``get_best_trial``,
which ignores constraints). The trial's *note*, which the dashboard renders as Markdown
above everything else, is the one place a person sees first, so each trial's note says
whether its plan is feasible, how the constraint follows from the worst ratio, and each
model's ratio with its sample count and 95% interval.

Example:
    >>> print(trial_note(evaluation))  # doctest: +SKIP
    **infeasible**: constraint +0.1133 = target 0.95 - worst ratio 0.8367 of dock-loops (feasible when <= 0)
    ...
"""

from __future__ import annotations

from typing import Any

__all__ = ["CURVE_NOTE", "constraint_text", "save_trial_note", "trial_note"]

#: What a trial's intermediate values are (the dashboard labels their plot "Objective Value").
CURVE_NOTE = ("Intermediate values: the worst ratio at each check of the cheap retraining, which stops at the"
              " first check every model passes (the last value, at or above the target for a feasible plan) or"
              " when a model cannot reach its target; a plan answered from the store has none.")


def constraint_text(evaluation: Any) -> str:
    """How the constraint follows from the worst ratio: ``constraint +0.1220 = target 0.95 - worst ratio 0.8280 of M``."""
    worst = evaluation.worst_model
    judged = "worst ratio" if evaluation.accept == "point" else "worst lower end of a ratio's 95% CI"
    if evaluation.accept_margin:
        judged += f" minus margin {evaluation.accept_margin:g}"
    return (f"constraint {evaluation.constraint:+.4f} = target {evaluation.target:g} - {judged}"
            f" {min(evaluation.accepted(worst)):.4f} of {worst.name} (feasible when <= 0)")


def trial_note(evaluation: Any) -> str:
    """The Markdown note of one evaluated plan (an :class:`~searchmerge.training.evaluate.Evaluation`)."""
    verdict = "feasible" if evaluation.feasible else "infeasible"
    lines = [
        f"**{verdict}**: {constraint_text(evaluation)}",
        "",
        f"bytes saved: {evaluation.saved_bytes:,} B ({evaluation.saved_bytes / 1e6:.3f} MB)",
        "",
        "| model | ratio | 95% CI | n | meets target |",
        "|---|---|---|---|---|",
    ]
    for m in evaluation.models:
        interval = m.ratio_interval
        shown = "-" if interval is None else f"[{interval.low:.3f}, {interval.high:.3f}] {interval.method}"
        lines.append(f"| {m.name} | {m.ratio:.3f} | {shown} | {m.samples} | {'yes' if m.meets_target else 'NO'} |")
    lines += ["", CURVE_NOTE]
    return "\n".join(lines)


def save_trial_note(trial: Any, evaluation: Any) -> None:
    """Write :func:`trial_note` as a running Optuna trial's dashboard note."""
    from optuna_dashboard import save_note

    save_note(trial, trial_note(evaluation))
