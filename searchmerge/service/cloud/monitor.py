"""The drift check on the edges' samples: does the current version still meet its targets?

Each model's newest samples (received since the current version was published) are run
through that version's models and compared with their labels. A handful of frames
says little, so a model *misses* only when the samples show it with confidence: the
upper end of the Wilson interval of its accuracy (90% two-sided: 95% one-sided), over
its original's validation accuracy, fails the project's one feasibility rule against
the target. A model with fewer than ``min_samples`` samples is not judged yet.

The drift scenario to re-search on is the one the missing models' samples were seen
in (their provenance). A window that holds any drifted frames names the drift scenario
most of those were seen in, even while undrifted frames are still the majority of it (the
first minutes after a drift): only a window of undrifted frames alone names none.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from searchmerge.core.feasibility import constraint_value, is_feasible
from searchmerge.core.uncertainty import Interval, wilson
from searchmerge.service.cloud.samples import LabelledSample

__all__ = ["ModelCheck", "SampleCheck", "check_samples"]


@dataclass(frozen=True)
class ModelCheck:
    """One model of the current version, judged on its recent samples."""

    name: str
    samples: int
    correct: int
    baseline: float
    target: float
    upper: float
    scenario: str | None
    judged: bool
    #: How many of the samples each drift scenario gave (``None``: undrifted footage).
    seen: tuple[tuple[str | None, int], ...] = ()
    #: The two-sided confidence of the interval whose upper end is ``upper``.
    confidence: float = 0.9

    @property
    def accuracy(self) -> float:
        return self.correct / self.samples if self.samples else 0.0

    @property
    def misses(self) -> bool:
        """Judged, and even the optimistic end of its accuracy misses the target (the one rule)."""
        return self.judged and not is_feasible(constraint_value(self.target, [self.upper / self.baseline]))

    @property
    def ratio_interval(self) -> Interval:
        """The 95% Wilson interval of the accuracy on these samples, over the baseline (what reports show)."""
        return wilson(self.accuracy, self.samples).scaled(self.baseline)

    def describe(self) -> str:
        """One phrase in which every number says what it is, for logs."""
        # Only a provenance sample (the digits generator) names its scenario: camera frames are just frames.
        named = any(scenario is not None for scenario, _ in self.seen)
        seen = ", ".join(f"{count} {'undrifted' if scenario is None else scenario}" for scenario, count in self.seen
                         ) if named else ""
        ratio = self.accuracy / self.baseline if self.baseline else 0.0
        upper = self.upper / self.baseline if self.baseline else 0.0
        interval = self.ratio_interval
        return (f"{self.name}: accuracy {self.accuracy:.2f} on {self.samples} samples"
                f"{f' ({seen})' if seen else ''}, ratio {ratio:.3f} to its baseline accuracy {self.baseline:.2f}"
                f" (95% CI [{interval.low:.3f}, {interval.high:.3f}]),"
                f" at most {upper:.3f} at {self.confidence:.0%} confidence, target ratio {self.target:g}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "samples": self.samples, "accuracy": self.accuracy, "upper": self.upper,
                "baseline": self.baseline, "target": self.target, "scenario": self.scenario,
                "judged": self.judged, "misses": self.misses, "ratio_interval": self.ratio_interval.to_dict(),
                "seen": {str(scenario) if scenario is not None else "undrifted": n for scenario, n in self.seen}}


@dataclass(frozen=True)
class SampleCheck:
    """The current version on the recent samples of every model."""

    version: int
    models: tuple[ModelCheck, ...]

    @property
    def missing(self) -> tuple[ModelCheck, ...]:
        return tuple(m for m in self.models if m.misses)

    @property
    def scenario(self) -> str | None:
        """The drift scenario most of the missing models' samples were seen in, if any."""
        seen = Counter(m.scenario for m in self.missing if m.scenario is not None)
        return seen.most_common(1)[0][0] if seen else None

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "models": [m.to_dict() for m in self.models],
                "missing": [m.name for m in self.missing], "scenario": self.scenario}


def check_samples(
    version: int,
    models: Mapping[str, nn.Module],
    recent: Mapping[str, Sequence[LabelledSample]],
    baselines: Mapping[str, float],
    target: float,
    *,
    min_samples: int = 32,
    confidence: float = 0.9,
    verdicts: MutableMapping[int, bool] | None = None,
) -> SampleCheck:
    """Score ``models`` (the current version) on each model's ``recent`` samples.

    ``verdicts`` remembers, by sample id, whether the version's model got a sample right: a check
    scores only the samples no earlier check of the same version scored (give each version a
    mapping of its own). Consecutive windows overlap almost wholly, so under a steady stream
    of samples this keeps the check's cost to the new samples instead of the whole window.
    """
    verdicts = {} if verdicts is None else verdicts
    checks = []
    for name, model in models.items():
        found = [s for s in recent.get(name, []) if s.label >= 0]  # a detection target (-1) is not a class
        correct = _correct(model, found, verdicts)
        upper = wilson(correct / len(found), len(found), confidence).high if found else 1.0
        scenarios = Counter(s.scenario for s in found)
        drifted = Counter({scenario: n for scenario, n in scenarios.items() if scenario is not None})
        checks.append(ModelCheck(
            name=name, samples=len(found), correct=correct, baseline=baselines[name], target=target, upper=upper,
            scenario=drifted.most_common(1)[0][0] if drifted else None, judged=len(found) >= min_samples,
            seen=tuple(scenarios.most_common()), confidence=confidence,
        ))
    return SampleCheck(version, tuple(checks))


def _correct(model: nn.Module, found: Sequence[LabelledSample], verdicts: MutableMapping[int, bool]) -> int:
    """How many of ``found`` ``model`` gets right; those not in ``verdicts`` are scored and added to it."""
    new = [s for s in found if s.id not in verdicts]
    if new:
        frames = torch.from_numpy(np.stack([s.frame for s in new]))
        labels = torch.tensor([s.label for s in new])
        model.eval()
        with torch.inference_mode():
            right = (model(frames).argmax(dim=1) == labels).tolist()
        verdicts.update(zip((s.id for s in new), right))
    return sum(verdicts[s.id] for s in found)
