"""The stream simulator: what share of its cameras' frames an edge box processes in time.

One camera stream per model, each at ``fps`` frames per second (streams staggered evenly
within a frame interval). One device runs one batch at a time; before a run, the tensors
the model lacks are copied in and others evicted, by a :class:`~searchmerge.runtime.
residency.Residency` under the GPU memory budget. The scheduler is Gemel's time-slicing:

* models take turns in a fixed round (models that share tensors next to each other, so a
  merged group is used while it is resident); a model whose stream has no frame waiting
  is skipped, so it costs no swap;
* at its turn a model serves the frames waiting when the turn began, oldest first, in
  batches of 1, 2, 4 or 8 (the largest that still meets the oldest frame's deadline);
* a frame that cannot be finished within ``sla_ms`` of its arrival, even alone and now, is
  dropped; a frame finished late counts as dropped too, so every frame is either
  processed (in time) or dropped.

A model larger than the budget runs layer by layer (the next layer's copy overlapping the
current layer's compute when two layers fit). Durations come from an executor: the
profile's predictions here (:class:`PredictedExecutor`), or the real runtime's
measurements (:class:`searchmerge.runtime.runtime.RuntimeExecutor`) for the same scheduler,
so that the two can be compared. Plain Python: 8 streams x 60 s x 30 fps take well under
a second (``benchmarks/bench_runtime.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from searchmerge.config.deploy import DeploySettings, format_bytes
from searchmerge.core.errors import SearchmergeError
from searchmerge.runtime.profile import PlanProfile, Profile
from searchmerge.runtime.residency import Residency, transient_bytes

__all__ = ["Executor", "PredictedExecutor", "Run", "SimulationResult", "StreamResult", "check_budget", "simulate"]

#: Floating-point slack when comparing a finish time with a deadline.
_EPS = 1e-9


@dataclass(frozen=True)
class Step:
    """How long one run took: copying (not hidden behind compute) and computing."""

    load_s: float
    compute_s: float


@dataclass(frozen=True)
class Run:
    """One batch on the device: when, which model, how many frames, how long it loaded."""

    start: float
    end: float
    model: str
    batch: int
    load_s: float


@dataclass(frozen=True)
class StreamResult:
    """One camera stream's frames."""

    model: str
    frames: int
    processed: int
    dropped: int
    p95_latency_ms: float | None
    resident_share: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "frames": self.frames,
            "processed": self.processed,
            "dropped": self.dropped,
            "p95_latency_ms": None if self.p95_latency_ms is None else round(self.p95_latency_ms, 3),
            "resident_share": round(self.resident_share, 4),
        }


@dataclass(frozen=True)
class SimulationResult:
    """What one plan does on the edge box.

    Attributes:
        plan: The plan's name.
        settings: Budget, fps, SLA, seconds, policy, swap mode.
        resident_bytes_needed: Weights of every model resident at once (shared tensors
            once) plus the largest run memory at the smallest batch: what fits everything.
        streams: Per stream (model), frames, processed, dropped, 95th percentile latency.
        counters: The residency's counters (swaps, bytes loaded, evictions, ...).
        busy_seconds: Device time spent copying or computing.
        load_seconds: Of which copying (not hidden behind compute).
        runs: Every batch, in order.
        residency: ``(time, models fully resident)`` at every change, from time 0.
        units: The merged groups of the plan (models linked by shared tensors).
    """

    plan: str
    settings: DeploySettings
    resident_bytes_needed: int
    streams: tuple[StreamResult, ...]
    counters: dict[str, float]
    busy_seconds: float
    load_seconds: float
    runs: tuple[Run, ...]
    residency: tuple[tuple[float, frozenset[str]], ...]
    units: tuple[tuple[str, ...], ...]

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.streams)

    @property
    def processed(self) -> int:
        return sum(s.processed for s in self.streams)

    @property
    def processed_fraction(self) -> float:
        return self.processed / self.frames if self.frames else 0.0

    @property
    def fits(self) -> bool:
        return self.resident_bytes_needed <= self.settings.gpu_memory

    @property
    def loading_share(self) -> float:
        """Share of the device's busy time spent copying."""
        return self.load_seconds / self.busy_seconds if self.busy_seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan,
            "resident_bytes_needed": self.resident_bytes_needed,
            "fits": self.fits,
            "streams": [s.to_dict() for s in self.streams],
            "processed_fraction": round(self.processed_fraction, 6),
            "swaps": int(self.counters["swaps"]),
            "bytes_loaded": int(self.counters["bytes_loaded"]),
            "loading_share": round(self.loading_share, 6),
            "evictions": int(self.counters["evictions"]),
            "streamed_runs": int(self.counters["streamed_runs"]),
            "peak_bytes": int(self.counters["peak_bytes"]),
            "busy_seconds": round(self.busy_seconds, 6),
            "units": [list(unit) for unit in self.units],
        }


class Executor:
    """Runs batches for the scheduler; this base predicts their cost from a profile.

    Subclasses decide what a run *is*: :class:`PredictedExecutor` accounts for it, the
    real runtime's executor carries it out. Both keep their residency in
    :attr:`residency`, which the scheduler's predictions read.
    """

    def __init__(self, profile: Profile, plan: PlanProfile, residency: Residency) -> None:
        self.profile = profile
        self.plan = plan
        self.residency = residency
        self._costs: dict[tuple[str, int], float | None] = {}
        self._version = -1

    def cost(self, model: str, batch: int) -> float | None:
        """Predicted seconds to run a batch now (copies included); ``None`` if it cannot run."""
        if self._version != self.residency.version:
            self._costs.clear()
            self._version = self.residency.version
        key = (model, batch)
        if key not in self._costs:
            self._costs[key] = self._predict(model, batch)
        return self._costs[key]

    def _predict(self, model: str, batch: int) -> float | None:
        profile = self.profile.model(model)
        extra = profile.activation_bytes[batch]
        compute = profile.batch_seconds[batch]
        if self.residency.fits(model, extra):
            return self.profile.load_seconds(self.residency.missing_bytes(model, extra)) + compute
        sizes = self.residency.layer_bytes(model)
        for prefetch in (True, False):
            if transient_bytes(sizes, prefetch) + extra <= self.residency.budget:
                return streamed_seconds(sizes, profile.layer_shares, compute, self.profile.load_seconds, prefetch)
        return None

    def run(self, model: str, batch: int, upcoming: Sequence[str]) -> Step:
        raise NotImplementedError


class PredictedExecutor(Executor):
    """Runs take the time the profile predicts; the residency does the accounting."""

    def run(self, model: str, batch: int, upcoming: Sequence[str]) -> Step:
        profile = self.profile.model(model)
        extra = profile.activation_bytes[batch]
        compute = profile.batch_seconds[batch]
        counters = self.residency.counters
        if self.residency.fits(model, extra):
            change = self.residency.acquire(model, extra=extra, upcoming=upcoming)
            load = self.profile.load_seconds(change.bytes_loaded)
            counters.load_seconds += load
            return Step(load_s=load, compute_s=compute)
        plan = self.residency.stream(model, extra=extra, upcoming=upcoming)
        total = streamed_seconds(plan.layer_bytes, profile.layer_shares, compute, self.profile.load_seconds, plan.prefetch)
        counters.load_seconds += self.profile.load_seconds(sum(plan.layer_bytes))
        return Step(load_s=total - compute, compute_s=compute)


def streamed_seconds(
    layer_bytes: Sequence[int], shares: Sequence[float], compute: float, load_seconds: Any, prefetch: bool
) -> float:
    """Time of a layer-by-layer run: each layer's copy, overlapping the previous layer's compute if ``prefetch``."""
    if len(shares) != len(layer_bytes):  # no per-layer measurement: spread compute by nothing but the count
        shares = [1.0 / max(len(layer_bytes), 1)] * len(layer_bytes)
    loads = [load_seconds(size) for size in layer_bytes]
    computes = [share * compute for share in shares]
    if not prefetch:
        return sum(loads) + sum(computes)
    total = loads[0] if loads else 0.0
    for index, layer_compute in enumerate(computes):
        following = loads[index + 1] if index + 1 < len(loads) else 0.0
        total += max(layer_compute, following)
    return total


def check_budget(profile: Profile, plan: PlanProfile, budget: int) -> None:
    """Refuse a budget that cannot run some model at all, not even layer by layer."""
    smallest = min(profile.batch_sizes)
    for model in plan.layout.models:
        extra = profile.model(model).activation_bytes[smallest]
        if plan.layout.model_bytes(model) + extra <= budget:
            continue
        layer = max((sum(plan.layout.sizes[t] for t in ids), name) for name, ids in plan.layout.layers[model])
        if layer[0] + extra > budget:
            raise SearchmergeError(
                f"the budget {format_bytes(budget)} is below what the largest single layer needs"
                f" ({model}: {layer[1]}, {format_bytes(layer[0])} plus {format_bytes(extra)} of run memory)"
            )


def simulate(
    profile: Profile,
    plan: str | PlanProfile,
    settings: DeploySettings,
    *,
    executor: Executor | None = None,
) -> SimulationResult:
    """Simulate the cameras of every model for ``settings.seconds`` under ``settings.gpu_memory``.

    Args:
        profile: The workload's profile.
        plan: A profiled plan (or its name in the profile).
        settings: Budget, fps, SLA, seconds, eviction policy, swap mode.
        executor: Who runs the batches (default: the profile's predictions).

    Returns:
        Frames processed and dropped per stream, swaps, bytes moved, loading share, and
        the timeline (batches and residency).

    Raises:
        SearchmergeError: If the budget cannot run some model even layer by layer.

    Example:
        >>> result = simulate(profile, "none", DeploySettings(gpu_memory="4GiB"))  # doctest: +SKIP
        >>> result.processed_fraction, result.counters["swaps"]  # doctest: +SKIP
    """
    plan = profile.plan(plan) if isinstance(plan, str) else plan
    check_budget(profile, plan, settings.gpu_memory)
    if executor is None:
        residency = Residency(plan.layout, settings.gpu_memory, policy=settings.policy, swap=settings.swap)
        executor = PredictedExecutor(profile, plan, residency)
    return _Scheduler(profile, plan, settings, executor).run()


class _Scheduler:
    """Time-slicing over the streams, on a virtual clock advanced by the executor's steps."""

    def __init__(self, profile: Profile, plan: PlanProfile, settings: DeploySettings, executor: Executor) -> None:
        self.profile, self.plan, self.settings, self.executor = profile, plan, settings, executor
        self.order = [m for unit in plan.layout.units for m in unit]
        self.n = len(self.order)
        self.fps = settings.fps
        self.sla = settings.sla_ms / 1000.0
        self.frames = int(round(settings.seconds * settings.fps))
        self.offset = [k / (self.n * self.fps) for k in range(self.n)]
        self.head = [0] * self.n
        self.processed = [0] * self.n
        self.dropped = [0] * self.n
        self.latencies: list[list[float]] = [[] for _ in range(self.n)]
        self.batch_sizes = sorted(profile.batch_sizes, reverse=True)
        self.runs: list[Run] = []
        self.residency: list[tuple[float, frozenset[str]]] = [(0.0, frozenset())]
        self.busy = 0.0
        self.loading = 0.0
        self._seen_version = -1

    def arrived(self, k: int, t: float) -> int:
        """Frames of stream ``k`` that have arrived by time ``t``."""
        if t + _EPS < self.offset[k]:
            return 0
        return min(self.frames, int(math.floor((t - self.offset[k]) * self.fps + _EPS)) + 1)

    def arrival(self, k: int, i: int) -> float:
        return self.offset[k] + i / self.fps

    def run(self) -> SimulationResult:
        t, position = 0.0, 0
        while True:
            k = self._next(t, position)
            if k is None:
                waiting = [self.arrival(j, self.head[j]) for j in range(self.n) if self.head[j] < self.frames]
                if not waiting:
                    break
                t = max(t, min(waiting))
                continue
            position = (k + 1) % self.n
            t = self._turn(k, t, self.order[position:] + self.order[:position])
        return self._result()

    def _next(self, t: float, position: int) -> int | None:
        for step in range(self.n):
            k = (position + step) % self.n
            if self.arrived(k, t) > self.head[k]:
                return k
        return None

    def _turn(self, k: int, t: float, upcoming: list[str]) -> float:
        """Serve the frames stream ``k`` has waiting at the start of its turn."""
        model = self.order[k]
        end = self.arrived(k, t)
        cost, sla, fps = self.executor.cost, self.sla, self.fps
        while self.head[k] < end:
            alone = cost(model, self.batch_sizes[-1])
            if alone is None:  # cannot run at all: check_budget prevents it
                self.dropped[k] += end - self.head[k]
                self.head[k] = end
                break
            # Frames that arrived before t + alone - sla cannot be finished in time: drop them at once.
            late = int(math.ceil((t + alone - sla - self.offset[k]) * fps - _EPS))
            if late > self.head[k]:
                skipped = min(late, end) - self.head[k]
                self.dropped[k] += skipped
                self.head[k] += skipped
                continue
            deadline = self.arrival(k, self.head[k]) + sla
            batch = next(
                b for b in self.batch_sizes
                if b == self.batch_sizes[-1]
                or (b <= end - self.head[k] and (c := cost(model, b)) is not None and t + c <= deadline + _EPS)
            )
            count = min(batch, end - self.head[k])  # the smallest batch size may exceed what waits
            step = self.executor.run(model, batch, upcoming)
            start, t = t, t + step.load_s + step.compute_s
            self.busy += step.load_s + step.compute_s
            self.loading += step.load_s
            self.runs.append(Run(start=start, end=t, model=model, batch=batch, load_s=step.load_s))
            self._record_residency(start)
            for i in range(self.head[k], self.head[k] + count):
                latency = t - self.arrival(k, i)
                if latency <= sla + _EPS:
                    self.processed[k] += 1
                    self.latencies[k].append(latency)
                else:
                    self.dropped[k] += 1
            self.head[k] += count
        return t

    def _record_residency(self, t: float) -> None:
        residency = self.executor.residency
        if residency.version != self._seen_version:
            self._seen_version = residency.version
            resident = residency.resident_models()
            if resident != self.residency[-1][1]:
                self.residency.append((t, resident))

    def _result(self) -> SimulationResult:
        layout = self.plan.layout
        smallest = min(self.profile.batch_sizes)
        needed = layout.resident_bytes + max(self.profile.model(m).activation_bytes[smallest] for m in layout.models)
        end = max([self.settings.seconds] + [run.end for run in self.runs])
        shares = _resident_shares(self.residency, end, self.order)
        streams = tuple(
            StreamResult(
                model=model,
                frames=self.frames,
                processed=self.processed[k],
                dropped=self.dropped[k],
                p95_latency_ms=float(np.percentile(self.latencies[k], 95)) * 1000 if self.latencies[k] else None,
                resident_share=shares[model],
            )
            for k, model in sorted(enumerate(self.order), key=lambda item: layout.models.index(item[1]))
        )
        return SimulationResult(
            plan=self.plan.name,
            settings=self.settings,
            resident_bytes_needed=needed,
            streams=streams,
            counters=self.executor.residency.counters.to_dict(),
            busy_seconds=self.busy,
            load_seconds=self.loading,
            runs=tuple(self.runs),
            residency=tuple(self.residency),
            units=layout.units,
        )


def _resident_shares(
    changes: Sequence[tuple[float, frozenset[str]]], end: float, models: Sequence[str]
) -> dict[str, float]:
    """Share of the simulated time each model was fully resident."""
    shares = dict.fromkeys(models, 0.0)
    for (start, resident), (stop, _) in zip(changes, [*changes[1:], (end, frozenset())]):
        for model in resident:
            shares[model] += max(stop - start, 0.0)
    return {model: value / end if end else 0.0 for model, value in shares.items()}
