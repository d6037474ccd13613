"""Samples cannot steer the fleet alone: a miss starts a re-search only with evidence from enough
edges (or a sustained share of one edge's samples), and a deployment starts at most
--max-jobs-per-hour jobs; a refused start is logged once, not at every check."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from searchmerge.cli.commands import build_parser
from searchmerge.config.study import StudyFile, open_study_file
from searchmerge.core.errors import SearchmergeError
from searchmerge.service.cloud.evidence import weigh_evidence
from searchmerge.service.cloud.jobs import list_jobs
from searchmerge.service.cloud.samples import LabelledSample
from searchmerge.service.cloud.service import MergingService, ServiceSettings
from searchmerge.service.cloud.versions import publish_files
from searchmerge.service.protocol import DigitsSource, Sample, SampleBatch
from tests.conftest import TINY_STUDY
from tests.edge_cloud_support import digits_frame
from tests.fake_edge_service import files_of, make_version


def window(*parts: tuple[str, str | None, int]) -> list[LabelledSample]:
    """Samples of model 'a': (edge, scenario, count) after one another."""
    frame, stamp = np.zeros((1, 4, 4), dtype=np.float32), datetime.now(timezone.utc)
    return [LabelledSample(0, "a", scenario, 0, frame, stamp, edge) for edge, scenario, n in parts for _ in range(n)]


def test_one_edge_needs_a_sustained_share_and_several_edges_need_only_to_see_it() -> None:
    burst = window(("gate", None, 40), ("gate", "night", 24))  # one edge: 24 night frames among 64
    assert not weigh_evidence({"a": burst}, ["a"], "night").enough
    steady = window(("gate", None, 30), ("gate", "night", 34))
    assert weigh_evidence({"a": steady}, ["a"], "night").enough  # 53% of its samples
    assert not weigh_evidence({"a": steady}, ["a"], "night", edge_share=None).enough  # one edge never suffices
    two = window(("gate", None, 50), ("gate", "night", 4), ("dock", None, 6), ("dock", "night", 4))
    evidence = weigh_evidence({"a": two}, ["a"], "night")
    assert evidence.enough and evidence.witnesses == ("dock", "gate")
    assert not weigh_evidence({"a": two}, ["a"], "night", min_edges=3).enough
    assert evidence.describe().startswith("samples of 'night' per edge: dock: 4 of 10, gate: 4 of 54;")
    assert not weigh_evidence({"a": two}, ["b"], "night").enough  # only the missing models' windows count
    # Judged from the samples alone (no scenario), every sample is evidence: a one-edge deployment
    # still repairs itself, but one edge among several is not enough unless it sent half the window.
    assert weigh_evidence({"a": window(("gate", None, 64))}, ["a"], None).enough
    crowd = window(("gate", None, 20), ("dock", None, 22), ("pier", None, 22))
    assert not weigh_evidence({"a": crowd}, ["a"], None, min_edges=4).enough
    assert weigh_evidence({"a": crowd}, ["a"], None).enough  # three edges saw it
    with pytest.raises(SearchmergeError, match="--drift-edge-share must be in"):
        weigh_evidence({}, ["a"], "night", edge_share=1.5)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "x.yaml", "--drift-edge-share", "0"])
    assert build_parser().parse_args(["serve", "x.yaml", "--drift-edge-share", "off"]).drift_edge_share is None


class Constant(nn.Module):
    """Always answers class 0: a model that misses on any footage."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[1.0] + [0.0] * 9]).repeat(len(x), 1)


@pytest.fixture()
def study(tmp_path: Path) -> StudyFile:
    (tmp_path / "tiny.yaml").write_text(TINY_STUDY)
    return open_study_file(tmp_path / "tiny.yaml", storage=f"sqlite:///{tmp_path / 'tiny.db'}")


def test_a_drift_waits_for_a_second_edge_and_jobs_are_limited_per_hour(
    study: StudyFile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines: list[str] = []
    service = MergingService(study, ServiceSettings(window=16, min_samples=8, max_jobs_per_hour=1,
                                                    drift_edge_share=None, research_samples=1), progress=lines.append)
    publish_files(service.engine, study, files_of(make_version(tmp_path / "v1", seed=1)), source_study="parent",
                  trial=0, checkpoint="c")
    monkeypatch.setattr(service, "_models", lambda version: {"a": Constant()})
    monkeypatch.setattr(service, "_baseline_accuracies", lambda _version: {"a": 0.98})

    def send(edge: str, scenario: str | None, count: int, start: int = 0) -> None:
        test = service.footage.data(scenario)["a"].test
        service.store_samples(edge, SampleBatch(samples=[
            Sample(model="a", frame=digits_frame(test[i][0]),
                   source=DigitsSource(kind="digits", scenario=scenario, split="test", index=i))
            for i in range(start, start + count)]))

    send("gate", None, 10)
    send("gate", "night", 6)  # one edge alone never suffices here (--drift-edge-share off)
    for _ in range(3):
        check = service.check()
        assert check is not None and check.missing
    assert not list_jobs(service.engine, service.deployment)
    waiting = [line for line in lines if "too few edges sent them" in line]
    assert len(waiting) == 1 and re.search(r"gate: (\d+) of \1;", waiting[0])  # logged once, not at every check

    send("dock", "night", 8, start=100)  # a second edge's samples show the miss too
    service.check()
    (job,) = list_jobs(service.engine, service.deployment)
    assert job.scenario == f"samples:{service.deployment}" and any("re-search job 1" in line for line in lines)

    # A later version misses too, within the hour: past --max-jobs-per-hour.
    publish_files(service.engine, study, files_of(make_version(tmp_path / "v2", seed=2)), source_study="parent-2",
                  trial=0, checkpoint="c2")
    send("dock", "rain", 16, start=200)
    send("gate", "rain", 16, start=300)
    for _ in range(3):
        assert service.check().missing  # type: ignore[union-attr]
    assert len(list_jobs(service.engine, service.deployment)) == 1
    limited = [line for line in lines if "--max-jobs-per-hour" in line]
    assert len(limited) == 1 and "started 1 re-search job(s) in the last hour" in limited[0]
