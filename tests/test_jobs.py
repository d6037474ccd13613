"""Re-search jobs that survive and scale out: claimed once (FOR UPDATE SKIP LOCKED on PostgreSQL,
a conditional UPDATE anywhere) under a lease of the database's clock, taken over when the holder
dies, stopped when its renewal updates no row, failed after N attempts with their error; a
rollback that pins its version; the preparation lease judged by the database's clock too.
The re-search itself is replaced by stand-ins: these tests are about the bookkeeping."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa

from searchmerge.config.study import StudyFile, open_study_file
from searchmerge.core.errors import SearchmergeError
from searchmerge.service.cloud import jobs as jobs_module
from searchmerge.service.cloud.db import jobs, open_engine
from searchmerge.service.cloud.jobs import JobLost, _Lease, claim_job, list_jobs, request_research, run_job
from searchmerge.service.cloud.versions import current_version, publish_files, rollback, unpin
from searchmerge.storage.lease import LEASE_TABLE, hold_lease
from tests.conftest import TINY_STUDY
from tests.edge_cloud_support import wait_for
from tests.fake_edge_service import files_of, make_version

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """A storage URL and a deployment of its own (the shared PostgreSQL database outlives runs)."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}" if request.param == "sqlite" else POSTGRES
    return url, f"jobs-{uuid.uuid4().hex[:12]}"


def test_each_job_is_claimed_once_and_taken_over_when_its_lease_expires(database: tuple[str, str]) -> None:
    url, deployment = database
    engine = open_engine(url)
    for scenario in ("night", "rain", "fog"):
        request_research(engine, deployment, parent_study="p", scenario=scenario, n_trials=1)
    claimed: list[int | None] = []
    lock = threading.Lock()

    def claimer(holder: str) -> None:
        job = claim_job(engine, deployment, holder, lease_seconds=600)
        with lock:
            claimed.append(None if job is None else job.id)

    threads = [threading.Thread(target=claimer, args=(f"worker-{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [job for job in claimed if job is not None]
    assert len(winners) == 3 and len(set(winners)) == 3  # every job once, and no job twice
    assert claim_job(engine, deployment, "late", lease_seconds=600) is None
    listed = list_jobs(engine, deployment)
    assert all(j.state == "running" and j.attempts == 1 and j.holder and j.holder.startswith("worker-")
               for j in listed)

    # A holder that died: its lease (of the database's clock) runs out, and another process takes over.
    with engine.begin() as conn:
        conn.execute(sa.update(jobs).where(jobs.c.deployment == deployment, jobs.c.scenario == "night")
                     .values(lease_expires_at=sa.func.current_timestamp() if url.startswith("sqlite")
                             else sa.text("now() - interval '1 second'")))
    if url.startswith("sqlite"):  # CURRENT_TIMESTAMP has whole seconds: wait until it is in the past
        wait_for(lambda: claim_job(engine, deployment, "successor", lease_seconds=600) is not None,
                 what="the expired lease to be taken over")
    else:
        assert claim_job(engine, deployment, "successor", lease_seconds=600) is not None
    night = next(j for j in list_jobs(engine, deployment) if j.scenario == "night")
    assert night.holder == "successor" and night.attempts == 2


def test_a_renewal_that_updates_no_row_stops_the_holder(database: tuple[str, str]) -> None:
    url, deployment = database
    engine = open_engine(url)
    job, _ = request_research(engine, deployment, parent_study="p", scenario="night", n_trials=1)
    assert claim_job(engine, deployment, "first", lease_seconds=600) is not None
    lease = _Lease(engine, job.id, "first", 600)
    lease.renew()
    lease.check()
    with engine.begin() as conn:  # taken over while "first" stalled
        conn.execute(sa.update(jobs).where(jobs.c.id == job.id).values(holder="second"))
    lease.renew()
    with pytest.raises(JobLost, match="another process took it over"):
        lease.check()


@pytest.fixture()
def study(tmp_path: Path) -> StudyFile:
    (tmp_path / "tiny.yaml").write_text(TINY_STUDY)
    return open_study_file(tmp_path / "tiny.yaml", storage=f"sqlite:///{tmp_path / 'tiny.db'}")


def test_a_job_failing_unexpectedly_is_retried_then_failed_with_its_error(
    study: StudyFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = open_engine(study.storage)
    job, _ = request_research(engine, study.workload.name, parent_study="p", scenario="night", n_trials=1)
    calls: list[int] = []

    def broken(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        raise RuntimeError(f"a bug, call {len(calls)}")

    monkeypatch.setattr(jobs_module, "research", broken)
    lines: list[str] = []
    after = run_job(engine, study, job, heartbeat_interval=1, max_attempts=3, progress=lines.append)
    assert (after.state, after.attempts, after.holder) == ("queued", 1, None)
    assert after.message == "RuntimeError: a bug, call 1" and "attempt 1 of 3 failed" in lines[-1]
    after = run_job(engine, study, after, heartbeat_interval=1, max_attempts=3)
    after = run_job(engine, study, after, heartbeat_interval=1, max_attempts=3)
    assert (after.state, after.attempts) == ("failed", 3)
    assert after.message == "gave up after 3 attempts; the last: RuntimeError: a bug, call 3"
    assert run_job(engine, study, after, heartbeat_interval=1).state == "failed" and len(calls) == 3

    # A crash (no error recorded, the lease simply ran out) counts an attempt too.
    crashed, _ = request_research(engine, study.workload.name, parent_study="p", scenario="rain", n_trials=1)
    with engine.begin() as conn:
        conn.execute(sa.update(jobs).where(jobs.c.id == crashed.id).values(state="running", attempts=3,
                                                                            holder="dead:1:x", message=""))
    assert claim_job(engine, study.workload.name, "me", lease_seconds=60, max_attempts=3) is None
    given_up = next(j for j in list_jobs(engine, study.workload.name) if j.id == crashed.id)
    assert given_up.state == "failed" and "gave up after 3 attempts" in given_up.message
    assert "stopped without finishing" in given_up.message

    # A SearchmergeError is no passing trouble: the job fails at once.
    bad, _ = request_research(engine, study.workload.name, parent_study="p", scenario="fog", n_trials=1)
    monkeypatch.setattr(jobs_module, "research", lambda *a, **k: (_ for _ in ()).throw(SearchmergeError("no data")))
    failed = run_job(engine, study, bad, heartbeat_interval=1)
    assert (failed.state, failed.message, failed.attempts) == ("failed", "no data", 1)


def test_a_holder_that_lost_its_job_publishes_nothing(study: StudyFile, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = open_engine(study.storage)
    job, _ = request_research(engine, study.workload.name, parent_study="p", scenario="night", n_trials=1)
    published: list[object] = []

    def research(*args: Any, progress: Any, **kwargs: Any) -> object:
        with engine.begin() as conn:  # another service took the job over while this one stalled
            conn.execute(sa.update(jobs).where(jobs.c.id == job.id).values(holder="other:2:y"))
        for trial in range(50):
            progress(f"trial {trial} finished")  # the lease's renewal notices within a second
            threading.Event().wait(0.1)
        plan = SimpleNamespace(number=0, worst_ratio=1.0, saved_bytes=1)
        return SimpleNamespace(best=lambda: plan, ranked=lambda: [plan])

    monkeypatch.setattr(jobs_module, "research", research)
    monkeypatch.setattr(jobs_module, "publish", lambda *a, **k: published.append(a))
    lines: list[str] = []
    after = run_job(engine, study, job, heartbeat_interval=1, lease=1.5, progress=lines.append)
    assert not published and after.holder == "other:2:y" and after.state == "running"
    assert any("another process took it over" in line for line in lines)


def test_a_rollback_pins_its_version_until_unpinned(study: StudyFile, tmp_path: Path) -> None:
    engine = open_engine(study.storage)
    deployment = study.workload.name

    def publish(seed: int) -> int:
        files = files_of(make_version(tmp_path / f"v{seed}", seed=seed))
        return publish_files(engine, study, files, source_study="s", trial=seed, checkpoint="c").version

    publish(1), publish(2)
    rollback(engine, deployment, 1)
    assert current_version(engine, deployment).version == 1  # type: ignore[union-attr]
    third = publish(3)  # a re-search that finished after the rollback
    assert current_version(engine, deployment).version == 1  # type: ignore[union-attr]
    assert unpin(engine, deployment).version == third  # type: ignore[union-attr]


def test_the_preparation_lease_is_judged_by_the_database_clock_and_notices_a_takeover(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lease.db'}"
    told: list[str] = []
    with hold_lease(url, "prepare:x", seconds=0.9, say=told.append) as lease:
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            stored = conn.execute(sa.text(f"SELECT expires_at FROM {LEASE_TABLE}")).scalar()
            ahead = conn.execute(sa.text("SELECT :stored > strftime('%Y-%m-%d %H:%M:%f', 'now')"),
                                 {"stored": stored}).scalar()
            assert ahead  # written by the database's clock, ahead of it
            conn.execute(sa.text(f"UPDATE {LEASE_TABLE} SET holder = 'another:1:z'"))
        wait_for(lambda: lease.lost.is_set(), what="the renewal to notice")
        with pytest.raises(SearchmergeError, match="taken over by another worker"):
            lease.check()
    assert any("lost the lease 'prepare:x'" in line for line in told)
