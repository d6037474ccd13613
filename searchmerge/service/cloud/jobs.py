"""Re-search jobs: started when the samples show a drift, resumed after a restart, published once.

A job is a row naming the parent study (the current version's), the drift scenario and
the re-search study. Running it is :func:`searchmerge.search.research.research`, which is
resumable: a service killed mid-trial starts the same call again, Optuna's heartbeats
fail the trial the dead process left running, and the re-search continues from its
trials. Its best feasible plan is published through :func:`~searchmerge.service.cloud.versions.publish`,
which publishes a trial once, so a job killed between publishing and recording it
finds its version on the next run.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine, Row
from sqlalchemy.exc import IntegrityError

from searchmerge.config.study import StudyFile
from searchmerge.core.errors import SearchmergeError
from searchmerge.core.progress import Progress
from searchmerge.search.research import research
from searchmerge.service.cloud.db import jobs, now, utc
from searchmerge.service.cloud.versions import publish
from searchmerge.service.protocol import JobInfo
from searchmerge.service.signing import Signer

__all__ = ["PENDING", "list_jobs", "request_research", "run_job"]

#: States of a job that is still to run (or was running when its service died).
PENDING = ("queued", "running")


def _info(row: Row) -> JobInfo:
    return JobInfo(
        id=row.id, parent_study=row.parent_study, scenario=row.scenario, study_name=row.study_name, state=row.state,
        n_trials=row.n_trials, detected_at=utc(row.detected_at), started_at=row.started_at and utc(row.started_at),
        finished_at=row.finished_at and utc(row.finished_at), version=row.version, message=row.message or "",
    )


def list_jobs(engine: Engine, deployment: str, *, states: tuple[str, ...] | None = None) -> list[JobInfo]:
    """The deployment's jobs, oldest first (only those in ``states`` when given)."""
    query = sa.select(jobs).where(jobs.c.deployment == deployment).order_by(jobs.c.id)
    if states is not None:
        query = query.where(jobs.c.state.in_(states))
    with engine.connect() as conn:
        return [_info(row) for row in conn.execute(query).all()]


def request_research(
    engine: Engine, deployment: str, *, parent_study: str, scenario: str, n_trials: int
) -> tuple[JobInfo, bool]:
    """The job re-searching ``parent_study`` on ``scenario``: a new one, or the one that exists.

    Returns:
        The job, and whether this call created it.
    """
    values = dict(deployment=deployment, parent_study=parent_study, scenario=scenario,
                  study_name=f"{parent_study}-{scenario}", state="queued", n_trials=n_trials, detected_at=now(),
                  message="")
    created = True
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(jobs).values(**values))
    except IntegrityError:
        created = False  # detected before (perhaps by a service that died since)
    found = _find(engine, deployment, parent_study, scenario)
    return found, created


def _find(engine: Engine, deployment: str, parent_study: str, scenario: str) -> JobInfo:
    with engine.connect() as conn:
        row = conn.execute(sa.select(jobs).where(jobs.c.deployment == deployment, jobs.c.parent_study == parent_study,
                                                 jobs.c.scenario == scenario)).one()
    return _info(row)


def _update(engine: Engine, job_id: int, **values: object) -> None:
    with engine.begin() as conn:
        conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(**values))


def run_job(
    engine: Engine, study: StudyFile, job: JobInfo, *, heartbeat_interval: int = 10, progress: Progress | None = None,
    signer: Signer | None = None,
) -> JobInfo:
    """Run (or resume) a re-search job to its end and publish its best feasible plan.

    The job ends ``published`` (with its version), ``no-feasible-plan`` (its trials found
    none: more trials, with ``searchmerge research``, may) or ``failed`` (with the error).
    """
    say = progress or (lambda _line: None)
    if job.started_at is None:
        _update(engine, job.id, state="running", started_at=now())
    else:
        _update(engine, job.id, state="running")
        say(f"job {job.id}: resuming the re-search {job.study_name!r}")
    try:
        search = research(study, scenario=job.scenario, parent_study=job.parent_study, n_trials=job.n_trials,
                          study_name=job.study_name, heartbeat_interval=heartbeat_interval, progress=say)
        best = search.best()
        if best is None:
            _update(engine, job.id, state="no-feasible-plan", finished_at=now(),
                    message=f"{job.n_trials} trials found no feasible plan; run more with 'searchmerge research"
                    f" {study.path} --data {job.scenario} --from-study {job.parent_study} --n-trials N'")
        else:
            version = publish(engine, study, search, best, scenario=job.scenario, signer=signer)
            say(f"job {job.id}: published version {version.version} (trial {best.number} of {job.study_name!r}: worst"
                f" accuracy ratio {best.worst_ratio:.3f} on the re-search's validation data, saves"
                f" {best.saved_bytes / 1e6:.2f} MB)")
            _update(engine, job.id, state="published", finished_at=now(), version=version.version,
                    message=f"trial {best.number}")
    except SearchmergeError as exc:
        _update(engine, job.id, state="failed", finished_at=now(), message=str(exc))
    return _find(engine, study.workload.name, job.parent_study, job.scenario)
