"""Is a drift seen widely enough to start a re-search? Several edges, or a sustained share of one.

The service labels a sample by its provenance, but the pixels are the edge's: one edge
(compromised, or with a broken camera) could send a few dozen doctored frames and start a
re-search whose result every edge then runs. So a miss the drift check finds starts a
re-search only with *evidence*: drifted samples in the missing models' windows from at least
``min_edges`` edges, or, from one edge alone, drifted samples that make up at least
``edge_share`` of all the samples in those windows (a drift the edge sees steadily, as a
site whose lighting changed does, not a burst among ordinary frames). The second rule
keeps a one-edge deployment able to repair itself; ``edge_share=None`` turns it off, so that
only several edges together can start a re-search.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from searchmerge.core.errors import SearchmergeError
from searchmerge.service.cloud.samples import LabelledSample

__all__ = ["DRIFT_EDGE_SHARE", "DRIFT_MIN_EDGES", "DriftEvidence", "check_evidence_rule", "weigh_evidence"]

#: Edges whose samples must show a drift before a re-search starts (unless one edge's share suffices).
DRIFT_MIN_EDGES = 2
#: The share of one edge's samples (in the missing models' windows) that must be drifted for it alone to suffice.
DRIFT_EDGE_SHARE = 0.5


@dataclass(frozen=True)
class DriftEvidence:
    """Who saw a drift scenario in the windows of the models that miss their target."""

    #: ``None``: the samples name no scenario (camera footage), and every sample in the windows counts.
    scenario: str | None
    #: Per edge that sent samples to those windows: (edge, samples of the scenario, all its samples there).
    edges: tuple[tuple[str, int, int], ...]
    min_edges: int
    edge_share: float | None

    @property
    def witnesses(self) -> tuple[str, ...]:
        """The edges with at least one sample of the scenario."""
        return tuple(edge for edge, drifted, _ in self.edges if drifted)

    @property
    def best_share(self) -> float:
        """The largest share of the windows' samples that one edge's evidence makes up.

        Of the windows, not of the edge's own samples: judged from the samples alone (no
        scenario), every sample an edge sent is evidence, so a share of its own samples would
        always be 1 and one edge would always suffice.
        """
        total = sum(count for _, _, count in self.edges)
        return max((drifted / total for _, drifted, _ in self.edges), default=0.0) if total else 0.0

    @property
    def enough(self) -> bool:
        if len(self.witnesses) >= self.min_edges:
            return True
        return self.edge_share is not None and self.best_share >= self.edge_share

    def describe(self) -> str:
        """One phrase for logs: who saw what, against which rule."""
        seen = ", ".join(f"{edge}: {drifted} of {total}" for edge, drifted, total in self.edges) or "no edge"
        what = "samples" if self.scenario is None else f"samples of {self.scenario!r}"
        rule = f"at least {self.min_edges} edge(s) with {what}"
        if self.edge_share is not None:
            rule += f", or {self.edge_share:.0%} of the windows' samples from one edge"
        return f"{what} per edge: {seen}; a re-search needs {rule}"


def weigh_evidence(recent: Mapping[str, Sequence[LabelledSample]], models: Iterable[str], scenario: str | None, *,
                   min_edges: int = DRIFT_MIN_EDGES, edge_share: float | None = DRIFT_EDGE_SHARE) -> DriftEvidence:
    """The evidence for ``scenario`` in the windows (``recent``) of ``models``, the ones that miss.

    ``None``: the drift is judged from the samples alone (what the service does), so every sample
    in those windows is evidence, and the rule weighs which edges sent them.
    """
    check_evidence_rule(min_edges, edge_share)
    totals: Counter[str] = Counter()
    drifted: Counter[str] = Counter()
    for model in models:
        for sample in recent.get(model, ()):
            totals[sample.edge] += 1
            drifted[sample.edge] += scenario is None or sample.scenario == scenario
    edges = tuple((edge, drifted[edge], totals[edge]) for edge in sorted(totals))
    return DriftEvidence(scenario, edges, min_edges, edge_share)


def check_evidence_rule(min_edges: int, edge_share: float | None) -> None:
    """Raise :class:`SearchmergeError` (one line) for a rule that makes no sense."""
    if min_edges < 1:
        raise SearchmergeError(f"a drift needs at least 1 edge's evidence, got --drift-min-edges {min_edges}")
    if edge_share is not None and not 0 < edge_share <= 1:
        raise SearchmergeError(f"--drift-edge-share must be in (0, 1] or 'off', got {edge_share}")
