"""The edge agent: serves the current version on its streams, samples, reports, and switches versions.

Two threads share the work. The **serving loop** ticks at the streams' frame rate and runs
every stream's frame through the version being served (``/healthz`` and the Prometheus
metrics tell how it goes); a frame not started within one frame interval of its arrival
is dropped and counted. It writes each prediction as a JSON line and keeps every N-th
frame of a stream with provenance as a sample. The **sync thread** polls the service:
it downloads a new version into the agent's own folder (verified before it is kept),
prepares it beside the one serving (only tensors that changed are copied to the device)
and hands it over; the serving loop switches between two frames. It also uploads the
samples and the agent's statistics. When the service cannot be reached the serving
loop carries on, and the sync thread retries with exponential backoff; samples wait in
a bounded queue.

A version that fails its checksum, or does not load, is refused: the old one keeps
serving. A refusal is remembered by the version's digests: a version whose verified bytes
were refused is not downloaded again (until the agent restarts), and one whose download
did not match is tried again only after a growing wait. The agent restarts on the version
``current.json`` names (see :mod:`searchmerge.service.edge.local`), checked again as it loads.

The sync thread never dies of an error: whatever one round raises (no answer, a page that
is not the API's, a body that does not decode, a full disk, a bug) is logged, counted and
retried with capped exponential backoff and jitter. ``/healthz`` tells the thread's state
and the age of the last successful poll, and answers 503 once that is older than
``stale_after`` (or the thread is gone).
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from searchmerge.config.data_request import model_request
from searchmerge.config.settings import StudySettings
from searchmerge.core.errors import SearchmergeError
from searchmerge.core.progress import Progress
from searchmerge.data.sources.base import pixels_of
from searchmerge.data.sources.video import CameraDrift
from searchmerge.search.scenarios import known_scenarios
from searchmerge.service.edge.client import (
    BadAnswer,
    RateLimited,
    ServiceClient,
    ServiceUnreachable,
    TamperedArtifact,
)
from searchmerge.service.edge.local import LocalVersions
from searchmerge.service.edge.metrics import EdgeMetrics, serve_metrics
from searchmerge.service.edge.predictions import PredictionLog
from searchmerge.service.edge.serving import ServingVersion
from searchmerge.service.edge.streams import CameraStream, DigitsStream, FolderStream
from searchmerge.service.edge.trust import TrustPolicy
from searchmerge.service.footage import Footage
from searchmerge.service.protocol import (
    EdgeStats,
    Sample,
    SampleBatch,
    StreamStats,
    VersionInfo,
    encode_frame,
)
from searchmerge.service.signing import Verifier

__all__ = ["EdgeAgent", "EdgeSettings", "camera_drifts", "retry_delay"]

#: Samples waiting for the service at most; the oldest are discarded past it.
_QUEUE = 10_000
_log = logging.getLogger("searchmerge.edge")
#: Bytes of samples per upload (well under the service's default 1 MiB limit).
_UPLOAD_BYTES = 256 * 1024


#: The share of a backoff taken off at random, so that edges cut off together do not all retry together.
_JITTER = 0.2


def retry_delay(failures: int, *, base: float, cap: float, jitter: float = 0.0,
                rng: random.Random | None = None) -> float:
    """Seconds to wait after ``failures`` calls in a row failed: doubling from ``base``, at most ``cap``,
    less a random share of up to ``jitter`` of it.

    However many failures there were, the exponent stops growing long before a float overflows.
    """
    delay = min(cap, base * 2.0 ** min(max(failures - 1, 0), 64))
    if jitter:
        delay *= 1.0 - jitter * (rng or random).random()
    return delay


@dataclass(frozen=True)
class EdgeSettings:
    """How the agent runs.

    Attributes:
        state_dir: The agent's folder: its versions, ``current.json``, and the predictions.
        streams: ``MODEL=digits`` (the generator's camera of MODEL) or ``MODEL=FOLDER`` (the
            images of a folder); empty: a digits stream for every model.
        fps: Frames per second of every stream.
        sample_every: Every N-th frame of a stream with provenance is sent to the service.
        poll_seconds: Between two polls of the service (the base of the backoff too).
        max_backoff: The longest wait between retries while the service is unreachable.
        gpu_memory: The device budget of the runtime.
        device: ``simulated`` (the CPU, with the runtime's accounting) or ``cuda``.
        drift: A drift scenario that the digits streams switch to (and that the camera streams apply
            to every frame, :class:`~searchmerge.data.sources.video.CameraDrift`) ...
        drift_after: ... this many seconds after the agent started serving.
        duration: Stop after this many seconds of serving (``None``: until stopped).
        predictions: The JSON-lines file of predictions (default: ``state_dir/predictions.jsonl``).
        metrics_host / metrics_port: Where ``/metrics`` and ``/healthz`` are served (port 0: any free port).
        threads: CPU threads of torch's operators (``None``: torch's default). One frame of a
            small model is latency-bound: on a busy CPU one thread runs it about ten times
            faster than two that wait for each other.
        keep_versions: Versions kept in ``state_dir/versions`` (the one serving and the one
            ``current.json`` names are always kept, beyond these).
        predictions_max_bytes: The predictions file is rotated before it grows past this ...
        predictions_backups: ... keeping this many rotated files (``.1`` is the newest).
        stale_after: ``/healthz`` answers 503 once the last successful poll of the service is
            older than this many seconds.
        trust: The operator's public key (``searchmerge-signing.pub`` from ``searchmerge keys
            init``): only versions it signed are run.
        allow_unsigned: Run versions without checking a signature (without ``trust``, the agent
            refuses to start unless this is set).
        allow_factories: ``package.module:function`` model or dataset factories a version may
            name besides torchvision's architectures and :mod:`searchmerge.zoo`'s factories.
        ca_file: The CA certificate (PEM) the service's TLS certificate is checked against
            (default: the system's store).
        allow_insecure: Talk plain ``http://`` to a service that is not on this machine.
    """

    state_dir: Path
    streams: tuple[str, ...] = ()
    fps: float = 10.0
    sample_every: int = 10
    poll_seconds: float = 5.0
    max_backoff: float = 30.0
    gpu_memory: str = "1GiB"
    device: str = "simulated"
    drift: str | None = None
    drift_after: float = 0.0
    duration: float | None = None
    predictions: Path | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    threads: int | None = None
    keep_versions: int = 3
    predictions_max_bytes: int = 100 * 2**20
    predictions_backups: int = 3
    stale_after: float = 120.0
    trust: Path | None = None
    allow_unsigned: bool = False
    allow_factories: tuple[str, ...] = ()
    ca_file: Path | None = None
    allow_insecure: bool = False

    def __post_init__(self) -> None:
        if self.fps <= 0 or self.sample_every < 1 or self.poll_seconds <= 0 or self.max_backoff <= 0:
            raise SearchmergeError("fps, poll seconds and backoff must be positive and sample-every at least 1")
        if self.keep_versions < 1 or self.predictions_max_bytes < 1 or self.predictions_backups < 0:
            raise SearchmergeError("keep-versions and the predictions' size must be at least 1, backups at least 0")
        if self.stale_after <= 0:
            raise SearchmergeError(f"stale-after must be positive, got {self.stale_after}")
        if self.drift_after < 0 or (self.duration is not None and self.duration <= 0):
            raise SearchmergeError("drift-after must be >= 0 and duration > 0")
        if self.threads is not None and self.threads < 1:
            raise SearchmergeError(f"threads must be at least 1, got {self.threads}")


@dataclass
class _StreamState:
    name: str
    model: str
    source: DigitsStream | FolderStream | CameraStream
    processed: int = 0
    dropped: int = 0


def camera_drifts(name: str, cameras: Mapping[str, str], settings: StudySettings) -> dict[str, CameraDrift]:
    """Per camera stream (``cameras``: stream name -> its model), the whole-frame drift of scenario ``name``,
    checked before serving starts.

    Raises:
        SearchmergeError: If the scenario is unknown, gives a camera model other data, or changes
            what a camera does not have.
    """
    scenarios = known_scenarios(settings)
    if name not in scenarios:
        raise SearchmergeError(f"unknown drift scenario {name!r}; known scenarios: {', '.join(sorted(scenarios))}")
    drifts = {}
    for stream, model in cameras.items():
        where = f"drift scenario {name!r}, model {model!r}"
        if "data" in scenarios[name].models.get(model, {}):
            raise SearchmergeError(f"{where}: the scenario gives the model other data, which a camera stream cannot"
                                   " show; give it camera changes")
        drifts[stream] = CameraDrift.from_changes(scenarios[name].changes_for(model), where)
    return drifts


@dataclass
class _Refusal:
    """A version refused: why, and whether (and when) it is tried again."""

    version: int
    reason: str
    permanent: bool
    tries: int
    retry_at: float


class EdgeAgent:
    """Serve a deployment on an edge box, kept current by the merging service.

    Example:
        >>> agent = EdgeAgent("http://127.0.0.1:8000", token, EdgeSettings(Path("edge")))  # doctest: +SKIP
        >>> agent.run()  # doctest: +SKIP
    """

    def __init__(self, server: str, token: str, settings: EdgeSettings, *, progress: Progress | None = None) -> None:
        self.settings = settings
        self._progress = progress
        # Refused before anything else (one error line from the CLI): plain http:// to another host,
        # an unreadable key or CA file, neither --trust nor --allow-unsigned.
        verifier = Verifier.load(settings.trust) if settings.trust is not None else None
        self.trust = TrustPolicy(verifier, allow_unsigned=settings.allow_unsigned, factories=settings.allow_factories)
        self.client = ServiceClient(server, token, ca_file=settings.ca_file, allow_insecure=settings.allow_insecure)
        if verifier is None:
            self.say("versions are run without checking a signature (--allow-unsigned)", logging.WARNING)
        else:
            self.say(f"running only versions signed by key {verifier.key_id} ({settings.trust})")
        self.local = LocalVersions(settings.state_dir)
        self.metrics = EdgeMetrics()
        self.active: ServingVersion | None = None
        self.streams: list[_StreamState] = []
        self.reachable = False
        self.last_contact: datetime | None = None
        self.switches = 0
        self.refused = 0
        self.metrics_port: int | None = None
        self._ready: ServingVersion | None = None
        self._lock = threading.Lock()
        #: Per camera stream, how ``--drift`` changes its frames.
        self._drifts: dict[str, CameraDrift] = {}
        self._samples: deque[Sample] = deque()
        self._stop = threading.Event()
        self._counted = (0, 0)  # the active runtime's swaps and bytes already counted
        self.runtime_swaps = 0
        self.bytes_loaded = 0
        # The sync thread's state, for /healthz: what it is doing, its failures in a row and the last one.
        self.sync_state = "starting"
        self.sync_failures = 0
        self.last_error: str | None = None
        self._last_poll: float | None = None  # time.monotonic() of the last successful poll
        self._started = time.monotonic()
        self._sync: threading.Thread | None = None
        self._said_error: str | None = None
        self._refusals: dict[tuple[str, str], _Refusal] = {}
        self._announced: tuple[str, str] | None = None
        self._uploads_after = 0.0  # time.monotonic() before which samples wait (the service's quota)
        self._predictions_told = -math.inf
        self.metrics.last_poll_age.set_function(self.poll_age)

    def say(self, line: str, level: int = logging.INFO) -> None:
        """Log ``line`` on the ``searchmerge.edge`` logger (with its time and level), and pass it to
        ``progress`` when the agent was given one."""
        _log.log(level, line)
        if self._progress is not None:
            self._progress(line)

    # ------------------------------------------------------------------ running
    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Serve until ``duration`` passes or :meth:`stop` is called."""
        if self.settings.threads is not None:
            torch.set_num_threads(self.settings.threads)
        self.active = self._first_version()
        if self.active is None:
            return
        self._note_switch(self.active, first=True)
        self._prune()
        self.streams = self._make_streams(self.active)
        server = serve_metrics(self.metrics, self.health, self.settings.metrics_host, self.settings.metrics_port)
        self.metrics_port = server.server_address[1]
        self.say(f"edge {self.client.edge}: serving version {self.active.info.version} on"
                 f" {len(self.streams)} stream(s); metrics and health on"
                 f" http://{self.settings.metrics_host}:{self.metrics_port}/")
        sync = threading.Thread(target=self._sync_loop, name="searchmerge-edge-sync", daemon=True)
        sync.start()
        self._sync = sync  # only once started: /healthz would call a thread not yet started 'sync-stopped'
        predictions = self.settings.predictions or self.settings.state_dir / "predictions.jsonl"
        out = PredictionLog(predictions, max_bytes=self.settings.predictions_max_bytes,
                            backups=self.settings.predictions_backups, on_error=self._predictions_failed)
        try:
            self._serve(out)
        finally:
            out.close()
            self._stop.set()
            sync.join()
            self._report()  # the last statistics, if the service is there
            server.shutdown()
            server.server_close()
            self.client.close()

    def _first_version(self) -> ServingVersion | None:
        """The version ``current.json`` names if it loads, else the service's (retried until it answers)."""
        info = self.local.current()
        if info is not None:
            try:
                return self._prepare(info, self.local.path(info.version), None)
            except Exception as exc:  # noqa: BLE001 - whatever the local copy's fault, the service has the version
                self.local.discard(info.version)
                self.say(f"the local version {info.version} does not load ({exc}); asking the service", logging.WARNING)
        failures = 0
        while not self._stop.is_set():
            try:
                info = self.client.current()
                self._polled()
                version = self._fetch(info, None)
                if version is not None:
                    self.local.set_current(info)
                    return version
                failures, wait = 0, self.settings.poll_seconds  # refused: wait for the service to publish another
            except Exception as exc:  # noqa: BLE001 - nothing serves yet: say why, and try again
                failures += 1
                wait = self._failed(exc, failures, "no version to serve yet")
            self._stop.wait(wait)
        return None

    def _make_streams(self, version: ServingVersion) -> list[_StreamState]:
        workload = version.deployment.workload
        footage = Footage(workload, version.deployment.settings)
        specs = self.settings.streams or tuple(f"{name}=digits" for name in workload.names)
        streams: list[_StreamState] = []
        for spec in specs:
            model, equals, where = spec.partition("=")
            if not equals or model not in workload.names:
                raise SearchmergeError(f"stream {spec!r}: give MODEL=digits or MODEL=FOLDER, with MODEL one of"
                                       f" {', '.join(workload.names)}")
            request = model_request(workload.spec(model))
            if where == "digits":
                source: DigitsStream | FolderStream | CameraStream = DigitsStream(footage, model)
            elif request.format == "video":  # a camera's whole frames; the model sees its region
                region = tuple(request.options.get("region") or (0.0, 0.0, 1.0, 1.0))
                source = CameraStream(Path(where), tuple(workload.spec(model).input_shape), region,  # type: ignore[arg-type]
                                      seed=version.deployment.settings.seed)
            else:
                source = FolderStream(Path(where), footage.input_shape(model))
            taken = sum(s.model == model for s in streams)
            streams.append(_StreamState(model if not taken else f"{model}-{taken + 1}", model, source))
        if self.settings.drift is not None:
            cameras = {s.name: s.model for s in streams if isinstance(s.source, CameraStream)}
            self._drifts = camera_drifts(self.settings.drift, cameras, version.deployment.settings)
            if any(isinstance(s.source, DigitsStream) for s in streams):
                footage.data(self.settings.drift)  # an unknown scenario fails before serving starts
            elif not self._drifts:
                raise SearchmergeError("--drift needs a digits stream or a camera stream (a model on video footage);"
                                       " frame folders cannot drift on request")
        return streams

    # ------------------------------------------------------------------ serving loop
    def _serve(self, out: PredictionLog) -> None:
        interval = 1.0 / self.settings.fps
        start = time.monotonic()
        tick = 0
        drifted = self.settings.drift is None
        while not self._stop.is_set():
            now = time.monotonic()
            if self.settings.duration is not None and now - start >= self.settings.duration:
                return
            due = start + tick * interval
            if now < due:
                self._stop.wait(due - now)
                continue
            late = int((now - due) / interval)
            if late:  # these frames waited longer than one frame interval: dropped
                for stream in self.streams:
                    stream.dropped += late
                    self.metrics.dropped.labels(stream.name).inc(late)
                    out.write({"t": time.time(), "stream": stream.name, "dropped": late})
                tick += late
            self._take_ready()
            if not drifted and now - start >= self.settings.drift_after:
                drifted = True
                for stream in self.streams:
                    if isinstance(stream.source, DigitsStream):
                        stream.source.drift(self.settings.drift)
                    elif isinstance(stream.source, CameraStream):
                        stream.source.drift(self.settings.drift, self._drifts[stream.name])
                self.say(f"drift scenario {self.settings.drift!r} switched on")
            for stream in self.streams:
                self._run_frame(stream, out)
            self._count_runtime()
            tick += 1

    def _run_frame(self, stream: _StreamState, out: PredictionLog) -> None:
        version = self.active
        assert version is not None
        frame = stream.source.next()
        prediction = version.predict(stream.model, frame.image)
        stream.processed += 1
        self.metrics.processed.labels(stream.name).inc()
        source = frame.source
        out.write({
            "t": time.time(), "stream": stream.name, "model": stream.model, "frame": frame.index,
            "scenario": frame.scenario, "version": version.info.version,
            "prediction": prediction, "truth": frame.truth,
        })
        if (source is not None or frame.sample is not None) and stream.processed % self.settings.sample_every == 0:
            if len(self._samples) >= _QUEUE:
                self._samples.popleft()
                self.metrics.samples_discarded.inc()
            # 8-bit PNG or JPEG, not raw floats: the camera's frame, or the digits frame the model saw.
            encoded = frame.sample or encode_frame(pixels_of(frame.image.numpy(), stream.source.normalisation))
            self._samples.append(Sample(model=stream.model, frame=encoded, source=source,
                                        version=version.info.version, prediction=prediction))

    def _take_ready(self) -> None:
        """Switch to a prepared version, between two frames."""
        with self._lock:
            ready, self._ready = self._ready, None
        if ready is None:
            return
        self._count_runtime()
        self.active = ready
        self._counted = (0, 0)
        self._note_switch(ready)

    def _note_switch(self, version: ServingVersion, *, first: bool = False) -> None:
        self.metrics.version.set(version.info.version)
        self.metrics.deployment_bytes.set(version.bytes_total)
        self.metrics.switch_bytes.set(version.bytes_copied)
        if not first:
            self.switches += 1
            self.metrics.switches.inc()
            self.say(f"switched to version {version.info.version}: {version.bytes_copied / 1e6:.2f} MB of its"
                     f" {version.bytes_total / 1e6:.2f} MB of weights copied to the device (the rest was unchanged)")

    def _count_runtime(self) -> None:
        assert self.active is not None
        counters = self.active.runtime.counters
        swaps, loaded = counters.swaps, counters.bytes_loaded
        self.runtime_swaps += swaps - self._counted[0]
        self.bytes_loaded += loaded - self._counted[1]
        self.metrics.runtime_swaps.inc(swaps - self._counted[0])
        self.metrics.bytes_loaded.inc(loaded - self._counted[1])
        self._counted = (swaps, loaded)

    # ------------------------------------------------------------------ sync thread
    def _sync_loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._stop.wait(self._sync_round())
        finally:
            self.sync_state = "stopped" if self._stop.is_set() else "dead"

    def _sync_round(self) -> float:
        """One round of the sync thread; the seconds until the next. Never raises."""
        try:
            self._sync_once()
        except Exception as exc:  # noqa: BLE001 - the sync thread must outlive any failure, and say what it was
            self.sync_failures += 1
            return self._failed(exc, self.sync_failures, "serving on")
        self.sync_failures = 0
        self.sync_state = "ok"
        self.last_error = self._said_error = None
        return self.settings.poll_seconds

    def _failed(self, exc: Exception, failures: int, doing: str) -> float:
        """Count and log a failed round (the first of a run, every tenth, and any new error); the backoff."""
        wait = self._backoff(failures)
        expected = isinstance(exc, (SearchmergeError, OSError))
        described = str(exc) if isinstance(exc, SearchmergeError) else f"{type(exc).__name__}: {exc}"
        self.sync_state = "retrying"
        self.last_error = described
        if isinstance(exc, ServiceUnreachable):
            self.metrics.server_errors.inc()
            self._contact(False)
        else:
            self.metrics.sync_errors.inc()
        if failures == 1 or failures % 10 == 0 or described != self._said_error:
            self.say(f"{doing}: {described}; retrying in {wait:.1f} s (failure {failures} in a row)", logging.WARNING)
            if not expected:
                _log.warning("the failure's traceback, for a bug report:", exc_info=exc)
        self._said_error = described
        return wait

    def _sync_once(self) -> None:
        info = self.client.current()
        self._polled()
        active = self.active
        assert active is not None
        if (info.version, info.manifest_sha256) != (active.info.version, active.info.manifest_sha256) \
                and not self._stop.is_set():
            self._install(info, active)
        if time.monotonic() >= self._uploads_after:
            self._upload_samples()
        self._report()

    def _install(self, info: VersionInfo, active: ServingVersion) -> None:
        """Download, verify and prepare version ``info`` beside ``active``, then hand it to the serving loop."""
        ready = self._fetch(info, active)
        if ready is None:
            return
        self.local.set_current(info)  # names only complete, verified versions
        with self._lock:
            self._ready = ready
        self._prune(info.version, active.info.version)

    def _fetch(self, info: VersionInfo, previous: ServingVersion | None) -> ServingVersion | None:
        """Version ``info`` downloaded, verified and prepared beside ``previous``; ``None`` when it is
        refused now, or was before (remembered by its digests: see :meth:`_refuse`).

        Raises:
            ServiceUnreachable, OSError: When the download broke off or the disk is full: not the
                version's fault, so not a refusal (the round fails and is retried).
        """
        key = (info.manifest_sha256, info.weights_sha256)
        earlier = self._refusals.get(key)
        if earlier is not None and (earlier.permanent or time.monotonic() < earlier.retry_at):
            return None
        keeps = f"version {previous.info.version} keeps serving" if previous is not None else "nothing serves yet"
        if key != self._announced:  # once per version, not at every retry
            self._announced = key
            self.say(f"version {info.version} published: downloading")
        try:
            folder = self.local.install(self.client, info)
        except (TamperedArtifact, BadAnswer) as exc:  # the bytes that came were not the version's
            self._refuse(info, exc, keeps, permanent=False)
            return None
        try:
            return self._prepare(info, folder, previous)
        except Exception as exc:  # noqa: BLE001 - verified bytes that are untrusted or do not load: never again
            self.local.discard(info.version)
            self._refuse(info, exc, keeps, permanent=True)
            return None

    def _prepare(self, info: VersionInfo, folder: Path, previous: ServingVersion | None) -> ServingVersion:
        """Load a downloaded, verified version folder beside ``previous``, once the trust policy
        has checked its signature and the code it names (nothing is imported before)."""
        self.trust.check(info, folder)
        return ServingVersion.prepare(info, folder, gpu_memory=self.settings.gpu_memory, device=self.settings.device,
                                      previous=previous)

    def _refuse(self, info: VersionInfo, exc: Exception, keeps: str, *, permanent: bool) -> None:
        """Count a refusal and remember it by the version's digests.

        A version whose verified bytes were refused (untrusted, or they do not load) is not
        downloaded again while the agent runs; one whose download did not match its digests
        (corrupted or tampered with on the way) is tried again after a doubling wait.
        """
        key = (info.manifest_sha256, info.weights_sha256)
        earlier = self._refusals.get(key)
        tries = 1 if earlier is None else earlier.tries + 1
        if permanent:
            retry_at, then = math.inf, "it is not downloaded again"
        else:
            wait = retry_delay(tries, base=self.settings.poll_seconds, cap=10 * self.settings.max_backoff)
            retry_at, then = time.monotonic() + wait, f"tried again in {wait:.1f} s"
        self._refusals[key] = _Refusal(info.version, str(exc), permanent, tries, retry_at)
        self.refused += 1
        self.metrics.refused.inc()
        described = str(exc) if isinstance(exc, SearchmergeError) else f"{type(exc).__name__}: {exc}"
        self.say(f"version {info.version} refused, {keeps}: {described}; {then}", logging.ERROR)

    def _prune(self, *protect: int) -> None:
        """Remove old versions from the disk (see :meth:`LocalVersions.prune`)."""
        active = self.active
        keep = set(protect) | ({active.info.version} if active is not None else set())
        try:
            removed = self.local.prune(self.settings.keep_versions, protect=keep)
        except OSError as exc:
            self.say(f"cannot prune old versions: {exc}", logging.WARNING)
            return
        if removed:
            self.say(f"removed old version(s) {', '.join(map(str, removed))} from {self.local.folder}"
                     f" (keeping the newest {self.settings.keep_versions})")

    def _upload_samples(self) -> None:
        while self._samples and not self._stop.is_set():
            batch: list[Sample] = []
            size = 0
            while self._samples and size < _UPLOAD_BYTES and len(batch) < 512:
                sample = self._samples.popleft()
                batch.append(sample)
                size += len(sample.frame.data) + 256
            try:
                accepted = self.client.send_samples(SampleBatch(samples=batch))
            except (ServiceUnreachable, BadAnswer):
                self._samples.extendleft(reversed(batch))  # sent again once the service answers
                raise
            except RateLimited as exc:  # over this edge's quota: the samples wait (the queue stays bounded)
                self._samples.extendleft(reversed(batch))
                if self._uploads_after == 0.0 or time.monotonic() - self._uploads_after > 60:
                    self.say(f"{exc}; {len(self._samples)} samples wait {exc.retry_after:.0f} s", logging.WARNING)
                self._uploads_after = time.monotonic() + exc.retry_after
                self.metrics.samples_deferred.inc(len(batch))
                return
            except SearchmergeError as exc:
                self.say(f"the service refused {len(batch)} samples: {exc}", logging.WARNING)
                continue
            self.metrics.samples_sent.inc(accepted)

    def _report(self) -> None:
        try:
            self.client.send_stats(self.stats())
        except SearchmergeError:
            pass  # statistics are best effort; the next poll sends them again

    # ------------------------------------------------------------------ state
    def _backoff(self, failures: int) -> float:
        return retry_delay(failures, base=self.settings.poll_seconds, cap=self.settings.max_backoff, jitter=_JITTER)

    def _contact(self, reachable: bool) -> None:
        self.reachable = reachable
        if reachable:
            self.last_contact = datetime.now(timezone.utc)

    def _polled(self) -> None:
        """The service answered a poll with a version document."""
        self._contact(True)
        self._last_poll = time.monotonic()

    def poll_age(self) -> float:
        """Seconds since the last successful poll (since the agent started, before the first)."""
        return time.monotonic() - (self._last_poll if self._last_poll is not None else self._started)

    def _predictions_failed(self, exc: OSError) -> None:
        self.metrics.prediction_errors.inc()
        if time.monotonic() - self._predictions_told >= 60:  # at most once a minute
            self._predictions_told = time.monotonic()
            self.say(f"cannot write predictions: {exc}; serving on (retried at the next frame)", logging.WARNING)

    def stats(self) -> EdgeStats:
        active = self.active
        return EdgeStats(
            version=active.info.version if active else None,
            streams={s.name: StreamStats(model=s.model, processed=s.processed, dropped=s.dropped) for s in self.streams},
            switches=self.switches, refused=self.refused,
            runtime_swaps=self.runtime_swaps, bytes_loaded=self.bytes_loaded,
        )

    def health(self) -> dict[str, Any]:
        """The ``/healthz`` document: ``status`` is ``ok`` (200), or ``starting`` (no version serves yet),
        ``sync-stopped`` (the sync thread is gone) or ``stale`` (no successful poll for ``stale_after``
        seconds), all 503."""
        active = self.active
        age = self.poll_age()
        sync = self._sync
        if active is None:
            status = "starting"
        elif sync is not None and not sync.is_alive() and not self._stop.is_set():
            status = "sync-stopped"
        elif age > self.settings.stale_after:
            status = "stale"
        else:
            status = "ok"
        return {
            "status": status,
            "edge": self.client.edge,
            "version": active.info.version if active else None,
            "weights_sha256": active.info.weights_sha256 if active else None,
            "verified": active is not None,  # a version serves only after its checksums matched
            "server": {"reachable": self.reachable,
                       "last_contact": self.last_contact.isoformat() if self.last_contact else None},
            "sync": {"state": self.sync_state, "alive": sync is not None and sync.is_alive(),
                     "last_poll_age_s": round(age, 3), "polled": self._last_poll is not None,
                     "stale_after_s": self.settings.stale_after, "failures_in_a_row": self.sync_failures,
                     "last_error": self.last_error},
            "streams": {s.name: {"model": s.model, "processed": s.processed, "dropped": s.dropped}
                        for s in self.streams},
            "switches": self.switches,
            "refused": self.refused,
            "refusals": [{"version": r.version, "reason": r.reason, "tries": r.tries,
                          "downloaded_again": not r.permanent} for r in list(self._refusals.values())],
            "last_switch_bytes": active.bytes_copied if active else None,
            "deployment_bytes": active.bytes_total if active else None,
        }
