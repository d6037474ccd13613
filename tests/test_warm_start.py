"""A re-search starts a model the plan does not share from its original (issue 20 item 5)."""

from __future__ import annotations

from types import SimpleNamespace

from torch import nn

from searchmerge.core.space import SharingPlan
from searchmerge.search.merge_search import WarmStart


def test_a_model_the_plan_does_not_share_starts_from_its_original_not_the_parents_copy() -> None:
    originals = {name: nn.Linear(2, 2) for name in ("a", "b", "c")}
    deployed = {name: nn.Linear(2, 2) for name in ("a", "b", "c")}  # the parent's merged weights, unmerged
    groups = [SimpleNamespace(name="g1", models=("a", "b")), SimpleNamespace(name="g2", models=("b", "c"))]
    warm = WarmStart("parent", "checkpoint", deployed)
    start = warm.start_models(SharingPlan(frozenset({"g1"})), groups, originals)  # type: ignore[arg-type]
    assert start["a"] is deployed["a"] and start["b"] is deployed["b"]  # shared: from the deployed weights
    assert start["c"] is originals["c"]  # shares nothing under this plan: its original
    nothing = warm.start_models(SharingPlan(frozenset()), groups, originals)  # type: ignore[arg-type]
    assert all(nothing[name] is originals[name] for name in originals)
    # A settled model (a workload change on unchanged data) keeps its deployed weights under the deployed plan.
    settled = WarmStart("parent", "checkpoint", deployed, settled=frozenset({"c"}),
                        settled_plan=SharingPlan(frozenset({"g1"})))
    assert settled.start_models(SharingPlan(frozenset({"g1"})), groups, originals)["c"] is deployed["c"]  # type: ignore[arg-type]
