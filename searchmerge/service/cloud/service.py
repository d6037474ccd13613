"""The merging service: versions for the edges, samples from them, re-search when they drift.

:class:`MergingService` owns the study's storage and one caretaker thread. The thread
runs pending re-search jobs (one at a time: each is a long retraining) and, between
them, the drift check on new samples; a model missing its target on its teacher-labelled
samples starts a job that re-searches on them (``samples:DEPLOYMENT``), no scenario named.
The HTTP API (:mod:`searchmerge.service.cloud.app`) only reads and writes rows. Everything
the service must remember is in the database, so :meth:`MergingService.start` after a kill
picks up the jobs that were pending.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import sqlalchemy as sa
from torch import nn

from searchmerge.config.study import StudyFile
from searchmerge.core.errors import SearchmergeError
from searchmerge.core.progress import Progress
from searchmerge.search.confirmation import confirmation_state
from searchmerge.search.drift_targets import study_val_baselines
from searchmerge.search.merge_search import deployed_plan
from searchmerge.search.scenarios import SAMPLES_PREFIX
from searchmerge.search.selection import select_search
from searchmerge.service.cloud.db import edges, now, open_engine, reading
from searchmerge.service.cloud.evidence import (
    DRIFT_EDGE_SHARE,
    DRIFT_MIN_EDGES,
    check_evidence_rule,
    weigh_evidence,
)
from searchmerge.service.cloud.jobs import (
    MAX_ATTEMPTS,
    MAX_JOBS_PER_HOUR,
    PENDING,
    find_job,
    jobs_started_within,
    list_jobs,
    request_research,
)
from searchmerge.service.cloud.labelling import MAX_SAMPLE_BYTES, Labeller
from searchmerge.service.cloud.monitor import SampleCheck, check_samples
from searchmerge.service.cloud.quotas import SampleQuota
from searchmerge.service.cloud.samples import (
    LabelledSample,
    count_samples,
    prune_samples,
    recent_samples,
    store_samples,
)
from searchmerge.service.cloud.versions import (
    ArtifactVerifier,
    current_version,
    list_versions,
    publish,
    write_version,
)
from searchmerge.service.cloud.worker import JobRunner
from searchmerge.service.footage import Footage
from searchmerge.service.protocol import (
    EdgeStats,
    SampleBatch,
    ServiceStatus,
    VersionInfo,
)
from searchmerge.service.signing import Signer
from searchmerge.training.deployment import load_deployment
from searchmerge.training.prepare import prepare_study

__all__ = ["RESEARCH_SAMPLES", "MergingService", "ServiceSettings"]

#: Samples of each missing model a re-search waits for: with the 0.6/0.2/0.2 split, about 300 to train
#: on (with as many original frames replayed) and 100 each to select and test on. Fewer made the
#: tiny digits study's re-search stop after a few optimiser steps with nothing learnt (a validation
#: split of 7 frames).
RESEARCH_SAMPLES = 512

_log = logging.getLogger("searchmerge.service")


class ServiceSettings:
    """How the service judges samples and re-searches.

    Args:
        parent_study: The search whose best plan is version 1 (default: the one with the best
            feasible plan, see :func:`~searchmerge.search.selection.select_search`).
        research_trials: Finished trials of each re-search.
        window: The newest samples per model the drift check reads.
        min_samples: Samples a model needs before it is judged.
        confidence: Of the Wilson interval whose upper end must miss the target.
        max_upload_bytes: The largest request body accepted (larger: 413).
        max_sample_bytes: The largest encoded frame of one sample (larger: 413).
        research_samples: Samples of each missing model (received since the current version, not held
            out for the publish gate) a re-search needs before it starts: it trains and judges on them.
        heartbeat_interval: Of the re-search's trials (a dead service's trial is retried after twice this).
        check_every: Seconds between drift checks while samples arrive.
        signing_key: The operator's private key (``searchmerge keys init``); every version published
            is signed with it. ``None``: versions are published unsigned, and only edges started
            with ``--allow-unsigned`` run them.
        job_attempts: Starts of a re-search job (a crash counts) before it is failed with its last error.
        samples_per_minute: Each edge's quota of samples (:mod:`~searchmerge.service.cloud.quotas`);
            an upload past it is refused with 429 and ``Retry-After``.
        drift_min_edges, drift_edge_share: The evidence a miss needs before it starts a re-search
            (:mod:`~searchmerge.service.cloud.evidence`): drifted samples from this many edges, or
            this share of one edge's samples (``None``: one edge never suffices).
        max_jobs_per_hour: Re-search jobs the deployment may start in an hour; a drift past it
            waits (and is logged once).
        run_jobs: Whether this service runs re-search jobs itself (``False`` when ``searchmerge
            worker`` processes run them).
    """

    def __init__(self, *, parent_study: str | None = None, research_trials: int = 10, window: int = 64,
                 min_samples: int = 32, confidence: float = 0.9, max_upload_bytes: int = 1 << 20,
                 heartbeat_interval: int = 10, check_every: float = 1.0, signing_key: Path | None = None,
                 job_attempts: int = MAX_ATTEMPTS, samples_per_minute: int = 600,
                 drift_min_edges: int = DRIFT_MIN_EDGES, drift_edge_share: float | None = DRIFT_EDGE_SHARE,
                 max_jobs_per_hour: int = MAX_JOBS_PER_HOUR, run_jobs: bool = True,
                 max_sample_bytes: int = MAX_SAMPLE_BYTES, research_samples: int = RESEARCH_SAMPLES) -> None:
        if research_trials < 1 or window < 1 or not 1 <= min_samples <= window or max_upload_bytes < 1:
            raise SearchmergeError("research trials, window and upload limit must be positive, and"
                                   f" 1 <= min-samples <= window (got {min_samples} and {window})")
        if not 0 < confidence < 1:
            raise SearchmergeError(f"confidence must be in (0, 1), got {confidence}")
        self.parent_study = parent_study
        self.research_trials = research_trials
        self.window = window
        self.min_samples = min_samples
        self.confidence = confidence
        self.max_upload_bytes = max_upload_bytes
        self.max_sample_bytes = max_sample_bytes  # checked by the Labeller
        if research_samples < 1:
            raise SearchmergeError(f"--research-samples must be at least 1, got {research_samples}")
        self.research_samples = research_samples
        self.heartbeat_interval = heartbeat_interval
        self.check_every = check_every
        self.signing_key = signing_key
        if job_attempts < 1:
            raise SearchmergeError(f"job attempts must be at least 1, got {job_attempts}")
        self.job_attempts = job_attempts
        if samples_per_minute < 1:
            raise SearchmergeError(f"the sample quota must be at least 1 a minute, got {samples_per_minute}")
        self.samples_per_minute = samples_per_minute
        check_evidence_rule(drift_min_edges, drift_edge_share)
        self.drift_min_edges = drift_min_edges
        self.drift_edge_share = drift_edge_share
        if max_jobs_per_hour < 1:
            raise SearchmergeError(f"--max-jobs-per-hour must be at least 1, got {max_jobs_per_hour}")
        self.max_jobs_per_hour = max_jobs_per_hour
        self.run_jobs = run_jobs


class MergingService:
    """The service of one study file's deployment (its workload's name).

    Example:
        >>> service = MergingService(open_study_file("studies/digits-edge.yaml"))  # doctest: +SKIP
        >>> service.start()  # publishes version 1 if there is none, resumes pending jobs  # doctest: +SKIP
    """

    def __init__(self, study: StudyFile, settings: ServiceSettings | None = None, *,
                 progress: Progress | None = None) -> None:
        self.study = study
        self.settings = settings or ServiceSettings()
        self.deployment = study.workload.name
        self.engine = open_engine(study.storage)
        self.signer = Signer.load(self.settings.signing_key) if self.settings.signing_key is not None else None
        self.artifacts = ArtifactVerifier(self.engine, study)  # a version's files are checked before they are served
        self.jobs = JobRunner(study, self.engine, heartbeat_interval=self.settings.heartbeat_interval,
                              job_attempts=self.settings.job_attempts, signer=self.signer, say=self.say)
        self.quota = SampleQuota(per_minute=self.settings.samples_per_minute)
        self.labeller = Labeller(study, max_sample_bytes=self.settings.max_sample_bytes)
        self._progress = progress
        self.last_check: SampleCheck | None = None
        self._last_note = ""
        self._day_baselines: dict[str, float] | None = None
        self._baselines: tuple[int, dict[str, float]] | None = None
        self._loaded: tuple[int, dict[str, nn.Module]] | None = None
        #: Per version, whether its model got each sample of the window right (the check scores only new samples).
        self._verdicts: dict[int, dict[int, bool]] = {}
        self._samples_arrived = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def footage(self) -> Footage:
        """The digits generator's footage, which labels the samples of a digits study by their provenance."""
        return self.labeller.footage

    def say(self, line: str, level: int = logging.INFO) -> None:
        """Log ``line`` on the ``searchmerge.service`` logger (with its time and level), and pass it to
        ``progress`` when the service was given one."""
        _log.log(level, line)
        if self._progress is not None:
            self._progress(line)

    # ------------------------------------------------------------------ lifecycle
    def publish_first(self) -> VersionInfo:
        """The current version; version 1 (the parent search's best feasible plan) is published first if none is."""
        current = current_version(self.engine, self.deployment)
        if current is None:
            search = select_search(self.study, self.settings.parent_study, progress=self.say)
            best = deployed_plan(search)
            current = publish(self.engine, self.study, search, best, signer=self.signer)
            confirmed = {True: "confirmed by full retraining", False: "FAILED confirmation by full retraining",
                         None: "not confirmed"}[confirmation_state(search, best.number)]
            self.say(f"published version {current.version}: trial {best.number} of {search.study_name!r} (worst"
                     f" accuracy ratio {best.worst_ratio:.3f}, saves {best.saved_bytes / 1e6:.2f} MB, {confirmed})")
        self._check_signed(current)
        return current

    def _check_signed(self, current: VersionInfo) -> None:
        """Warn when the edges that check signatures would refuse the current version."""
        if self.signer is None:
            self.say("no signing key (--signing-key): versions are published unsigned, and edges run them only with"
                     " --allow-unsigned; make a key with 'searchmerge keys init'", logging.WARNING)
        elif current.signed_by != self.signer.key_id:
            self.say(f"version {current.version} is not signed by key {self.signer.key_id}: edges that trust it refuse"
                     f" the version; sign it with 'searchmerge keys sign {self.study.path} --signing-key KEYFILE'",
                     logging.WARNING)

    def start(self) -> VersionInfo:
        """:meth:`publish_first`, then start the caretaker thread (it resumes pending jobs); the current version."""
        current = self.publish_first()
        pending = list_jobs(self.engine, self.deployment, states=PENDING)
        if pending:
            held = [job for job in pending if job.holder is not None]
            self.say(f"{len(pending)} re-search job(s) pending: resuming"
                     + (f" (held by {', '.join(sorted({j.holder for j in held if j.holder}))} until their lease ends)"
                        if held else ""))
        self._thread = threading.Thread(target=self._caretake, name="searchmerge-caretaker", daemon=True)
        self._thread.start()
        return current

    def stop(self) -> None:
        """Ask the caretaker to stop after its current step (a running re-search trial is resumed on restart)."""
        self._stop.set()
        self._samples_arrived.set()

    # ------------------------------------------------------------------ requests
    def store_samples(self, edge: str, batch: SampleBatch) -> int:
        """Label and store an edge's samples, within its quota.

        Raises:
            QuotaExceeded: If the upload would take the edge past its quota (nothing is stored).
            SampleTooLarge: If a sample's frame is over the size limit (nothing is stored).
            SearchmergeError: If a sample cannot be labelled, or is of a model the edge does not run (nothing
                is stored).
        """
        self.quota.take(edge, len(batch.samples))
        stored = store_samples(self.engine, self.deployment, edge, batch, self.labeller, runs=self._runs(edge))
        self._samples_arrived.set()
        return stored

    def _runs(self, edge: str) -> set[str] | None:
        """The models ``edge`` reported running (its streams' models); ``None`` before it reported any."""
        with reading(self.engine) as conn:  # every upload asks: no transaction round trips
            reported = conn.execute(sa.select(edges.c.stats_json).where(
                edges.c.deployment == self.deployment, edges.c.name == edge)).scalar()
        streams = EdgeStats.model_validate_json(reported).streams if reported else {}
        return {stream.model for stream in streams.values()} if streams else None

    def record_stats(self, edge: str, stats: EdgeStats) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.update(edges).where(edges.c.deployment == self.deployment, edges.c.name == edge)
                         .values(last_seen=now(), stats_json=stats.model_dump_json()))

    def status(self) -> ServiceStatus:
        current = current_version(self.engine, self.deployment)
        return ServiceStatus(
            deployment=self.deployment, current=current.version if current else None,
            versions=list_versions(self.engine, self.deployment), jobs=list_jobs(self.engine, self.deployment),
            check=self.last_check.to_dict() if self.last_check else None,
        )

    # ------------------------------------------------------------------ caretaker
    def _caretake(self) -> None:
        while not self._stop.is_set():
            try:
                if self.settings.run_jobs and self.jobs.run_next() is not None:
                    continue  # a job nobody else ran (or whose holder died) ran here; look for the next
                if self._samples_arrived.wait(self.settings.check_every):
                    self._samples_arrived.clear()
                    self.check()
            except Exception:  # noqa: BLE001 - the caretaker must outlive one bad step; the error is logged
                _log.exception("the caretaker's step failed; trying again")
                self._stop.wait(self.settings.check_every)

    def check(self) -> SampleCheck | None:
        """The drift check of the current version on the recent samples; starts a re-search when one misses."""
        current = current_version(self.engine, self.deployment)
        if current is None:
            return None
        # The samples held out for the publish gate are not read here: what decides a re-search never judges its plan.
        recent = recent_samples(self.engine, self.deployment, since=current.created_at, window=self.settings.window,
                                held_out=False)
        verdicts = self._verdicts.get(current.version, {})
        check = check_samples(current.version, self._models(current), recent, self._baseline_accuracies(current),
                              self.study.settings.target, min_samples=self.settings.min_samples,
                              confidence=self.settings.confidence, verdicts=verdicts)
        # Only this window's verdicts can be asked for again (windows only move forward), and only this version's.
        window_ids = {sample.id for found in recent.values() for sample in found}
        self._verdicts = {current.version: {id_: right for id_, right in verdicts.items() if id_ in window_ids}}
        self.last_check = check
        # Kept: the check's windows, and the samples a re-search trains and judges on.
        prune_samples(self.engine, self.deployment, keep=max(4 * self.settings.window, 2 * self.settings.research_samples))
        if check.missing:
            names = "; ".join(m.describe() for m in check.missing)
            # What the cameras saw, as the teacher labelled it, is what to re-search on: no scenario is named.
            data = f"{SAMPLES_PREFIX}{self.deployment}"
            if not self._may_start(current, check, recent, names, data):
                return check
            job, created = request_research(self.engine, self.deployment, parent_study=current.source_study,
                                            scenario=data, n_trials=self.settings.research_trials)
            if created:
                self.say(f"drift detected on version {current.version} in its labelled samples ({names});"
                         f" re-search job {job.id} ({job.study_name!r}) on them started", logging.WARNING)
        return check

    def _may_start(self, current: VersionInfo, check: SampleCheck, recent: Mapping[str, Sequence[LabelledSample]],
                   names: str, data: str) -> bool:
        """Whether the miss of ``check`` may start its re-search on ``data``: enough edges saw the drift, and
        the deployment is within its jobs per hour (a job that exists already is always found again)."""
        if find_job(self.engine, self.deployment, parent_study=current.source_study, scenario=data):
            return True
        have = count_samples(self.engine, self.deployment, since=current.created_at)
        short = {m.name: have.get(m.name, 0) for m in check.missing if have.get(m.name, 0) < self.settings.research_samples}
        if short:
            counts = ", ".join(f"{name}: {count}" for name, count in sorted(short.items()))
            self._note(f"version {current.version}: models miss the target in the samples; the re-search waits for"
                       f" {self.settings.research_samples} samples of each to train and judge on",
                       detail=f"{counts} so far; {names}")
            return False
        evidence = weigh_evidence(recent, (m.name for m in check.missing), None,
                                  min_edges=self.settings.drift_min_edges, edge_share=self.settings.drift_edge_share)
        if not evidence.enough:
            self._note(f"version {current.version}: {', '.join(m.name for m in check.missing)} miss(es) the target in"
                       " the samples, but too few edges sent them to re-search yet",
                       detail=f"{evidence.describe()}; {names}")
            return False
        started = jobs_started_within(self.engine, self.deployment, 3600)
        if started >= self.settings.max_jobs_per_hour:
            self._note(f"version {current.version}: drift in the samples, but deployment {self.deployment!r}"
                       f" started {self.settings.max_jobs_per_hour} re-search job(s) in the last hour"
                       " (--max-jobs-per-hour); it starts when the hour allows", detail=names)
            return False
        return True

    def _note(self, line: str, *, detail: str) -> None:
        """Say ``line`` (with ``detail``) once, not at every check that finds the same."""
        if line != self._last_note:
            self._last_note = line
            self.say(f"{line} ({detail})", logging.WARNING)

    def _models(self, version: VersionInfo) -> dict[str, nn.Module]:
        """The version's models as the edges run them (loaded from its published files)."""
        if self._loaded is None or self._loaded[0] != version.version:
            with tempfile.TemporaryDirectory(prefix="searchmerge-version-") as folder:
                directory = write_version(self.engine, self.study, version.version, Path(folder))
                self._loaded = (version.version, load_deployment(directory).models)
        return self._loaded[1]

    def _baseline_accuracies(self, version: VersionInfo) -> dict[str, float]:
        """What each model of ``version`` is judged against: its original's validation accuracy, or the
        baseline the study it was found by recorded on drifted data (``drift_baseline: reachable``)."""
        if self._day_baselines is None:
            self._day_baselines = {name: b.val_accuracy for name, b in prepare_study(self.study).baselines.items()}
        if self._baselines is None or self._baselines[0] != version.version:
            recorded = study_val_baselines(self.study.storage, version.source_study)
            self._baselines = (version.version, {**self._day_baselines, **recorded})
        return self._baselines[1]
