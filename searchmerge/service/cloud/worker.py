"""Running re-search jobs, inside ``searchmerge serve`` or in ``searchmerge worker`` processes.

A re-search is a long retraining, so one service box caps how much of it a fleet gets. The
jobs are rows of the study's database and each is claimed before it runs
(:mod:`~searchmerge.service.cloud.jobs`: a lease of the database's clock, ``FOR UPDATE SKIP
LOCKED`` on PostgreSQL), so any number of processes sharing that database and the blob
store can run them, each job once: the service's caretaker thread (unless ``serve
--no-jobs``), and ``searchmerge worker`` processes on other machines, which serve no HTTP
and check no drift. :class:`JobRunner` is what both run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy.engine import Engine

from searchmerge.config.study import StudyFile
from searchmerge.service.cloud.db import open_engine
from searchmerge.service.cloud.jobs import (
    MAX_ATTEMPTS,
    claim_job,
    holder_name,
    lease_seconds,
    run_job,
)
from searchmerge.service.cloud.versions import pinned_version
from searchmerge.service.protocol import JobInfo
from searchmerge.service.signing import Signer

__all__ = ["JobRunner", "run_worker"]

_log = logging.getLogger("searchmerge.service")

#: Says a line at a level (the service's ``say``).
Say = Callable[[str, int], None]


def _log_line(line: str, level: int = logging.INFO) -> None:
    _log.log(level, line)


class JobRunner:
    """Claims the oldest free re-search job of a study's deployment and runs it to its end.

    Args:
        heartbeat_interval: Of the re-search's trials; the claim's lease is three of them.
        job_attempts: Starts of a job (a crash counts) before it is failed with its last error.
        signer: Signs the version a job publishes (``None``: unsigned).
        say: Where the runner's lines go (default: the ``searchmerge.service`` logger).
    """

    def __init__(self, study: StudyFile, engine: Engine, *, heartbeat_interval: int = 10,
                 job_attempts: int = MAX_ATTEMPTS, signer: Signer | None = None, say: Say = _log_line) -> None:
        self.study = study
        self.engine = engine
        self.deployment = study.workload.name
        self.heartbeat_interval = heartbeat_interval
        self.job_attempts = job_attempts
        self.signer = signer
        self.holder = holder_name()  # this process, as the holder of the jobs it claims
        self._say = say

    def run_next(self) -> JobInfo | None:
        """Claim and run one job; the job as it ended, or ``None`` when no job was free."""
        claimed = claim_job(self.engine, self.deployment, self.holder, max_attempts=self.job_attempts,
                            lease_seconds=lease_seconds(self.heartbeat_interval))
        if claimed is None:
            return None
        job = run_job(self.engine, self.study, claimed, heartbeat_interval=self.heartbeat_interval,
                      progress=lambda line: self._say(line, logging.INFO), signer=self.signer, holder=self.holder,
                      max_attempts=self.job_attempts)
        self._say(f"job {job.id} ({job.study_name!r}): {job.state} {job.message}".rstrip(),
                  logging.INFO if job.state == "published" else logging.WARNING)
        pinned = pinned_version(self.engine, self.deployment)
        if job.state == "published" and pinned is not None and pinned != job.version:
            self._say(f"version {pinned} is pinned by a rollback: edges stay on it, not on version {job.version},"
                      f" until 'searchmerge unpin {self.study.path}'", logging.WARNING)
        return job


def run_worker(study: StudyFile, *, heartbeat_interval: int = 10, job_attempts: int = MAX_ATTEMPTS,
               signer: Signer | None = None, poll: float = 2.0, stop: threading.Event | None = None) -> None:
    """Run the deployment's re-search jobs as they come, until ``stop`` is set (or the process is stopped).

    Between jobs the database is asked every ``poll`` seconds for a free one. An error of one
    round (the database away a moment) is logged and the round tried again.
    """
    stop = stop or threading.Event()
    runner = JobRunner(study, open_engine(study.storage), heartbeat_interval=heartbeat_interval,
                       job_attempts=job_attempts, signer=signer)
    _log.info(f"worker {runner.holder}: running the re-search jobs of deployment {runner.deployment!r}"
              f" (asking for one every {poll:g} s)")
    while not stop.is_set():
        try:
            if runner.run_next() is not None:
                continue
        except Exception:  # noqa: BLE001 - a worker outlives one bad round; the error is logged
            _log.exception("the worker's round failed; trying again")
        stop.wait(poll)
