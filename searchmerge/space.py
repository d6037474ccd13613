"""Sharing plans: which shareable groups a candidate merge shares.

A plan is frozen and hashable; its hash keys the checkpoint store and lets a
re-proposed plan be answered from the cache. Plain Python, no torch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from searchmerge.errors import SearchmergeError


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
