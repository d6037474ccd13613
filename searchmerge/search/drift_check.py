"""The drift check: does a deployed merge still hold on a drift scenario's data?

It scores the deployed plan's stored merged weights on the drifted data, without
retraining, and tells which models now miss their target and which shared groups
they take part in (the groups a re-search should back off from first). Baselines
stay the originals' accuracy on the original data (see :mod:`searchmerge.search.scenarios`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from searchmerge.config.study import StudyFile
from searchmerge.core.feasibility import constraint_value, is_feasible
from searchmerge.core.progress import Progress
from searchmerge.core.space import SharingPlan
from searchmerge.core.uncertainty import Interval, wilson
from searchmerge.search.merge_search import deployed_plan
from searchmerge.search.scenarios import drifted_workload, get_scenario
from searchmerge.search.selection import select_search
from searchmerge.training.evaluate import ratio_interval
from searchmerge.training.train import default_device, score

__all__ = ["DriftCheck", "ModelDrift", "drift_check"]


@dataclass(frozen=True)
class ModelDrift:
    """One deployed merged model, before and after the drift."""

    name: str
    baseline: float
    accuracy_before: float
    accuracy_after: float
    target: float
    groups: tuple[str, ...]
    #: The validation samples scored before and after the drift (the baseline's are ``samples_before``).
    samples_before: int = 0
    samples_after: int = 0
    #: Whether the metric is a proportion of samples, so that it has a Wilson interval.
    proportion: bool = True

    @property
    def baseline_interval(self) -> Interval | None:
        return wilson(self.baseline, self.samples_before) if self.proportion and self.samples_before else None

    @property
    def ratio_before_interval(self) -> Interval | None:
        return ratio_interval(self.ratio_before, self.baseline, self.samples_before, "wilson" if self.proportion else "")

    @property
    def ratio_after_interval(self) -> Interval | None:
        return ratio_interval(self.ratio_after, self.baseline, self.samples_after, "wilson" if self.proportion else "")

    @property
    def ratio_before(self) -> float:
        return self.accuracy_before / self.baseline

    @property
    def ratio_after(self) -> float:
        return self.accuracy_after / self.baseline

    @property
    def misses(self) -> bool:
        """Whether the model misses its target on the drifted data (the one feasibility rule)."""
        return not is_feasible(constraint_value(self.target, [self.ratio_after]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "baseline": self.baseline, "accuracy_before": self.accuracy_before,
            "accuracy_after": self.accuracy_after, "ratio_before": self.ratio_before, "ratio_after": self.ratio_after,
            "target": self.target, "misses": self.misses, "groups": list(self.groups),
            "samples_before": self.samples_before, "samples_after": self.samples_after,
            **{name: None if interval is None else interval.to_dict() for name, interval in (
                ("baseline_interval", self.baseline_interval), ("ratio_before_interval", self.ratio_before_interval),
                ("ratio_after_interval", self.ratio_after_interval))},
        }


@dataclass(frozen=True)
class DriftCheck:
    """The deployed plan of a study scored on a drift scenario's data."""

    study_name: str
    scenario: str
    trial: int
    plan: SharingPlan
    checkpoint: str
    saved_bytes: int
    models: tuple[ModelDrift, ...]

    @property
    def missing(self) -> tuple[ModelDrift, ...]:
        """The models that miss their target after the drift."""
        return tuple(m for m in self.models if m.misses)

    @property
    def implicated_groups(self) -> tuple[str, ...]:
        """Shared groups that at least one missing model takes part in."""
        return tuple(sorted({g for m in self.missing for g in m.groups}))

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.study_name, "scenario": self.scenario, "trial": self.trial,
            "plan": sorted(self.plan.shared), "checkpoint": self.checkpoint, "saved_bytes": self.saved_bytes,
            "models": [m.to_dict() for m in self.models], "missing": [m.name for m in self.missing],
            "implicated_groups": list(self.implicated_groups),
        }


def drift_check(
    study: StudyFile, scenario: str, *, study_name: str | None = None, progress: Progress | None = None
) -> DriftCheck:
    """Score the deployed plan of a search on a drift scenario's data, without retraining.

    Args:
        study: The study file whose search deployed a plan.
        scenario: A scenario name (see :func:`scenarios`).
        study_name: The search (default: the one with the best feasible plan, see
            :func:`~searchmerge.search.selection.select_search`).
        progress: Called with one line per step.

    Returns:
        Per model: accuracy on the data the plan was searched on (before) and on the
        drifted data (after), the target, whether it misses now, and its shared groups.
    """
    say = progress or (lambda _line: None)
    get_scenario(study, scenario)  # an unknown scenario fails before any work
    search = select_search(study, study_name, progress=say)
    deployed = deployed_plan(search)
    say(f"deployed plan: trial {deployed.number} of {search.study_name!r}, {len(deployed.plan)} shared group(s)")
    drifted = drifted_workload(study, search.prepared, scenario)
    merged = search.merged_models(deployed)
    device = default_device()
    target = study.settings.target
    outcomes = []
    workers = study.settings.workers
    for name, model in merged.items():
        model.to(device)
        kind = search.prepared.kinds[name]
        before = score(model, search.prepared.data[name].val, kind, device=device, workers=workers)
        after = score(model, drifted.data[name].val, kind, device=device, workers=workers)
        model.to("cpu")
        groups = tuple(g for g in sorted(deployed.plan.shared) if name in search.space.group(g).models)
        outcomes.append(ModelDrift(name, search.prepared.baselines[name].val_accuracy, before, after, target, groups,
                                   samples_before=len(search.prepared.data[name].val),
                                   samples_after=len(drifted.data[name].val), proportion=kind.proportion))
        say(f"{name}: accuracy {before:.3f} before, {after:.3f} on {scenario!r}")
    return DriftCheck(
        search.study_name, scenario, deployed.number, deployed.plan, deployed.checkpoint,  # type: ignore[arg-type]
        deployed.saved_bytes, tuple(outcomes),
    )
