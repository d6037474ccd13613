"""The publish gate: a re-searched version goes out only if it meets its target on held-out samples.

A re-search picks the plan whose worst ratio on its own validation data is best, and on
small validation splits the plan picked at exactly the target is the one most likely to
be below it on the edge (issue 24: a version published at 0.950 scored 0.938 there). So
before a job publishes, its plan's merged models are scored on labelled samples that
nothing before had a say on: the share of the edges' samples held out
(:func:`~searchmerge.data.sources.samples.is_held_out`, about one in four, by a hash of the id) from the drift
check, which decides to re-search, and from the re-search's data (a re-search on
``samples:DEPLOYMENT`` trains and selects on the other samples; one on a drift scenario, on
that scenario's data). Only samples received since the current version was published count
(what the edges see now).

Each model with at least ``min_samples`` held-out samples (at least one) is judged by the
project's one feasibility rule, as the study accepts ratios (``accept:``: the measured ratio
by default, or its 95% Wilson interval's lower end, less a margin): its accuracy on the
samples over its original's validation accuracy. A model with fewer held-out samples is
named as not judged. The version **passes only when at least one model was judged and no
judged model misses**: a version none of whose models could be judged (a re-search asked for
by hand, or one whose edges have sent too few samples since the current version) is not
published, like one that misses. Either way the job keeps the current version and logs one
WARNING line with the numbers (each model's held-out samples and, when nothing could be
judged, how many the gate needs); :attr:`GateVerdict.refusal` is the job's message.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Engine

from searchmerge.config.settings import EvaluatorSettings
from searchmerge.core.errors import SearchmergeError
from searchmerge.core.feasibility import accepted_ratio, constraint_value, is_feasible
from searchmerge.search.merge_search import MergeSearch, TrialSummary
from searchmerge.service.cloud.monitor import ModelCheck, check_samples
from searchmerge.service.cloud.samples import HOLDOUT_EVERY, recent_samples

__all__ = ["GATE_MIN_SAMPLES", "GATE_WINDOW", "GateVerdict", "check_held_out"]

#: Held-out samples a model needs before the gate judges it.
GATE_MIN_SAMPLES = 16
#: The newest held-out samples per model the gate reads.
GATE_WINDOW = 256


@dataclass(frozen=True)
class GateVerdict:
    """A candidate version's models on the held-out samples, judged as the study accepts ratios."""

    trial: int
    study_name: str
    models: tuple[ModelCheck, ...]
    min_samples: int
    accept: str = "point"
    accept_margin: float = 0.0

    def __post_init__(self) -> None:
        if self.min_samples < 1:  # 0 would judge a model on no samples at all
            raise SearchmergeError(f"the publish gate judges a model on at least 1 held-out sample, not"
                                   f" {self.min_samples}")

    def accepted(self, model: ModelCheck) -> float:
        """The ratio the rule judges ``model`` by: measured, or its interval's lower end, less the margin."""
        ratio = model.accuracy / model.baseline if model.baseline else 0.0
        return accepted_ratio(ratio, model.ratio_interval.low, rule=self.accept, margin=self.accept_margin)

    @property
    def judged(self) -> tuple[ModelCheck, ...]:
        return tuple(m for m in self.models if m.samples >= self.min_samples)

    @property
    def failing(self) -> tuple[ModelCheck, ...]:
        """The judged models that miss their target on the held-out samples (the one rule)."""
        return tuple(m for m in self.judged if not is_feasible(constraint_value(m.target, [self.accepted(m)])))

    @property
    def passes(self) -> bool:
        """At least one model was judged, and no judged model misses: nothing unjudged is published."""
        return bool(self.judged) and not self.failing

    def counts(self) -> str:
        """Each model's held-out samples, e.g. ``a: 12, b: 9``."""
        return ", ".join(f"{m.name}: {m.samples}" for m in self.models)

    @property
    def refusal(self) -> str | None:
        """Why the version is not published (``None`` when it passes), in a few words with the numbers."""
        if not self.judged:
            return (f"no model had enough held-out samples to be judged ({self.counts()} held-out samples; the gate"
                    f" needs {self.min_samples} of a model)")
        if self.failing:
            return (f"trial {self.trial} misses its target on held-out samples"
                    f" ({', '.join(m.name for m in self.failing)})")
        return None

    def describe(self) -> str:
        """One line in which every number says what it is."""
        parts = []
        for m in self.models:
            interval = m.ratio_interval
            text = (f"{m.name} accuracy {m.accuracy:.2f} on {m.samples} held-out samples, ratio"
                    f" {m.accuracy / m.baseline if m.baseline else 0.0:.3f} (95% CI [{interval.low:.3f},"
                    f" {interval.high:.3f}]) to its baseline accuracy {m.baseline:.2f}")
            if m.samples < self.min_samples:
                text += f", not judged (needs {self.min_samples})"
            elif m in self.failing:
                text += f", MISSES the target ratio {m.target:g}"
            parts.append(text)
        rule = "measured ratio" if self.accept == "point" else "lower end of the 95% CI"
        margin = f" minus margin {self.accept_margin:g}" if self.accept_margin else ""
        return (f"trial {self.trial} of {self.study_name!r} on held-out samples (about one in {HOLDOUT_EVERY}, judged by the"
                f" {rule}{margin}): " + "; ".join(parts))


def check_held_out(
    engine: Engine, search: MergeSearch, trial: TrialSummary, *, since: datetime,
    min_samples: int = GATE_MIN_SAMPLES, window: int = GATE_WINDOW,
) -> GateVerdict:
    """Score ``trial``'s merged models (a re-search's best) on the held-out samples received since ``since``.

    Raises:
        SearchmergeError: If ``min_samples`` is below 1.
    """
    if min_samples < 1:
        raise SearchmergeError(f"the publish gate judges a model on at least 1 held-out sample, not {min_samples}")
    deployment = search.study_file.workload.name
    held = recent_samples(engine, deployment, since=since, window=window, held_out=True)
    models = search.merged_models(trial)
    baselines = {name: b.val_accuracy for name, b in search.prepared.baselines.items()}
    check = check_samples(0, models, held, baselines, search.evaluator.target, min_samples=min_samples)
    settings: EvaluatorSettings = search.evaluator.settings
    return GateVerdict(trial.number, search.study_name, check.models, min_samples, settings.accept,
                       settings.accept_margin)
