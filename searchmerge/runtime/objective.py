"""The memory-aware search's objective: frames the edge box processes in time, then bytes saved.

With a study file's ``deploy:`` section, a plan is worth what it does on that edge box:
the simulated share of frames processed within the latency target, ties broken by the
bytes it saves. The accuracy constraint is unchanged (a plan is feasible only when every
model keeps its target). Plans whose merged groups do not fit together are swapped group
by group (``swap: unit``) or tensor by tensor (``swap: model``), as the settings say.

The models' compute is measured once per search (on the device present: it does not
depend on the plan); each plan then only needs its tensor layout, which merging the
originals by the plan gives in milliseconds, and one simulation (well under a second).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from searchmerge.analysis import ShareableGroup
from searchmerge.config.deploy import DeploySettings
from searchmerge.config.workload import Workload
from searchmerge.core.space import SharingPlan
from searchmerge.runtime.measure import layout_of, measure_profile
from searchmerge.runtime.profile import PlanProfile, Profile, plan_fingerprint
from searchmerge.runtime.simulator import SimulationResult, simulate
from searchmerge.training.merge import merge_models

__all__ = ["DeployObjective", "objective_value"]


def objective_value(result: SimulationResult, saved_bytes: int, max_saved_bytes: int) -> float:
    """Processed fraction, with bytes saved as a tie-break too small to outweigh one frame.

    Any two processed fractions differ by at least ``1 / frames``; the tie-break adds less
    than ``1 / (frames + 1)``, so the order is: more frames processed, then more bytes saved.
    """
    saved = saved_bytes / max_saved_bytes if max_saved_bytes else 0.0
    return result.processed_fraction + saved / (result.frames + 1)


class DeployObjective:
    """Scores plans of one workload by simulating them under the study's deploy settings.

    Args:
        settings: The edge box (budget, fps, SLA, seconds, policy, swap mode).
        workload: The workload.
        models: The original models by name (their compute is measured once, lazily).
        groups: The workload's shareable groups.
        device: Where to measure (default: CUDA when present).
        progress: Called with one line per measurement.
    """

    def __init__(
        self,
        settings: DeploySettings,
        workload: Workload,
        models: Mapping[str, Any],
        groups: Sequence[ShareableGroup],
        *,
        device: str | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.workload = workload
        self.models = models
        self.groups = tuple(groups)
        self.device = device
        self.progress = progress
        self._base: Profile | None = None

    @property
    def base(self) -> Profile:
        """The models' compute, measured at the first call."""
        if self._base is None:
            self._base = measure_profile(
                self.workload, {}, models=self.models, groups=self.groups, device=self.device, progress=self.progress
            )
        return self._base

    def simulate(self, plan: SharingPlan) -> SimulationResult:
        """What ``plan`` does on the edge box."""
        merged = self.models if not plan.shared else merge_models(self.models, self.groups, plan, init="first")
        groups = tuple(sorted(plan.shared))
        profiled = PlanProfile(
            name=plan.plan_hash,
            groups=groups,
            fingerprint=plan_fingerprint(self.base.workload_fingerprint, groups),
            layout=layout_of(merged),
        )
        profile = dataclasses.replace(self.base, plans=(profiled,))
        return simulate(profile, profiled, self.settings)

    def score(self, plan: SharingPlan, saved_bytes: int, max_saved_bytes: int) -> tuple[float, dict[str, Any]]:
        """The objective value of ``plan`` and what to record on its trial."""
        result = self.simulate(plan)
        attrs = {
            "processed_fraction": round(result.processed_fraction, 6),
            "swaps": int(result.counters["swaps"]),
            "loading_share": round(result.loading_share, 6),
            "swap_units": len(result.units),
        }
        return objective_value(result, saved_bytes, max_saved_bytes), attrs
