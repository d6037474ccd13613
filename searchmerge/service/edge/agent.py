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
serving. The agent restarts on the version ``current.json`` names (see
:mod:`searchmerge.service.edge.local`), checked again as it loads.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import torch

from searchmerge.core.errors import SearchmergeError
from searchmerge.core.progress import Progress
from searchmerge.service.edge.client import (
    ServiceClient,
    ServiceUnreachable,
    TamperedArtifact,
)
from searchmerge.service.edge.local import LocalVersions
from searchmerge.service.edge.metrics import EdgeMetrics, serve_metrics
from searchmerge.service.edge.serving import ServingVersion
from searchmerge.service.edge.streams import DigitsStream, FolderStream
from searchmerge.service.footage import Footage
from searchmerge.service.protocol import (
    EdgeStats,
    Sample,
    SampleBatch,
    StreamStats,
    VersionInfo,
    encode_frame,
)

__all__ = ["EdgeAgent", "EdgeSettings", "retry_delay"]

#: Samples waiting for the service at most; the oldest are discarded past it.
_QUEUE = 10_000
_log = logging.getLogger("searchmerge.edge")
#: Bytes of samples per upload (well under the service's default 1 MiB limit).
_UPLOAD_BYTES = 256 * 1024


def retry_delay(failures: int, *, base: float, cap: float) -> float:
    """Seconds to wait after ``failures`` calls in a row got no answer: doubling from ``base``, at most ``cap``."""
    return min(cap, base * 2 ** max(failures - 1, 0))


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
        drift: A drift scenario that the digits streams switch to ...
        drift_after: ... this many seconds after the agent started serving.
        duration: Stop after this many seconds of serving (``None``: until stopped).
        predictions: The JSON-lines file of predictions (default: ``state_dir/predictions.jsonl``).
        metrics_host / metrics_port: Where ``/metrics`` and ``/healthz`` are served (port 0: any free port).
        threads: CPU threads of torch's operators (``None``: torch's default). One frame of a
            small model is latency-bound: on a busy CPU one thread runs it about ten times
            faster than two that wait for each other.
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

    def __post_init__(self) -> None:
        if self.fps <= 0 or self.sample_every < 1 or self.poll_seconds <= 0 or self.max_backoff <= 0:
            raise SearchmergeError("fps, poll seconds and backoff must be positive and sample-every at least 1")
        if self.drift_after < 0 or (self.duration is not None and self.duration <= 0):
            raise SearchmergeError("drift-after must be >= 0 and duration > 0")
        if self.threads is not None and self.threads < 1:
            raise SearchmergeError(f"threads must be at least 1, got {self.threads}")


@dataclass
class _StreamState:
    name: str
    model: str
    source: DigitsStream | FolderStream
    processed: int = 0
    dropped: int = 0


class EdgeAgent:
    """Serve a deployment on an edge box, kept current by the merging service.

    Example:
        >>> agent = EdgeAgent("http://127.0.0.1:8000", token, EdgeSettings(Path("edge")))  # doctest: +SKIP
        >>> agent.run()  # doctest: +SKIP
    """

    def __init__(self, server: str, token: str, settings: EdgeSettings, *, progress: Progress | None = None) -> None:
        self.settings = settings
        self.client = ServiceClient(server, token)
        self.local = LocalVersions(settings.state_dir)
        self.metrics = EdgeMetrics()
        self._progress = progress
        self.active: ServingVersion | None = None
        self.streams: list[_StreamState] = []
        self.reachable = False
        self.last_contact: datetime | None = None
        self.switches = 0
        self.refused = 0
        self.metrics_port: int | None = None
        self._ready: ServingVersion | None = None
        self._lock = threading.Lock()
        self._samples: deque[Sample] = deque()
        self._stop = threading.Event()
        self._counted = (0, 0)  # the active runtime's swaps and bytes already counted
        self.runtime_swaps = 0
        self.bytes_loaded = 0

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
        self.streams = self._make_streams(self.active)
        server = serve_metrics(self.metrics, self.health, self.settings.metrics_host, self.settings.metrics_port)
        self.metrics_port = server.server_address[1]
        self.say(f"edge {self.client.edge}: serving version {self.active.info.version} on"
                 f" {len(self.streams)} stream(s); metrics and health on"
                 f" http://{self.settings.metrics_host}:{self.metrics_port}/")
        sync = threading.Thread(target=self._sync_loop, name="searchmerge-edge-sync", daemon=True)
        sync.start()
        predictions = self.settings.predictions or self.settings.state_dir / "predictions.jsonl"
        try:
            with open(predictions, "a", buffering=1) as out:
                self._serve(out)
        finally:
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
                return ServingVersion.prepare(info, self.local.path(info.version), gpu_memory=self.settings.gpu_memory,
                                              device=self.settings.device)
            except SearchmergeError as exc:
                self.local.discard(info.version)
                self.say(f"the local version {info.version} does not load ({exc}); asking the service", logging.WARNING)
        failures = 0
        while not self._stop.is_set():
            try:
                info = self.client.current()
                version = ServingVersion.prepare(info, self.local.install(self.client, info),
                                                 gpu_memory=self.settings.gpu_memory, device=self.settings.device)
                self.local.set_current(info)
                self._contact(True)
                return version
            except (ServiceUnreachable, TamperedArtifact) as exc:
                failures += 1
                self._contact(False)
                wait = self._backoff(failures)
                self.say(f"no version to serve yet: {exc}; retrying in {wait:.1f} s", logging.WARNING)
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
            if where == "digits":
                source: DigitsStream | FolderStream = DigitsStream(footage, model)
            else:
                source = FolderStream(Path(where), footage.input_shape(model))
            taken = sum(s.model == model for s in streams)
            streams.append(_StreamState(model if not taken else f"{model}-{taken + 1}", model, source))
        if self.settings.drift is not None:
            footage.data(self.settings.drift)  # an unknown scenario fails before serving starts
            if not any(isinstance(s.source, DigitsStream) for s in streams):
                raise SearchmergeError("--drift needs a digits stream; frame folders cannot drift on request")
        return streams

    # ------------------------------------------------------------------ serving loop
    def _serve(self, out: TextIO) -> None:
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
                    out.write(json.dumps({"t": time.time(), "stream": stream.name, "dropped": late}) + "\n")
                tick += late
            self._take_ready()
            if not drifted and now - start >= self.settings.drift_after:
                drifted = True
                for stream in self.streams:
                    if isinstance(stream.source, DigitsStream):
                        stream.source.drift(self.settings.drift)
                self.say(f"drift scenario {self.settings.drift!r} switched on")
            for stream in self.streams:
                self._run_frame(stream, out)
            self._count_runtime()
            tick += 1

    def _run_frame(self, stream: _StreamState, out: TextIO) -> None:
        version = self.active
        assert version is not None
        frame = stream.source.next()
        prediction = version.predict(stream.model, frame.image)
        stream.processed += 1
        self.metrics.processed.labels(stream.name).inc()
        source = frame.source
        out.write(json.dumps({
            "t": time.time(), "stream": stream.name, "model": stream.model, "frame": frame.index,
            "scenario": source.scenario if source else None, "version": version.info.version,
            "prediction": prediction, "truth": frame.truth,
        }) + "\n")
        if source is not None and stream.processed % self.settings.sample_every == 0:
            if len(self._samples) >= _QUEUE:
                self._samples.popleft()
                self.metrics.samples_discarded.inc()
            self._samples.append(Sample(model=stream.model, frame=encode_frame(frame.image.numpy()), source=source,
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
        failures = 0
        while not self._stop.is_set():
            try:
                self._sync_once()
                failures = 0
                wait = self.settings.poll_seconds
            except ServiceUnreachable as exc:
                failures += 1
                wait = self._backoff(failures)
                self.metrics.server_errors.inc()
                if failures == 1 or failures % 10 == 0:
                    self.say(f"{exc}; serving on, retrying in {wait:.1f} s (failure {failures} in a row)",
                             logging.WARNING)
                self._contact(False)
            except SearchmergeError as exc:
                self.say(f"sync: {exc}", logging.WARNING)
                wait = self.settings.poll_seconds
            self._stop.wait(wait)

    def _sync_once(self) -> None:
        info = self.client.current()
        self._contact(True)
        active = self.active
        assert active is not None
        if info.version != active.info.version and not self._stop.is_set():
            self._install(info, active)
        self._upload_samples()
        self._report()

    def _install(self, info: VersionInfo, active: ServingVersion) -> None:
        """Download, verify and prepare version ``info`` beside ``active``, then hand it to the serving loop."""
        self.say(f"version {info.version} published: downloading")
        try:
            folder = self.local.install(self.client, info)
            ready = ServingVersion.prepare(info, folder, gpu_memory=self.settings.gpu_memory,
                                           device=self.settings.device, previous=active)
        except ServiceUnreachable:
            raise
        except SearchmergeError as exc:  # a checksum mismatch, or weights that do not load
            self.local.discard(info.version)
            self.refused += 1
            self.metrics.refused.inc()
            self.say(f"version {info.version} refused, version {active.info.version} keeps serving: {exc}",
                     logging.ERROR)
            return
        self.local.set_current(info)  # names only complete, verified versions
        with self._lock:
            self._ready = ready

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
            except ServiceUnreachable:
                self._samples.extendleft(reversed(batch))  # sent again once the service answers
                raise
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
        return retry_delay(failures, base=self.settings.poll_seconds, cap=self.settings.max_backoff)

    def _contact(self, reachable: bool) -> None:
        self.reachable = reachable
        if reachable:
            self.last_contact = datetime.now(timezone.utc)

    def stats(self) -> EdgeStats:
        active = self.active
        return EdgeStats(
            version=active.info.version if active else None,
            streams={s.name: StreamStats(model=s.model, processed=s.processed, dropped=s.dropped) for s in self.streams},
            switches=self.switches, refused=self.refused,
            runtime_swaps=self.runtime_swaps, bytes_loaded=self.bytes_loaded,
        )

    def health(self) -> dict[str, Any]:
        """The ``/healthz`` document."""
        active = self.active
        return {
            "status": "ok" if active is not None else "starting",
            "edge": self.client.edge,
            "version": active.info.version if active else None,
            "weights_sha256": active.info.weights_sha256 if active else None,
            "verified": active is not None,  # a version serves only after its checksums matched
            "server": {"reachable": self.reachable,
                       "last_contact": self.last_contact.isoformat() if self.last_contact else None},
            "streams": {s.name: {"model": s.model, "processed": s.processed, "dropped": s.dropped}
                        for s in self.streams},
            "switches": self.switches,
            "refused": self.refused,
            "last_switch_bytes": active.bytes_copied if active else None,
            "deployment_bytes": active.bytes_total if active else None,
        }
