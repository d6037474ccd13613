"""Confirming a plan before it is deployed: full retraining of the plan from its originals.

A search judges plans cheaply: on a subsample, stopping early, and, for a plan that extends a
stored feasible plan, incrementally from that plan's weights (see ``docs/strategies.md``,
"Incremental evaluation"). Such a verdict is about the weights reached along the search's
path. Before a plan is deployed, :func:`confirm` judges the plan itself: every model merged
from its originals (a re-search's: the deployed weights it started from) and retrained on all
the training data, with early stopping on validation (the first check where every model meets
its target at once), never given up as hopeless within the budget. Models the plan shares
nothing with are not retrained, as in any evaluation.

The verdict is recorded with the trial, as user attributes the dashboard shows
(``confirmed``, ``confirmation_checkpoint``, ``confirmation_worst_ratio``, ...), and the
confirmation's weights are stored under a checkpoint key of their own (the full-retraining
settings are part of it), so confirming again is answered from the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from searchmerge.core.errors import SearchmergeError
from searchmerge.core.progress import Progress
from searchmerge.search.merge_search import CONFIRMED_ATTR, MergeSearch, TrialSummary
from searchmerge.training.evaluate import (
    Evaluation,
    Evaluator,
    full_retraining,
    merged_key,
)
from searchmerge.training.merge import merged_state

__all__ = ["CONFIRMED_ATTR", "Confirmation", "confirm", "confirmation_state"]

@dataclass(frozen=True)
class Confirmation:
    """The verdict of full retraining on one trial's plan.

    Attributes:
        study_name: The search the trial belongs to.
        trial: The trial's number.
        evaluation: Full retraining's evaluation of the plan.
        checkpoint: Where its merged weights are stored.
        from_store: Whether it was answered from the checkpoint store (confirmed before).
    """

    study_name: str
    trial: int
    evaluation: Evaluation
    checkpoint: str
    from_store: bool = False

    @property
    def confirmed(self) -> bool:
        """Whether the plan keeps every model at its target when retrained in full from its originals."""
        return self.evaluation.feasible

    def attributes(self) -> dict[str, Any]:
        """What is recorded with the trial (its user attributes)."""
        return {
            CONFIRMED_ATTR: self.confirmed,
            "confirmation_checkpoint": self.checkpoint,
            "confirmation_worst_ratio": round(self.evaluation.worst_ratio, 5),
            "confirmation_stop_reason": self.evaluation.stop_reason,
            "confirmation_steps": self.evaluation.cost.steps,
            "confirmation_seconds": round(self.evaluation.cost.seconds, 3),
        }

    def describe(self) -> str:
        """One line: the verdict, the worst ratio and what it cost."""
        verdict = "CONFIRMED" if self.confirmed else "NOT CONFIRMED"
        worst = min(self.evaluation.models, key=lambda m: min(m.ratios))
        cost = "from the store" if self.from_store else f"{self.evaluation.cost.seconds:.1f} s"
        return (f"trial {self.trial} of {self.study_name!r}: {verdict} by full retraining from the originals"
                f" (worst ratio {min(worst.ratios):.3f} for {worst.name}, target {self.evaluation.target},"
                f" {self.evaluation.stop_reason}, {cost}; weights in checkpoint {self.checkpoint})")


def confirm(search: MergeSearch, trial: TrialSummary | None = None, *, progress: Progress | None = None) -> Confirmation:
    """Retrain ``trial``'s plan (default: the best feasible one) in full from its originals and record the verdict.

    The search's own evaluator settings, as full retraining (all data, early stopping on
    validation, see :func:`~searchmerge.training.evaluate.full_retraining`), its target, its
    seed and its data (a drift scenario's, for a re-search on it).

    Raises:
        SearchmergeError: If no trial is named and the search has no feasible plan.

    Example:
        >>> from searchmerge.config.study import open_study_file
        >>> from searchmerge.search.selection import select_search
        >>> search = select_search(open_study_file("studies/digits-edge.yaml"))  # doctest: +SKIP
        >>> confirm(search).confirmed  # doctest: +SKIP
        True
    """
    chosen = trial if trial is not None else search.best()
    if chosen is None:
        raise SearchmergeError(
            f"study {search.study_name!r} has no feasible plan to confirm ({len(search.history())} finished trials);"
            " run more trials or name one with --trial K"
        )
    settings = full_retraining(search.evaluator_settings)
    warm = search.warm_start
    frozen = warm.frozen_for(chosen.plan) if warm is not None else frozenset()
    key = merged_key(search.prepared, chosen.plan, target=search.evaluator.target, settings=settings, seed=search.seed,
                     start_checkpoint=warm.parent_checkpoint if warm is not None else None, frozen=frozen)
    store = search.study_file.store
    record = store.find(key)
    if record is not None and record.metadata["evaluation"]["stop_reason"] != "pruned":
        evaluation = Evaluation.from_dict(chosen.plan, record.metadata["evaluation"])
        done = Confirmation(search.study_name, chosen.number, evaluation, record.id, from_store=True)
    else:
        if progress is not None:
            progress(f"confirming trial {chosen.number} of {search.study_name!r}: {len(chosen.plan)} shared group(s),"
                     " full retraining from the originals")
        evaluator = Evaluator(search.prepared, settings, search.evaluator.target, analysis=search.evaluator.analysis,
                              progress=progress)
        evaluation, merged = evaluator.evaluate(chosen.plan, seed=search.seed,
                                                start_from=warm.models if warm is not None else None, frozen=frozen)
        metadata = {"evaluation": evaluation.to_dict(),
                    "confirmation_of": {"study": search.study_name, "trial": chosen.number, "seed": search.seed}}
        checkpoint = store.put(key, merged_state(merged), metadata)
        done = Confirmation(search.study_name, chosen.number, evaluation, checkpoint)
    search.annotate_trial(chosen.number, done.attributes())
    return done


def confirmation_state(search: MergeSearch, number: int) -> bool | None:
    """Whether trial ``number``'s plan was confirmed (True), failed confirmation (False), or was never confirmed (None)."""
    value = search.trial_attributes(number).get(CONFIRMED_ATTR)
    return None if value is None else bool(value)
