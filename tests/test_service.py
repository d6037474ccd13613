"""The merging service: tokens, the API's refusals, samples and their labels, versions, jobs, restarts."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
import warnings
from pathlib import Path

import numpy as np
import optuna
import pytest
import sqlalchemy as sa

from searchmerge.cli.commands import main
from searchmerge.config.study import StudyFile
from searchmerge.core.errors import SearchmergeError
from searchmerge.data.sources.samples import held_out_clause
from searchmerge.search.merge_search import load_search
from searchmerge.service.cloud.app import create_app
from searchmerge.service.cloud.db import edges, open_engine, samples, versions
from searchmerge.service.cloud.gate import GATE_MIN_SAMPLES
from searchmerge.service.cloud.jobs import list_jobs, request_research, run_job
from searchmerge.service.cloud.samples import prune_samples, store_samples
from searchmerge.service.cloud.service import MergingService, ServiceSettings
from searchmerge.service.cloud.tokens import authenticate, create_edge_token
from searchmerge.service.cloud.versions import (
    current_version,
    list_versions,
    publish,
    rollback,
    unpin,
)
from searchmerge.service.footage import Footage
from searchmerge.service.protocol import DigitsSource, Sample, SampleBatch
from tests.edge_cloud_support import (
    PARENT,
    digits_frame,
    free_port,
    kill,
    searched_copy,
    start_service,
    stop,
    wait_for,
)

with warnings.catch_warnings():  # starlette asks for httpx2, which FastAPI's test client does not use yet
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


@pytest.fixture(scope="module")
def study(prepared_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> StudyFile:
    return searched_copy(prepared_tiny, tmp_path_factory, "service")


@pytest.fixture(scope="module")
def service(study: StudyFile) -> MergingService:
    """A service with version 1 published; its caretaker is not started (the tests drive it)."""
    service = MergingService(study, ServiceSettings(min_samples=8, window=16, heartbeat_interval=1, research_trials=1,
                                                    research_samples=16))
    service.publish_first()
    return service


@pytest.fixture(scope="module")
def api(service: MergingService) -> TestClient:
    return TestClient(create_app(service))


@pytest.fixture(scope="module")
def tokens(study: StudyFile) -> dict[str, str]:
    return {name: create_edge_token(study.storage, study.workload.name, name) for name in ("gate", "dock")}


def stored_samples(service: MergingService) -> int:
    with service.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(samples)).scalar() or 0)


def digits_samples(footage: Footage, model: str, scenario: str | None, count: int) -> list[Sample]:
    split = footage.data(scenario)[model].test
    return [Sample(model=model, frame=digits_frame(split[i][0]),
                   source=DigitsSource(kind="digits", scenario=scenario, split="test", index=i)) for i in range(count)]


def test_tokens_are_stored_hashed_and_compared(study: StudyFile, service: MergingService,
                                               tokens: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    with service.engine.connect() as conn:
        stored = dict(conn.execute(sa.select(edges.c.name, edges.c.token_sha256)).all())
    assert stored["gate"] == hashlib.sha256(tokens["gate"].encode()).hexdigest()
    assert tokens["gate"] not in json.dumps(stored)
    assert authenticate(service.engine, service.deployment, tokens["gate"]) == "gate"
    assert authenticate(service.engine, service.deployment, tokens["gate"] + "x") is None
    assert authenticate(service.engine, service.deployment, "gate") is None
    assert authenticate(service.engine, service.deployment, "nobody.secret") is None
    with pytest.raises(SearchmergeError, match="edge name 'a b' must be"):
        create_edge_token(study.storage, study.workload.name, "a b")
    # The CLI prints a new token; the old one of that edge stops working.
    assert main(["edge-token", str(study.path), "--storage", study.storage, "spare"]) == 0
    first = capsys.readouterr().out.strip()
    assert main(["edge-token", str(study.path), "--storage", study.storage, "spare"]) == 0
    second = capsys.readouterr().out.strip()
    assert authenticate(service.engine, service.deployment, first) is None
    assert authenticate(service.engine, service.deployment, second) == "spare"


def test_requests_without_the_edges_token_are_refused_revealing_nothing(
    service: MergingService, api: TestClient, tokens: dict[str, str]
) -> None:
    routes = [("GET", "/v1/edges/gate/version"), ("GET", "/v1/edges/gate/versions/1/weights.safetensors"),
              ("GET", "/v1/edges/gate/versions/1/manifest.json"), ("GET", "/v1/edges/gate/status"),
              ("POST", "/v1/edges/gate/samples"), ("POST", "/v1/edges/gate/stats")]
    for method, route in routes:
        for headers in ({}, {"Authorization": "Bearer nonsense"}, {"Authorization": f"Bearer {tokens['gate']}x"},
                        {"Authorization": "Basic Z2F0ZTpnYXRl"}):
            refused = api.request(method, route, headers=headers, content=b"{not json")
            assert refused.status_code == 401, (route, headers)
            assert refused.json() == {"detail": "not authenticated"}
        other = api.request(method, route, headers={"Authorization": f"Bearer {tokens['dock']}"}, content=b"{}")
        assert other.status_code == 403 and other.json() == {"detail": "forbidden"}
    # The same answer whether the edge named in the path exists or not.
    assert api.get("/v1/edges/nobody/version").json() == {"detail": "not authenticated"}
    assert api.get("/v1/edges/nobody/version", headers={"Authorization": f"Bearer {tokens['dock']}"}).status_code == 403
    assert stored_samples(service) == 0
    # With its own token an edge gets the version, and the API documents itself.
    own = api.get("/v1/edges/gate/version", headers={"Authorization": f"Bearer {tokens['gate']}"})
    assert own.status_code == 200 and own.json()["version"] == 1
    schema = api.get("/openapi.json").json()
    assert "/v1/edges/{edge}/samples" in schema["paths"] and "SampleBatch" in schema["components"]["schemas"]


def test_oversized_and_malformed_uploads_store_nothing(service: MergingService, api: TestClient,
                                                       tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    headers = {"Authorization": f"Bearer {tokens['gate']}", "Content-Type": "application/json"}
    good = digits_samples(service.footage, "a", None, 3)
    limit = service.settings.max_upload_bytes

    def post(body: bytes | object) -> int:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return api.post("/v1/edges/gate/samples", headers=headers, content=content).status_code

    def chunks() -> object:  # no Content-Length: the limit applies as the body streams in
        for _ in range(limit // 4096 + 2):
            yield b" " * 4096

    assert post(b" " * (limit + 1)) == 413
    assert api.post("/v1/edges/gate/samples", headers=headers, content=chunks()).status_code == 413
    assert api.post("/v1/edges/gate/stats", headers=headers, content=b" " * (limit + 1)).status_code == 413
    document = json.loads(SampleBatch(samples=good).model_dump_json())
    frame = document["samples"][0]["frame"]
    rgb = digits_frame(np.zeros((3, 16, 16), np.float32)).model_dump()  # tiny's models take 1 x 16 x 16
    bad_frames = [
        {**frame, "data": "***"},                                                       # not base64
        {**frame, "data": base64.b64encode(b"\x89PNG not really").decode()},            # does not decode
        {**frame, "encoding": "jpeg"},                                                  # a PNG said to be a JPEG
        {**frame, "encoding": "gif"},
        {**frame, "region": [0, 0, 4]},
        digits_frame(np.zeros((1, 8, 8), np.float32)).model_dump(),                     # the wrong size
        rgb,                                                                            # the wrong channels
    ]
    for bad in bad_frames:
        assert post({"samples": [document["samples"][1], {**document["samples"][0], "frame": bad}]}) == 422
    for change in ({"model": "zz"}, {"source": {"kind": "digits", "scenario": "fog", "index": 0}},
                   {"source": {"kind": "digits", "index": 10**6}}, {"source": {"kind": "video", "index": 0}},
                   {"source": None}, {"unexpected": 1}):
        assert post({"samples": [document["samples"][1], {**document["samples"][0], **change}]}) == 422
    # Over the limit of one sample's frame: 413 with a JSON detail.
    monkeypatch.setattr(service.labeller, "max_sample_bytes", 40)
    too_large = api.post("/v1/edges/gate/samples", headers=headers, content=json.dumps(document).encode())
    assert too_large.status_code == 413 and "more than the 40 a sample may have" in too_large.json()["detail"]
    monkeypatch.undo()
    # An edge that reported running only model b sends a sample of model a.
    dock = {"Authorization": f"Bearer {tokens['dock']}", "Content-Type": "application/json"}
    stats = {"version": 1, "streams": {"b": {"model": "b", "processed": 5, "dropped": 0}}}
    assert api.post("/v1/edges/dock/stats", headers=dock, content=json.dumps(stats)).status_code == 204
    foreign = api.post("/v1/edges/dock/samples", headers=dock, content=json.dumps(document).encode())
    assert foreign.status_code == 422 and "this edge does not run model 'a'" in foreign.json()["detail"]
    assert post(b"{not json") == 422 and post({"samples": []}) == 422
    assert post(b'{"streams": 3}') == 422
    assert stored_samples(service) == 0

    # A good upload is stored whole, labelled with the generator's labels.
    accepted = api.post("/v1/edges/gate/samples", headers=headers, content=SampleBatch(samples=good).model_dump_json())
    assert accepted.status_code == 202 and accepted.json() == {"accepted": 3}
    with service.engine.connect() as conn:
        labels = conn.execute(sa.select(samples.c.label).order_by(samples.c.id)).scalars().all()
    assert labels == [int(service.footage.data(None)["a"].test[i][1]) for i in range(3)]
    stats = {"version": 1, "streams": {"a": {"model": "a", "processed": 5, "dropped": 1}}}
    assert api.post("/v1/edges/gate/stats", headers=headers, content=json.dumps(stats)).status_code == 204
    with service.engine.connect() as conn:
        reported = conn.execute(sa.select(edges.c.stats_json).where(edges.c.name == "gate")).scalar()
    assert json.loads(reported)["streams"]["a"]["dropped"] == 1


def test_versions_are_published_once_served_with_their_checksum_and_rolled_back(
    study: StudyFile, service: MergingService, api: TestClient, tokens: dict[str, str]
) -> None:
    search = load_search(study, study_name=PARENT)
    first = current_version(service.engine, service.deployment)
    assert first is not None and first.version == 1 and first.trial == search.best().number
    again = publish(service.engine, study, search, search.best())
    assert again == first and len(list_versions(service.engine, service.deployment)) == 1
    headers = {"Authorization": f"Bearer {tokens['gate']}"}
    weights = api.get("/v1/edges/gate/versions/1/weights.safetensors", headers=headers)
    assert hashlib.sha256(weights.content).hexdigest() == first.weights_sha256 == weights.headers["X-Content-SHA256"]
    assert api.get("/v1/edges/gate/versions/9/weights.safetensors", headers=headers).status_code == 404
    assert api.get("/v1/edges/gate/versions/1/secrets.txt", headers=headers).status_code == 422

    other = next(t for t in search.history() if t.feasible and t.number != first.trial)
    second = publish(service.engine, study, search, other)
    assert second.version == 2 and current_version(service.engine, service.deployment) == second
    assert main(["rollback", str(study.path), "--storage", study.storage, "1"]) == 0
    assert current_version(service.engine, service.deployment) == first
    assert len(list_versions(service.engine, service.deployment)) == 2  # kept for rolling forward again
    assert main(["rollback", str(study.path), "--storage", study.storage, "7"]) == 2
    rollback(service.engine, service.deployment, 2)
    assert current_version(service.engine, service.deployment) == second
    rollback(service.engine, service.deployment, 1)
    unpin(service.engine, service.deployment)  # version 2 stays withdrawn: 1 is current, and what comes next


def test_a_drift_seen_in_the_samples_starts_one_research_on_them_that_the_gate_holds_back(
    study: StudyFile, service: MergingService, tokens: dict[str, str]
) -> None:
    # Undrifted samples from an edge that has not reported its streams (so it may send any model's): every
    # model holds its target.
    for model in ("a", "b", "c"):
        service.store_samples("field", SampleBatch(samples=digits_samples(service.footage, model, None, 16)))
    check = service.check()
    assert check is not None and check.version == 1 and not check.missing
    assert all(m.judged for m in check.models) and list_jobs(service.engine, service.deployment) == []
    # Night: the models miss on their labelled samples; the job re-searches on those samples, no scenario named.
    # 32 of each, so that the window of 16 (the gate's held-out samples excluded) holds night samples alone.
    for model in ("a", "b", "c"):
        service.store_samples("field", SampleBatch(samples=digits_samples(service.footage, model, "night", 32)))
    check = service.check()
    assert check is not None and check.missing
    data = f"samples:{service.deployment}"
    jobs = list_jobs(service.engine, service.deployment)
    assert [(j.parent_study, j.scenario, j.state) for j in jobs] == [(PARENT, data, "queued")]
    service.check()  # the same drift again: no second job
    assert len(list_jobs(service.engine, service.deployment)) == 1

    # The publish gate reads the samples held out since version 1: fewer than it needs of every model (12 of
    # each from this test, plus the upload test's few), so whatever the one trial finds, nothing is published.
    current = current_version(service.engine, service.deployment)
    assert current is not None and current.version == 1
    with service.engine.connect() as conn:
        held = dict(conn.execute(sa.select(samples.c.model, sa.func.count()).where(
            held_out_clause(samples.c.id), samples.c.received_at >= current.created_at)
            .group_by(samples.c.model)).all())
    assert set(held) == {"a", "b", "c"} and max(held.values()) < GATE_MIN_SAMPLES, held
    before = list_versions(service.engine, service.deployment)
    job = run_job(service.engine, study, jobs[0], heartbeat_interval=1)
    # The re-search trained and judged on the samples the service labelled (format: samples).
    research_study = load_search(study, study_name=f"{PARENT}-{data}")
    assert research_study.lineage()["scenario"] == data  # type: ignore[index]
    with service.engine.connect() as conn:  # every sample but those held out for the publish gate
        kept = {model: conn.execute(sa.select(sa.func.count()).select_from(samples).where(
            samples.c.model == model, sa.not_(held_out_clause(samples.c.id)))).scalar() for model in ("a", "b", "c")}
    assert all(data.description.startswith(f"{kept[name]} samples of model {name!r}")
               for name, data in research_study.prepared.data.items())
    # Its one trial's plan is held back unjudged, or it found none; either way version 1 stays (both checked
    # whichever it was: the trial's accuracy is not this test's business, and publishing is test_edge's).
    counts = ", ".join(f"{name}: {held[name]}" for name in ("a", "b", "c"))
    why = {"held-back": f"no model had enough held-out samples to be judged ({counts} held-out samples; the gate"
                        f" needs {GATE_MIN_SAMPLES} of a model) since version 1; version 1 is kept",
           "no-feasible-plan": "1 trials found no feasible plan"}
    assert job.state in why and why[job.state] in job.message and job.version is None, (job.state, job.message)
    assert list_versions(service.engine, service.deployment) == before
    assert current_version(service.engine, service.deployment) == current
    # The same drift again finds the ended job: no second job (a held-back job is re-queued by hand).
    assert service.check().missing  # type: ignore[union-attr]
    assert [j.id for j in list_jobs(service.engine, service.deployment)] == [job.id]


def test_a_service_killed_during_a_research_resumes_it_and_ends_it_once(
    prepared_tiny: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    study = searched_copy(prepared_tiny, tmp_path_factory, "service-kill")
    engine = open_engine(study.storage)
    MergingService(study).publish_first()
    job, created = request_research(engine, study.workload.name, parent_study=PARENT, scenario="night", n_trials=2)
    assert created
    log = tmp_path / "service.log"
    port = free_port()
    process = start_service(study, port, log)
    research_study = f"{PARENT}-night"

    def running_trial() -> bool:
        try:
            trials = optuna.load_study(study_name=research_study, storage=study.storage).trials
        except KeyError:
            return False
        return any(t.state == optuna.trial.TrialState.RUNNING for t in trials)

    wait_for(running_trial, alive=process, what="a running re-search trial", log=log)
    kill(process)
    assert [j.state for j in list_jobs(engine, study.workload.name)] == ["running"]
    assert current_version(engine, study.workload.name).version == 1

    process = start_service(study, port, log)
    try:
        wait_for(lambda: list_jobs(engine, study.workload.name)[0].state != "running", alive=process,
                 what="the resumed job", log=log)
    finally:
        stop(process)
    job = list_jobs(engine, study.workload.name)[0]
    trials = optuna.load_study(study_name=research_study, storage=study.storage).trials
    assert any(t.state == optuna.trial.TrialState.FAIL for t in trials)  # the killed trial, retried
    assert len([t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]) == 2
    # No edge sent samples, so the publish gate could judge no model: its plan is held back (or it found none),
    # and nothing is published. (A job killed after publishing publishes once: test_service_faults.)
    why = {"held-back": "no model had enough held-out samples to be judged (a: 0, b: 0, c: 0 held-out samples",
           "no-feasible-plan": "2 trials found no feasible plan"}
    assert job.state in why and why[job.state] in job.message and job.attempts == 2, (job.state, job.message)
    with engine.connect() as conn:
        published = conn.execute(sa.select(versions.c.number).where(versions.c.source_study == research_study)).all()
    assert published == [] and current_version(engine, study.workload.name).version == 1  # type: ignore[union-attr]
    assert "resuming the re-search" in log.read_text()


POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def test_the_service_state_lives_in_postgresql_too(service: MergingService, tmp_path: Path) -> None:
    """Tokens, jobs (one per drift, whoever asks) and samples in PostgreSQL, as in SQLite."""
    deployment = f"pg-{uuid.uuid4().hex[:12]}"  # a deployment of its own: the shared test database outlives runs
    engine = open_engine(POSTGRES)
    token = create_edge_token(POSTGRES, deployment, "gate")
    assert authenticate(engine, deployment, token) == "gate"
    assert authenticate(engine, service.deployment, token) is None  # another deployment's edge
    first, created = request_research(engine, deployment, parent_study="p", scenario="night", n_trials=2)
    again, created_again = request_research(engine, deployment, parent_study="p", scenario="night", n_trials=2)
    assert created and not created_again and first.id == again.id
    batch = SampleBatch(samples=digits_samples(service.footage, "a", "night", 5))
    assert store_samples(engine, deployment, "gate", batch, service.labeller) == 5
    prune_samples(engine, deployment, keep=2)
    with engine.connect() as conn:
        kept = conn.execute(sa.select(samples.c.frame_index).where(samples.c.deployment == deployment)
                            .order_by(samples.c.id)).scalars().all()
    assert kept == [3, 4]
