"""What is resident on the device, within a budget: the decisions and the accounting.

One :class:`Residency` answers "what must be copied and what evicted to run this model",
and counts it. The real runtime (:mod:`searchmerge.runtime.runtime`) carries its
decisions out with tensors, the simulator (:mod:`searchmerge.runtime.simulator`) only
advances a clock by them: both keep the same budget with the same accounting, so the
simulator's prediction and the runtime's measurement differ only in the durations.

Residency is decided per block (see :class:`~searchmerge.runtime.layout.TensorLayout`):
a tensor shared with a resident model is already there and is never copied again.
Plain Python.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from searchmerge.config.deploy import POLICIES, SWAP_MODES, format_bytes
from searchmerge.core.errors import SearchmergeError
from searchmerge.runtime.layout import TensorLayout

__all__ = ["Change", "Counters", "Residency", "StreamPlan", "transient_bytes"]


@dataclass
class Counters:
    """What moving tensors cost so far.

    Attributes:
        swaps: Runs that had to copy something (a model, or a layer-streamed model, loaded).
        blocks_loaded / tensors_loaded / bytes_loaded: What was copied to the device.
        evictions / tensors_evicted / bytes_evicted: What was dropped from it (in blocks).
        load_seconds: Time spent copying (measured by the runtime on CUDA, else bytes over
            the link bandwidth).
        peak_bytes: The most the device held at once, weights and reserved run memory.
        streamed_runs: Runs of a model larger than the budget, streamed layer by layer.
    """

    swaps: int = 0
    blocks_loaded: int = 0
    tensors_loaded: int = 0
    bytes_loaded: int = 0
    evictions: int = 0
    tensors_evicted: int = 0
    bytes_evicted: int = 0
    load_seconds: float = 0.0
    peak_bytes: int = 0
    streamed_runs: int = 0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Change:
    """The blocks one run made resident and those it evicted to make room."""

    loaded: tuple[int, ...]
    evicted: tuple[int, ...]
    bytes_loaded: int


@dataclass(frozen=True)
class StreamPlan:
    """How a model too large for the budget runs layer by layer.

    Attributes:
        layer_bytes: Per layer (module order), the bytes to copy (its tensors that are not
            resident already).
        prefetch: Whether the next layer's copy overlaps the current layer's compute (the
            budget holds two layers at once), or each layer is copied, then run.
        evicted: Blocks evicted to make room.
    """

    layer_bytes: tuple[int, ...]
    prefetch: bool
    evicted: tuple[int, ...] = field(default=())


class Residency:
    """The device's resident blocks under a budget, and the policy that picks what to evict.

    Args:
        layout: The deployment's tensors and which models use them.
        budget: Device bytes available to weights plus the running model's run memory.
        policy: ``lru`` evicts the least recently used block; ``lookahead`` evicts the
            block a known schedule needs last (Belady's rule), on ties the least recent.
        swap: ``model`` makes resident exactly what the model to run needs; ``unit`` the
            whole merged group it belongs to, when that fits (else the model's own).

    Example:
        >>> layout = TensorLayout(keys=("w", "x", "y"), sizes=(6, 3, 3),
        ...                       layers={"a": (("l", (0, 1)),), "b": (("l", (0, 2)),)})
        >>> residency = Residency(layout, budget=12)
        >>> residency.acquire("a").bytes_loaded, residency.acquire("b").bytes_loaded
        (9, 3)
    """

    def __init__(self, layout: TensorLayout, budget: int, *, policy: str = "lru", swap: str = "model") -> None:
        if policy not in POLICIES:
            raise SearchmergeError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        if swap not in SWAP_MODES:
            raise SearchmergeError(f"swap must be one of {', '.join(SWAP_MODES)}, got {swap!r}")
        self.layout = layout
        self.budget = int(budget)
        self.policy = policy
        self.swap = swap
        self.counters = Counters()
        self.resident: set[int] = set()
        self.used = 0
        self._last_used: dict[int, int] = {}
        self._tick = 0
        #: Changes whenever the resident set does, so that callers may cache what depends on it.
        self.version = 0
        self._sizes = [block.bytes for block in layout.blocks]

    # ----------------------------------------------------------------- queries
    def needed(self, model: str, extra: int = 0) -> frozenset[int]:
        """The blocks a run of ``model`` makes resident: its own, or its unit's when that fits."""
        blocks = self.layout.model_blocks(model)
        if self.swap == "unit":
            unit = self.layout.unit_blocks(model)
            if self._bytes(unit) + extra <= self.budget:
                return unit
        return blocks

    def missing_bytes(self, model: str, extra: int = 0) -> int:
        """Bytes a run of ``model`` with ``extra`` run memory would copy now (0 when it is resident)."""
        return sum(self._sizes[b] for b in self.needed(model, extra) if b not in self.resident)

    def layer_bytes(self, model: str) -> tuple[int, ...]:
        """Per layer of ``model``, the bytes a layer-by-layer run would copy now."""
        return self._layer_bytes(self.layout.layer_blocks(model))

    def fits(self, model: str, extra: int = 0) -> bool:
        """Whether ``model`` can be made resident, with ``extra`` run memory, in the budget."""
        return self._bytes(self.layout.model_blocks(model)) + extra <= self.budget

    def resident_models(self) -> frozenset[str]:
        """The models whose every tensor is resident."""
        return frozenset(m for m in self.layout.models if self.layout.model_blocks(m) <= self.resident)

    # ----------------------------------------------------------------- actions
    def acquire(self, model: str, *, extra: int = 0, upcoming: Sequence[str] = ()) -> Change:
        """Make ``model`` resident for a run that needs ``extra`` bytes of run memory.

        Evicts blocks the model does not need, by the policy (``upcoming``: the models
        the schedule runs next, for ``lookahead``), until everything fits.

        Raises:
            SearchmergeError: If the model cannot fit even alone (stream it instead).
        """
        if not self.fits(model, extra):
            raise SearchmergeError(
                f"model {model!r} needs {format_bytes(self._bytes(self.layout.model_blocks(model)) + extra)}"
                f" but the budget is {format_bytes(self.budget)}; it must be streamed layer by layer"
            )
        needed = self.needed(model, extra)
        missing = [b for b in sorted(needed) if b not in self.resident]
        incoming = sum(self._sizes[b] for b in missing)
        evicted = self._make_room(self.used + incoming + extra - self.budget, keep=needed, upcoming=upcoming)
        for block in missing:
            self.resident.add(block)
            self.counters.blocks_loaded += 1
            self.counters.tensors_loaded += len(self.layout.blocks[block].tensors)
        self.used += incoming
        self.counters.bytes_loaded += incoming
        self.counters.swaps += bool(missing)
        self.version += bool(missing or evicted)
        self._touch(needed)
        self._peak(self.used + extra)
        return Change(loaded=tuple(missing), evicted=evicted, bytes_loaded=incoming)

    def stream(self, model: str, *, extra: int = 0, upcoming: Sequence[str] = ()) -> StreamPlan:
        """Plan a layer-by-layer run of ``model``: evict until two layers (or one) fit.

        Tensors of ``model`` that are resident (shared with a resident model) stay and are
        not copied; the streamed layers are transient and leave nothing resident.

        Raises:
            SearchmergeError: If the budget cannot hold even the largest layer and ``extra``.
        """
        layers = self.layout.layer_blocks(model)
        order = self._victims(keep=frozenset(), upcoming=upcoming)
        evicted: list[int] = []
        for prefetch in (True, False):
            while True:
                sizes = self._layer_bytes(layers)
                if self.used + transient_bytes(sizes, prefetch) + extra <= self.budget:
                    for block in evicted:
                        self._evict(block)
                    self.version += 1
                    self.counters.swaps += 1
                    self.counters.streamed_runs += 1
                    self.counters.bytes_loaded += sum(sizes)
                    self.counters.tensors_loaded += sum(
                        1 for _, ids in self.layout.layers[model] for t in ids
                        if self.layout.block_of[t] not in self.resident
                    )
                    self._touch(self.layout.model_blocks(model) & self.resident)
                    self._peak(self.used + transient_bytes(sizes, prefetch) + extra)
                    return StreamPlan(layer_bytes=sizes, prefetch=prefetch, evicted=tuple(evicted))
                if len(evicted) == len(order):
                    break
                block = order[len(evicted)]
                evicted.append(block)
                self._pretend_evicted(block)
            for block in evicted:  # undo the trial evictions before trying without prefetch
                self._pretend_evicted(block, undo=True)
            evicted.clear()
        largest = self.layout.largest_layer()
        raise SearchmergeError(
            f"the budget {format_bytes(self.budget)} is below what the largest single layer needs"
            f" ({largest[0]}: {largest[1]}, {format_bytes(largest[2])} plus {format_bytes(extra)} of run memory)"
        )

    def evict_all(self) -> tuple[int, ...]:
        """Drop everything (e.g. between independent runs)."""
        blocks = tuple(sorted(self.resident))
        for block in blocks:
            self._evict(block)
        self.version += 1
        return blocks

    # ----------------------------------------------------------------- internals
    def _bytes(self, blocks: frozenset[int] | set[int]) -> int:
        return sum(self._sizes[b] for b in blocks)

    def _layer_bytes(self, layers: tuple[tuple[tuple[int, int], ...], ...]) -> tuple[int, ...]:
        return tuple(sum(size for block, size in layer if block not in self.resident) for layer in layers)

    def _touch(self, blocks: frozenset[int] | set[int]) -> None:
        self._tick += 1
        for block in blocks:
            self._last_used[block] = self._tick

    def _peak(self, in_use: int) -> None:
        if in_use > self.budget:  # a bug, never an input problem: the checks above prevent it
            raise AssertionError(f"residency exceeded its budget: {in_use} > {self.budget}")
        self.counters.peak_bytes = max(self.counters.peak_bytes, in_use)

    def _victims(self, *, keep: frozenset[int], upcoming: Sequence[str]) -> list[int]:
        """Resident blocks outside ``keep``, first to evict first."""
        candidates = [b for b in self.resident if b not in keep]
        if self.policy == "lookahead":
            distance = _distances(upcoming, self.needed)
            return sorted(candidates, key=lambda b: (-distance.get(b, math.inf), self._last_used.get(b, 0), b))
        return sorted(candidates, key=lambda b: (self._last_used.get(b, 0), b))

    def _make_room(self, excess: int, *, keep: frozenset[int], upcoming: Sequence[str]) -> tuple[int, ...]:
        evicted: list[int] = []
        if excess <= 0:
            return ()
        for block in self._victims(keep=keep, upcoming=upcoming):
            self._evict(block)
            evicted.append(block)
            excess -= self._sizes[block]
            if excess <= 0:
                break
        return tuple(evicted)

    def _evict(self, block: int) -> None:
        if block in self.resident:
            self.resident.discard(block)
            self.used -= self._sizes[block]
        self.counters.evictions += 1
        self.counters.tensors_evicted += len(self.layout.blocks[block].tensors)
        self.counters.bytes_evicted += self._sizes[block]

    def _pretend_evicted(self, block: int, *, undo: bool = False) -> None:
        """Take a block out of (or back into) the resident set without counting an eviction."""
        if undo:
            self.resident.add(block)
            self.used += self._sizes[block]
        else:
            self.resident.discard(block)
            self.used -= self._sizes[block]


def transient_bytes(layer_bytes: tuple[int, ...], prefetch: bool) -> int:
    """Device bytes a layer-by-layer run holds at its peak: two consecutive layers, or one."""
    if not layer_bytes:
        return 0
    if not prefetch or len(layer_bytes) == 1:
        return max(layer_bytes)
    return max(a + b for a, b in zip(layer_bytes, layer_bytes[1:]))


def _distances(upcoming: Sequence[str], swap_blocks: Callable[[str], frozenset[int]]) -> dict[int, int]:
    """For each block, how many runs ahead the schedule ``upcoming`` needs it first.

    ``swap_blocks(model)`` gives the blocks a model's run needs. Blocks the schedule does
    not name are absent (never needed again, as far as it knows).
    """
    distance: dict[int, int] = {}
    for index, model in enumerate(upcoming):
        for block in swap_blocks(model):
            distance.setdefault(block, index)
    return distance
