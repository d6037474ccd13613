"""The random baseline: every group shared with probability one half."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from searchmerge.core.space import SharingPlan
from searchmerge.search.strategies.base import PlanRecord, PlanSampler

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial


class RandomPlanSampler(PlanSampler):
    """Shares each group with probability 1/2, independently of the history.

    The baseline the other strategies are measured against. Unlike Optuna's
    ``RandomSampler`` it draws the whole mask at once, seeded by the sampler's seed and
    the trial number, and stores constraint values like the other searchmerge samplers.
    Plans may repeat; the checkpoint store answers a repeated plan from its cache.

    Args:
        space: The search space.
        seed: Seed of the draws.
        constraints_func: See :class:`~searchmerge.search.strategies.PlanSampler`.

    Example:
        >>> import optuna
        >>> from searchmerge.core.space import GroupInfo, SearchSpace
        >>> space = SearchSpace([GroupInfo(name="a", saved_bytes=1), GroupInfo(name="b", saved_bytes=2)])
        >>> study = optuna.create_study(direction="maximize", sampler=RandomPlanSampler(space=space, seed=0))
        >>> study.optimize(lambda trial: space.saved_bytes(space.suggest(trial)), n_trials=3)
    """

    def propose(self, study: Study, trial: FrozenTrial, records: Sequence[PlanRecord]) -> SharingPlan:
        mask = self.rng(trial).uniform(size=len(self._space)) < 0.5
        return SharingPlan.of(name for name, on in zip(self._space.names, mask) if on)
