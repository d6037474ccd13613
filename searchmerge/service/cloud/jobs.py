"""Re-search jobs: started when the samples show a drift, resumed after a restart, published once.

A job is a row naming the parent study (the current version's), the drift scenario and
the re-search study. Running it is :func:`searchmerge.search.research.research`, which is
resumable: a service killed mid-trial starts the same call again, Optuna's heartbeats
fail the trial the dead process left running, and the re-search continues from its
trials. Its best feasible plan is published through :func:`~searchmerge.service.cloud.versions.publish`,
which publishes a trial once, so a job killed between publishing and recording it
finds its version on the next run.

**Claiming.** Several services (or processes) may share one database; each job runs in one
of them at a time. A process *claims* a job (:func:`claim_job`): on PostgreSQL it picks the
oldest free job with ``SELECT ... FOR UPDATE SKIP LOCKED`` (two claimers never wait on, or
both take, one row), and on any database the claim is a lease written in one conditional
UPDATE: the job's ``holder`` and ``lease_expires_at``, a time of the *database's* clock, so
skewed clocks between machines do not matter. The holder renews the lease while it works;
a renewal that updates no row means another process took the job over, and the holder stops
(its re-search is interrupted at the next step, and it publishes nothing). A holder that
dies stops renewing; once the lease has expired another process claims the job, and the
re-search resumes from its trials.

**Attempts.** Each claim counts an attempt, so a crash counts one. A job whose run fails with
an error it does not expect (a bug, a lost database connection) goes back to the queue with
that error as its message; one that has been started ``max_attempts`` times is failed with
its last error instead of being tried for ever. A :class:`~searchmerge.core.errors.SearchmergeError`
(bad data, a study that cannot be re-searched) fails the job at once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine, Row
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from searchmerge.config.study import StudyFile
from searchmerge.core.errors import SearchmergeError
from searchmerge.core.progress import Progress
from searchmerge.search.merge_search import MergeSearch, TrialSummary
from searchmerge.search.research import research
from searchmerge.service.cloud.db import db_later, db_now, jobs, now, utc
from searchmerge.service.cloud.gate import GATE_MIN_SAMPLES, check_held_out
from searchmerge.service.cloud.versions import current_version, list_versions, publish
from searchmerge.service.protocol import JobInfo
from searchmerge.service.signing import Signer

__all__ = [
    "MAX_ATTEMPTS",
    "MAX_JOBS_PER_HOUR",
    "PENDING",
    "JobLost",
    "claim_job",
    "find_job",
    "holder_name",
    "jobs_started_within",
    "lease_seconds",
    "list_jobs",
    "request_research",
    "requeue_job",
    "run_job",
]

#: States of a job that is still to run (or was running when its service died).
PENDING = ("queued", "running")
#: States of a job that ended without a version, and that an operator may ask to run again.
REQUEUABLE = ("held-back", "no-feasible-plan", "failed")

_log = logging.getLogger("searchmerge.service")
#: Starts of a job (a crash counts) after which it is failed with its last error.
MAX_ATTEMPTS = 3
#: Re-search jobs a deployment may start in an hour (see :func:`jobs_started_within`).
MAX_JOBS_PER_HOUR = 2


class JobLost(Exception):
    """The holder's lease on a job was taken over (its renewal updated no row): stop working on it."""


def lease_seconds(heartbeat_interval: float) -> float:
    """How long a job's claim lasts without renewal: three of the re-search's heartbeats (at least
    3 s), so a dead holder's job is taken over about as soon as Optuna fails its trial."""
    return max(3.0 * heartbeat_interval, 3.0)


def holder_name() -> str:
    """A name for this process as a job's holder: host, process id and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _info(row: Row) -> JobInfo:
    return JobInfo(
        id=row.id, parent_study=row.parent_study, scenario=row.scenario, study_name=row.study_name, state=row.state,
        n_trials=row.n_trials, detected_at=utc(row.detected_at), started_at=row.started_at and utc(row.started_at),
        finished_at=row.finished_at and utc(row.finished_at), version=row.version, message=row.message or "",
        attempts=row.attempts or 0, holder=row.holder,
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


def requeue_job(engine: Engine, deployment: str, job_id: int, *, n_trials: int | None = None) -> JobInfo:
    """Queue an ended job again (``searchmerge jobs STUDY --requeue J``): the only way a drift is re-searched twice.

    A held-back job is not retried by itself (one job per parent study and data, see
    :func:`request_research`); once the edges have sent more samples, the operator asks again.
    The service or a worker then claims it, resumes its re-search (trials up to ``n_trials``:
    raise it for more) and puts its best plan to the publish gate once more.

    Raises:
        SearchmergeError: If the deployment has no job ``job_id``, or the job has not ended
            without a version (:data:`REQUEUABLE`).
    """
    if n_trials is not None and n_trials < 1:
        raise SearchmergeError(f"--n-trials must be at least 1, got {n_trials}")
    with engine.connect() as conn:
        row = conn.execute(sa.select(jobs).where(jobs.c.deployment == deployment, jobs.c.id == job_id)).first()
    if row is None:
        raise SearchmergeError(f"deployment {deployment!r} has no job {job_id} (list them with 'searchmerge jobs')")
    job = _info(row)
    if job.state not in REQUEUABLE:
        raise SearchmergeError(f"job {job_id} is {job.state}; only a job that is {', '.join(REQUEUABLE)} can be"
                               " queued again")
    values: dict[str, object] = {"state": "queued", "attempts": 0, "finished_at": None, "holder": None,
                                 "lease_expires_at": None, "message": ""}
    if n_trials is not None:
        values["n_trials"] = n_trials
    with engine.begin() as conn:  # only if nobody re-queued it meanwhile
        conn.execute(sa.update(jobs).where(jobs.c.id == job_id, jobs.c.state == job.state).values(**values))
    return _get(engine, job_id)


def _find(engine: Engine, deployment: str, parent_study: str, scenario: str) -> JobInfo:
    found = find_job(engine, deployment, parent_study=parent_study, scenario=scenario)
    assert found is not None  # inserted, or found inserted by another service; jobs are never deleted
    return found


def find_job(engine: Engine, deployment: str, *, parent_study: str, scenario: str) -> JobInfo | None:
    """The job re-searching ``parent_study`` on ``scenario``, if one was started."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(jobs).where(jobs.c.deployment == deployment, jobs.c.parent_study == parent_study,
                                                 jobs.c.scenario == scenario)).first()
    return None if row is None else _info(row)


def jobs_started_within(engine: Engine, deployment: str, seconds: float) -> int:
    """How many of the deployment's jobs were detected in the last ``seconds``.

    Counted from the database, so every service sharing it applies one limit per deployment;
    the rows' times are written by the services' clocks, which an hour's window tolerates.
    """
    since = now() - timedelta(seconds=seconds)
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(jobs)
                                .where(jobs.c.deployment == deployment, jobs.c.detected_at >= since)).scalar() or 0)


def _update(engine: Engine, job_id: int, **values: object) -> None:
    with engine.begin() as conn:
        conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(**values))


def _free(engine: Engine) -> sa.ColumnElement[bool]:
    """A job nobody holds, or whose holder's lease has expired (by the database's clock)."""
    return sa.or_(jobs.c.holder.is_(None), jobs.c.lease_expires_at.is_(None), jobs.c.lease_expires_at < db_now(engine))


def claim_job(
    engine: Engine, deployment: str, holder: str, *, lease_seconds: float, max_attempts: int = MAX_ATTEMPTS,
    job_id: int | None = None,
) -> JobInfo | None:
    """Claim the oldest pending job of ``deployment`` that nobody holds (or ``job_id``); ``None`` if there is none.

    The claim counts an attempt. A job already started ``max_attempts`` times is failed with its
    last error instead (and the next one is tried).
    """
    while True:
        with engine.begin() as conn:
            query = (sa.select(jobs.c.id, jobs.c.attempts, jobs.c.message)
                     .where(jobs.c.deployment == deployment, jobs.c.state.in_(PENDING), _free(engine))
                     .order_by(jobs.c.id).limit(1))
            if job_id is not None:
                query = query.where(jobs.c.id == job_id)
            if engine.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            row = conn.execute(query).first()
            if row is None:
                return None
            attempts = row.attempts or 0
            if attempts >= max_attempts:
                last = row.message or "the process running it stopped without finishing (killed?)"
                conn.execute(sa.update(jobs).where(jobs.c.id == row.id).values(
                    state="failed", finished_at=now(), holder=None, lease_expires_at=None,
                    message=f"gave up after {attempts} attempts; the last: {last}"))
                continue
            taken = conn.execute(
                sa.update(jobs).where(jobs.c.id == row.id, jobs.c.state.in_(PENDING), _free(engine))
                .values(holder=holder, lease_expires_at=db_later(engine, lease_seconds), attempts=attempts + 1,
                        state="running", started_at=sa.func.coalesce(jobs.c.started_at, now()))
            ).rowcount
        if taken == 1:
            return _get(engine, row.id)
        if job_id is not None:
            return None  # another process claimed it first


def _get(engine: Engine, job_id: int) -> JobInfo:
    with engine.connect() as conn:
        return _info(conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).one())


class _Lease:
    """Renews a job's lease every third of its length in a thread; notices when it was taken over."""

    def __init__(self, engine: Engine, job_id: int, holder: str, seconds: float) -> None:
        self.engine, self.job_id, self.holder, self.seconds = engine, job_id, holder, seconds
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"searchmerge-job-{job_id}-lease", daemon=True)

    def __enter__(self) -> _Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def renew(self) -> None:
        """Extend the lease; a renewal that updates no row means the job is someone else's now."""
        with self.engine.begin() as conn:
            renewed = conn.execute(
                sa.update(jobs).where(jobs.c.id == self.job_id, jobs.c.holder == self.holder)
                .values(lease_expires_at=db_later(self.engine, self.seconds))
            ).rowcount
        if renewed != 1:
            self.lost.set()

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 3) and not self.lost.is_set():
            try:
                self.renew()
            except SQLAlchemyError:
                continue  # a passing database error: the next renewal tries again before the lease expires

    def check(self) -> None:
        if self.lost.is_set():
            raise JobLost(f"job {self.job_id}: another process took it over (this holder's lease renewal"
                          " updated no row)")


def _gated(
    engine: Engine, deployment: str, job: JobInfo, search: MergeSearch, ranked: list[TrialSummary], min_samples: int,
    say: Progress,
) -> tuple[TrialSummary | None, str | None]:
    """The plan to publish, or ``None`` and why none may be.

    The job's feasible plans are tried best first (``ranked``), and the first that passes the publish
    gate is published: a re-search's best plan is the one most likely to have passed its small
    validation split by luck (on the campus loop its 18-group plan passed at 0.945 there and scored
    0.849 held out), and a plan saving a little less that holds is worth more to the edge than
    keeping a version that misses. Every plan tried is judged on the same held-out samples, so the
    more plans are tried the likelier one passes by luck; ``accept: lower-bound`` bounds that. A
    refusal of each plan tried is one WARNING line with the numbers: each model's held-out samples,
    its ratio there, and which missed or could not be judged (and how many samples the gate needs).
    """
    current = current_version(engine, deployment)
    if current is None:
        return ranked[0], None  # nothing to keep: version 1 is the parent search's, confirmed by the operator
    published = {v.trial for v in list_versions(engine, deployment)
                 if v.source_study == job.study_name == search.study_name}
    for trial in ranked:
        if trial.number in published:
            # Published by an attempt of this job killed before it recorded that: it passed the gate then
            # (the samples since its own version are not the ones it was judged on).
            say(f"job {job.id}: trial {trial.number} of {search.study_name!r} was published before; the gate passed"
                " it then")
            return trial, None
    refusals = []
    for trial in ranked:
        verdict = check_held_out(engine, search, trial, since=current.created_at, min_samples=min_samples)
        refusal = verdict.refusal
        if refusal is None:
            say(f"job {job.id}: publish gate passed: {verdict.describe()}")
            return trial, None
        _log.warning("job %d: trial %d not published, version %d kept: %s: %s", job.id, trial.number, current.version,
                     refusal, verdict.describe())
        if not verdict.judged:  # the same samples judge every plan: none of them can be judged either
            return None, (f"trial {trial.number}: {refusal} since version {current.version}; version"
                          f" {current.version} is kept. The drift check does not start this job again: re-queue it"
                          " once the edges have sent more samples"
                          f" ('searchmerge jobs {search.study_file.path} --requeue {job.id}')")
        refusals.append(refusal)
    tried = f"none of the {len(ranked)} feasible plans holds on held-out samples: " if len(ranked) > 1 else ""
    return None, (f"{tried}{'; '.join(refusals)}; version {current.version} is kept (more trials: 'searchmerge jobs"
                  f" {search.study_file.path} --requeue {job.id} --n-trials N')")


def _finish(engine: Engine, job_id: int, holder: str, **values: object) -> bool:
    """Record the end of a run, only if ``holder`` still holds the job; whether it did."""
    with engine.begin() as conn:
        return conn.execute(
            sa.update(jobs).where(jobs.c.id == job_id, jobs.c.holder == holder)
            .values(holder=None, lease_expires_at=None, **values)
        ).rowcount == 1


def run_job(
    engine: Engine, study: StudyFile, job: JobInfo, *, heartbeat_interval: int = 10, progress: Progress | None = None,
    signer: Signer | None = None, holder: str | None = None, max_attempts: int = MAX_ATTEMPTS,
    lease: float | None = None, gate_min_samples: int = GATE_MIN_SAMPLES,
) -> JobInfo:
    """Run (or resume) a re-search job to its end and publish its best feasible plan that holds.

    A plan is published only if it passes the publish gate (:mod:`~searchmerge.service.cloud.gate`):
    at least one model has ``gate_min_samples`` (at least 1) of the samples held out from the drift
    check since the current version, and every model that has them meets its target on them. The
    feasible plans are tried best first, and the first that passes is published. Otherwise (each
    misses, or no model could be judged) the job ends ``held-back``, the current version stays, a
    WARNING line per plan tried gives the numbers, and the job's message says why. The drift
    check does not start a held-back job again; re-queued by hand, it is judged anew.

    The job is claimed first (by ``holder``, default: this process) unless ``holder`` holds it
    already; a job another process holds, or that is not pending, is returned as it is. It ends
    ``published`` (with its version), ``held-back`` (the gate refused it), ``no-feasible-plan`` (its trials found none: more trials,
    with ``searchmerge research``, may), ``failed`` (with the error), or back in the queue after
    an unexpected error (``queued``, see the module's notes on attempts).

    Args:
        lease: Seconds a claim lasts without renewal (default: :func:`lease_seconds`).
    """
    say = progress or (lambda _line: None)
    seconds = lease if lease is not None else lease_seconds(heartbeat_interval)
    deployment = study.workload.name
    if holder is None or job.holder != holder:
        holder = holder or holder_name()
        claimed = claim_job(engine, deployment, holder, lease_seconds=seconds, max_attempts=max_attempts,
                            job_id=job.id)
        if claimed is None:
            return _get(engine, job.id)
        job = claimed
    if job.attempts > 1:
        say(f"job {job.id}: resuming the re-search {job.study_name!r} (attempt {job.attempts} of {max_attempts})")
    with _Lease(engine, job.id, holder, seconds) as held:

        def checked(line: str) -> None:
            held.check()
            say(line)

        try:
            search = research(study, scenario=job.scenario, parent_study=job.parent_study, n_trials=job.n_trials,
                              study_name=job.study_name, heartbeat_interval=heartbeat_interval, progress=checked)
            held.check()
            ranked = search.ranked()
            best: TrialSummary | None = None
            refusal: str | None = None
            if ranked:
                best, refusal = _gated(engine, deployment, job, search, ranked, gate_min_samples, say)
            if not ranked:
                _finish(engine, job.id, holder, state="no-feasible-plan", finished_at=now(),
                        message=f"{job.n_trials} trials found no feasible plan; run more with 'searchmerge research"
                        f" {study.path} --data {job.scenario} --from-study {job.parent_study} --n-trials N'")
            elif best is None:
                _finish(engine, job.id, holder, state="held-back", finished_at=now(), message=refusal)
            else:
                held.renew()
                held.check()  # publish only while this process holds the job
                version = publish(engine, study, search, best, scenario=job.scenario, signer=signer)
                say(f"job {job.id}: published version {version.version} (trial {best.number} of {job.study_name!r}:"
                    f" worst accuracy ratio {best.worst_ratio:.3f} on the re-search's validation data, saves"
                    f" {best.saved_bytes / 1e6:.2f} MB)")
                _finish(engine, job.id, holder, state="published", finished_at=now(), version=version.version,
                        message=f"trial {best.number}")
        except JobLost as exc:
            say(f"{exc}; stopped")
        except SearchmergeError as exc:
            _finish(engine, job.id, holder, state="failed", finished_at=now(), message=str(exc))
        except Exception as exc:  # noqa: BLE001 - counted as an attempt; the job is tried again, or failed
            error = f"{type(exc).__name__}: {exc}"
            if job.attempts >= max_attempts:
                _finish(engine, job.id, holder, state="failed", finished_at=now(),
                        message=f"gave up after {job.attempts} attempts; the last: {error}")
            else:
                _finish(engine, job.id, holder, state="queued", message=error)
            say(f"job {job.id}: attempt {job.attempts} of {max_attempts} failed: {error}")
    return _get(engine, job.id)

