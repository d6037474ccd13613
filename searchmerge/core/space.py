"""Sharing plans and the search space: which shareable groups a candidate merge shares.

A plan is frozen and hashable; its hash keys the checkpoint store and lets a
re-proposed plan be answered from the cache. The search space turns the shareable
groups into Optuna parameters, one boolean per group. Plain Python, no torch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from optuna.distributions import BaseDistribution, CategoricalDistribution

from searchmerge.core.errors import SearchmergeError

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class SharingPlan:
    """The names of the groups to share; every other group stays private."""

    shared: frozenset[str]

    @classmethod
    def of(cls, names: Iterable[str]) -> SharingPlan:
        return cls(frozenset(names))

    @classmethod
    def parse(cls, text: str, group_names: Sequence[str]) -> SharingPlan:
        """``none``, ``all`` or a comma-separated list of group names, checked against the workload."""
        text = text.strip()
        if text == "none":
            return cls(frozenset())
        if text == "all":
            return cls(frozenset(group_names))
        names = [part.strip() for part in text.split(",") if part.strip()]
        if not names:
            raise SearchmergeError("a plan is 'none', 'all' or a comma-separated list of group names")
        return cls.of(names).checked(group_names)

    def checked(self, group_names: Sequence[str]) -> SharingPlan:
        """This plan, after making sure every group it names exists."""
        unknown = sorted(self.shared - set(group_names))
        if unknown:
            sample = ", ".join(list(group_names)[:6])
            raise SearchmergeError(
                f"the plan names group(s) that do not exist: {', '.join(unknown)} (groups are named like {sample})"
            )
        return self

    @property
    def plan_hash(self) -> str:
        """A stable short hash of the plan (same groups, same hash, in any process)."""
        payload = json.dumps(sorted(self.shared)).encode()
        return hashlib.sha256(payload).hexdigest()[:20]

    def __len__(self) -> int:
        return len(self.shared)


@dataclass(frozen=True)
class GroupInfo:
    """What the search needs to know about one shareable group.

    A plain record, free of torch, built by the caller from the analysis (see
    :meth:`GroupInfo.of`).

    Attributes:
        name: The group's stable, readable name; it is also the Optuna parameter name.
        saved_bytes: Memory saved when the group is shared.
        models: Names of the models whose layers are in the group.

    Example:
        >>> GroupInfo(name="layer4.1.conv2", saved_bytes=2_359_296, models=("det", "cls"))
        GroupInfo(name='layer4.1.conv2', saved_bytes=2359296, models=('det', 'cls'))
    """

    name: str
    saved_bytes: int
    models: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SearchmergeError(f"a group name must be a non-empty string, not {self.name!r}")
        if isinstance(self.saved_bytes, bool) or int(self.saved_bytes) != self.saved_bytes or self.saved_bytes < 0:
            raise SearchmergeError(
                f"group {self.name!r}: saved_bytes must be a non-negative integer, not {self.saved_bytes!r}"
            )
        object.__setattr__(self, "saved_bytes", int(self.saved_bytes))
        object.__setattr__(self, "models", tuple(self.models))

    @classmethod
    def of(cls, group: Any) -> GroupInfo:
        """The record of any object with ``name``, ``saved_bytes`` and ``models`` attributes.

        Works on :class:`searchmerge.analysis.ShareableGroup` without importing it.
        """
        return cls(name=group.name, saved_bytes=group.saved_bytes, models=tuple(getattr(group, "models", ())))


class SearchSpace:
    """The shareable groups of a workload, seen as the parameters of an Optuna study.

    Each group is one boolean parameter named after the group (``True`` = share it),
    with the distribution ``CategoricalDistribution((False, True))``. Parameters are
    suggested in the order the groups are given, so the same workload always gives
    the same parameters, and trials stay readable in the dashboard.

    Args:
        groups: The groups, in the order their parameters are suggested (the analysis
            gives them largest saving first). Names must be unique.

    Example:
        >>> import optuna
        >>> space = SearchSpace([GroupInfo(name="a", saved_bytes=300), GroupInfo(name="b", saved_bytes=100)])
        >>> plan = space.plan_from_params({"a": True})
        >>> sorted(plan.shared), space.saved_bytes(plan), space.max_saved_bytes
        (['a'], 300, 400)
        >>> space.params_from_plan(plan)
        {'a': True, 'b': False}
        >>> study = optuna.create_study(direction="maximize")
        >>> study.optimize(lambda trial: space.saved_bytes(space.suggest(trial)), n_trials=2)
    """

    def __init__(self, groups: Sequence[GroupInfo]) -> None:
        groups = tuple(groups)
        for group in groups:
            if not isinstance(group, GroupInfo):
                raise SearchmergeError(
                    f"a search space is built from GroupInfo records, not {type(group).__name__} "
                    "(use SearchSpace.from_groups for analysis groups)"
                )
        seen: set[str] = set()
        duplicates = sorted({group.name for group in groups if group.name in seen or seen.add(group.name)})
        if duplicates:
            raise SearchmergeError(f"group names must be unique; repeated: {', '.join(duplicates)}")
        self._groups = groups
        self._by_name = {group.name: group for group in groups}

    @classmethod
    def from_groups(cls, groups: Iterable[Any]) -> SearchSpace:
        """A space from objects with ``name``, ``saved_bytes`` and ``models`` (e.g. analysis groups)."""
        return cls([group if isinstance(group, GroupInfo) else GroupInfo.of(group) for group in groups])

    @property
    def groups(self) -> tuple[GroupInfo, ...]:
        """The groups, in parameter order."""
        return self._groups

    @property
    def names(self) -> tuple[str, ...]:
        """The group (and parameter) names, in parameter order."""
        return tuple(group.name for group in self._groups)

    @property
    def max_saved_bytes(self) -> int:
        """Bytes saved by sharing every group (the max-sharing bound)."""
        return sum(group.saved_bytes for group in self._groups)

    @property
    def fingerprint(self) -> str:
        """SHA-256 over the group names and their saved bytes, independent of their order.

        A study records it so that resuming it against a different workload can be refused.
        """
        payload = json.dumps(sorted([group.name, group.saved_bytes] for group in self._groups)).encode()
        return hashlib.sha256(payload).hexdigest()

    def group(self, name: str) -> GroupInfo:
        """The group named ``name``."""
        try:
            return self._by_name[name]
        except KeyError:
            raise SearchmergeError(f"no group is named {name!r}") from None

    def distributions(self) -> dict[str, BaseDistribution]:
        """One ``CategoricalDistribution((False, True))`` per group, in parameter order."""
        return {name: CategoricalDistribution(_CHOICES) for name in self.names}

    def suggest(self, trial: optuna.trial.BaseTrial) -> SharingPlan:
        """Ask ``trial`` for every group's parameter, in a fixed order, and return the plan."""
        params = {name: trial.suggest_categorical(name, _CHOICES) for name in self.names}
        return self.plan_from_params(params)

    def plan_from_params(self, params: Mapping[str, Any]) -> SharingPlan:
        """The plan that a trial's parameters describe.

        A group whose parameter is missing is not shared; parameters that name no group
        (a study may carry others) are ignored.
        """
        return SharingPlan.of(name for name in self.names if bool(params.get(name, False)))

    def params_from_plan(self, plan: SharingPlan) -> dict[str, bool]:
        """Every group's parameter for ``plan`` (e.g. to enqueue it as a trial)."""
        plan.checked(self.names)
        return {name: name in plan.shared for name in self.names}

    def saved_bytes(self, plan: SharingPlan) -> int:
        """Bytes that ``plan`` saves."""
        plan.checked(self.names)
        return sum(self._by_name[name].saved_bytes for name in plan.shared)

    def __len__(self) -> int:
        return len(self._groups)

    def __iter__(self) -> Iterator[GroupInfo]:
        return iter(self._groups)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __repr__(self) -> str:
        return f"SearchSpace({len(self)} groups, max_saved_bytes={self.max_saved_bytes})"


_CHOICES = (False, True)
