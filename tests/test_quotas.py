"""Per-edge sample quotas: an edge past its quota is answered 429 with Retry-After (storing
nothing), other edges are not held back, and the edge keeps its samples and sends them later."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from searchmerge.config.study import StudyFile, open_study_file
from searchmerge.service.cloud.app import create_app
from searchmerge.service.cloud.db import samples
from searchmerge.service.cloud.quotas import QuotaExceeded, SampleQuota
from searchmerge.service.cloud.service import MergingService, ServiceSettings
from searchmerge.service.cloud.tokens import create_edge_token
from searchmerge.service.protocol import DigitsSource, Sample, SampleBatch
from tests.conftest import TINY_STUDY
from tests.edge_cloud_support import digits_frame, wait_for
from tests.fake_edge_service import Agent, FakeServer, FakeService, make_version


def test_a_quota_refills_at_its_rate_and_takes_an_upload_whole_or_not_at_all() -> None:
    now = [0.0]
    quota = SampleQuota(per_minute=60, clock=lambda: now[0])
    quota.take("gate", 50)
    with pytest.raises(QuotaExceeded) as refused:
        quota.take("gate", 20)
    assert refused.value.retry_after == 10.0  # 10 samples short, at one a second
    quota.take("door", 60)  # another edge's quota is its own
    now[0] = 10.0
    quota.take("gate", 20)  # 10 left + 10 refilled
    now[0] = 1000.0
    quota.take("gate", 60)  # refilled to one minute's worth, not more
    with pytest.raises(QuotaExceeded, match="send fewer at a time"):
        quota.take("gate", 61)


@pytest.fixture()
def study(tmp_path: Path) -> StudyFile:
    (tmp_path / "tiny.yaml").write_text(TINY_STUDY)
    return open_study_file(tmp_path / "tiny.yaml", storage=f"sqlite:///{tmp_path / 'tiny.db'}")


def batch_of(service: MergingService, count: int) -> str:
    test = service.footage.data(None)["a"].test
    return SampleBatch(samples=[
        Sample(model="a", frame=digits_frame(test[i][0]), source=DigitsSource(kind="digits", index=i))
        for i in range(count)
    ]).model_dump_json()


def test_the_api_answers_429_past_an_edges_quota(study: StudyFile) -> None:
    service = MergingService(study, ServiceSettings(samples_per_minute=20))
    api = TestClient(create_app(service))
    tokens = {name: create_edge_token(study.storage, service.deployment, name) for name in ("gate", "door")}

    def post(edge: str, count: int):  # type: ignore[no-untyped-def]
        return api.post(f"/v1/edges/{edge}/samples", content=batch_of(service, count),
                        headers={"Authorization": f"Bearer {tokens[edge]}", "Content-Type": "application/json"})

    assert post("gate", 20).status_code == 202
    refused = post("gate", 5)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert "20 samples a minute" in refused.json()["detail"]
    assert post("door", 20).status_code == 202  # another edge is not held back
    with service.engine.connect() as conn:
        stored = dict(conn.execute(sa.select(samples.c.edge, sa.func.count()).group_by(samples.c.edge)).all())
    assert stored == {"gate": 20, "door": 20}  # the refused upload stored nothing


def test_an_edge_over_its_quota_keeps_its_samples_and_sends_them_later(tmp_path: Path) -> None:
    state = FakeService()
    state.publish(1, make_version(tmp_path / "v1", seed=1))
    state.samples_answer = (429, {"Retry-After": "1"}, b'{"detail": "edge \'gate\' sent more than its quota"}')
    server = FakeServer(state)
    edge = Agent(server.url, tmp_path / "edge")
    try:
        wait_for(lambda: edge.agent.metrics.samples_deferred._value.get() > 0, what="samples to be deferred")
        assert edge.said("the service asks this edge to slow down") and not edge.said("refused")
        waiting = len(edge.agent._samples)
        assert waiting > 0
        with state.lock:
            state.samples_answer = None
        wait_for(lambda: state.samples >= waiting, what="the waiting samples to be sent")
    finally:
        edge.close()
        server.close()
