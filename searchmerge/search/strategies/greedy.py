"""Greedy search in the style of Gemel: share the largest groups first, back off by halving."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from searchmerge.core.space import SearchSpace, SharingPlan
from searchmerge.search.strategies.base import (
    ConstraintsFunc,
    PlanRecord,
    PlanSampler,
    best_feasible,
    dominated_by_failure,
    maximises_saved_bytes,
    pending_plans,
)

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial


@dataclass
class GreedyState:
    """Where the greedy search stands after replaying a study's history.

    Attributes:
        accepted: Groups found shareable together (the current plan).
        skipped: Groups that failed on their own, on top of ``accepted``, and are given up.
        blocks: Blocks still to try, the next first.
    """

    accepted: set[str] = field(default_factory=set)
    skipped: list[str] = field(default_factory=list)
    blocks: list[list[str]] = field(default_factory=list)

    @property
    def done(self) -> bool:
        """Whether every group has been accepted or skipped."""
        return not self.blocks

    def proposal(self) -> SharingPlan | None:
        """The plan to try next: the accepted groups and the next block; ``None`` when done."""
        if self.done:
            return None
        return SharingPlan.of(self.accepted.union(self.blocks[0]))

    def observe(self, feasible: bool) -> None:
        """Advance on the outcome of :meth:`proposal`."""
        block = self.blocks.pop(0)
        if feasible:
            self.accepted.update(block)
        elif len(block) == 1:
            self.skipped.append(block[0])
        else:
            half = math.ceil(len(block) / 2)
            self.blocks[0:0] = [block[:half], block[half:]]

    def adopt(self, plan: SharingPlan) -> None:
        """Take a feasible plan found elsewhere as the accepted set; its groups leave the blocks."""
        self.accepted = set(plan.shared)
        self.skipped = [name for name in self.skipped if name not in plan.shared]
        self.blocks = [kept for block in self.blocks if (kept := [n for n in block if n not in plan.shared])]


class GreedySampler(PlanSampler):
    """Share groups in order of saved bytes, a block at a time, halving a block that fails.

    The groups are ordered by saved bytes, largest first (ties by name), and cut into
    blocks of ``block_size``. Each trial evaluates the accepted groups plus the next
    block. A feasible block is accepted; a failed block is halved and its first half
    tried (then the second); a single group that fails is skipped for good. When every
    group is decided, the sampler proposes single-group extensions of the best
    feasible plan not yet tried (best by the study's objective value), then random untried
    plans that could beat it, and once none is left the best plan again (answered from
    the store, no retraining). When the study maximises bytes saved, only plans saving
    more than the best can beat it; with a ``deploy:`` objective (frames processed) a plan
    saving fewer bytes may, so any untried plan is a candidate.

    The sampler keeps no state: its state is rebuilt by replaying the study's trials in
    order of number, so a resumed study or several workers continue the same search.
    During the replay:

    * a trial whose plan equals the current proposal advances the state with its outcome;
    * when the current proposal was already evaluated (by any earlier trial), that
      outcome is used without a new trial;
    * any other trial is *foreign* (e.g. a plan enqueued to warm-start the study): it
      is ignored, except that a feasible foreign plan containing every accepted group
      and more becomes the accepted set, and its groups leave the blocks.

    With several workers, a proposal that another worker is evaluating now is assumed
    feasible and the search looks one step further, so workers do not duplicate trials.

    A search evaluates every step after an accepted one incrementally: it extends the
    accepted plan, the largest stored feasible plan it contains, so it starts from that
    plan's merged weights and only the members of the block's groups retrain
    (:func:`searchmerge.search.merge_search.incremental_start`).

    Args:
        space: The search space.
        block_size: Groups per block; default ``ceil(n_groups / 8)`` (at least 1), so a
            search that meets no failure takes about 8 trials.
        seed: Seed for the random proposals made once every group is decided.
        constraints_func: See :class:`~searchmerge.search.strategies.PlanSampler`.

    Example:
        >>> import optuna
        >>> from searchmerge.core.space import GroupInfo, SearchSpace
        >>> space = SearchSpace([GroupInfo(name=f"g{i}", saved_bytes=100 - i) for i in range(6)])
        >>> def objective(trial):
        ...     plan = space.suggest(trial)
        ...     trial.set_user_attr("feasible", "g2" not in plan.shared)
        ...     return space.saved_bytes(plan)
        >>> sampler = GreedySampler(space=space, block_size=2, seed=0)
        >>> study = optuna.create_study(direction="maximize", sampler=sampler)
        >>> study.optimize(objective, n_trials=6)
        >>> sorted(sampler.state(study).accepted), sampler.state(study).skipped
        (['g0', 'g1', 'g3', 'g4', 'g5'], ['g2'])
    """

    def __init__(
        self,
        *,
        space: SearchSpace,
        block_size: int | None = None,
        seed: int | None = None,
        constraints_func: ConstraintsFunc | None = None,
    ) -> None:
        super().__init__(space=space, seed=seed, constraints_func=constraints_func)
        if block_size is not None and (isinstance(block_size, bool) or int(block_size) != block_size or block_size < 1):
            raise ValueError(f"block_size must be a positive integer, not {block_size!r}")
        self._block_size = int(block_size) if block_size is not None else max(1, math.ceil(len(space) / 8))
        self._order = [g.name for g in sorted(space.groups, key=lambda g: (-g.saved_bytes, g.name))]

    @property
    def block_size(self) -> int:
        return self._block_size

    def initial_state(self) -> GreedyState:
        """The state before any trial."""
        size = self._block_size
        return GreedyState(blocks=[self._order[i : i + size] for i in range(0, len(self._order), size)])

    def replay(self, records: Sequence[PlanRecord]) -> tuple[GreedyState, dict[SharingPlan, bool]]:
        """The state after ``records`` (in trial-number order) and the outcome of every plan seen."""
        state = self.initial_state()
        known: dict[SharingPlan, bool] = {}
        for record in records:
            self._settle(state, known)
            if record.plan == state.proposal():
                state.observe(record.feasible)
            elif record.feasible and state.accepted < record.plan.shared:
                state.adopt(record.plan)
            known.setdefault(record.plan, record.feasible)
        self._settle(state, known)
        return state, known

    def state(self, study: Study) -> GreedyState:
        """Where the search of ``study`` stands (for reports)."""
        return self.replay(self.history(study))[0]

    def propose(self, study: Study, trial: FrozenTrial, records: Sequence[PlanRecord]) -> SharingPlan:
        state, known = self.replay(records)
        pending = pending_plans(study, self._space, trial)
        for _ in range(len(pending)):
            plan = state.proposal()
            if plan is None or plan not in pending:
                break
            state.observe(True)  # Another worker evaluates it: look past it, assuming success.
            self._settle(state, known)
        plan = state.proposal()
        if plan is not None and plan not in pending:
            return plan
        return self._after_search(trial, records, set(known) | pending, maximises_saved_bytes(study))

    def _after_search(
        self, trial: FrozenTrial, records: Sequence[PlanRecord], tried: set[SharingPlan], by_saved_bytes: bool
    ) -> SharingPlan:
        """The proposal once every group is decided; ``by_saved_bytes``: the study maximises bytes saved."""
        failed = [record.plan for record in records if not record.feasible]
        best = best_feasible(records)
        if best is not None:
            for name in self._order:
                if name in best.plan.shared:
                    continue
                extension = SharingPlan.of(best.plan.shared | {name})
                if extension not in tried and not dominated_by_failure(extension, failed):
                    return extension
        # When the objective is bytes saved, only a plan saving more than the best feasible
        # one can improve the result (with frames processed, any untried plan might); when
        # none is left untried, the best plan is proposed again: the checkpoint store
        # answers it without retraining, so the rest of the budget costs nothing.
        more_than = best.saved_bytes if best is not None and by_saved_bytes else None
        plan = self.random_untried(self.rng(trial), tried, failed, more_than=more_than)
        if plan is not None:
            return plan
        return best.plan if best is not None else SharingPlan.of(())

    @staticmethod
    def _settle(state: GreedyState, known: dict[SharingPlan, bool]) -> None:
        while (plan := state.proposal()) is not None and plan in known:
            state.observe(known[plan])
