"""The edge box a study deploys to: GPU memory budget, frame rate and latency target.

A study file may say what its edge box looks like::

    deploy: {gpu_memory: 4GiB, fps: 15, sla_ms: 200}

and the search then scores a plan by the share of frames the box would process in time
(simulated, see :mod:`searchmerge.runtime`) instead of by the bytes it saves. The same
values are the defaults of ``searchmerge simulate``. Plain Python: parsed and validated
here, once, so that a bad value is named before any work starts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from searchmerge.core.errors import SearchmergeError

__all__ = ["PCIE3_X16_BYTES_PER_S", "DeploySettings", "format_bytes", "parse_bytes"]

#: PCIe 3.0 x16: 8 GT/s per lane, 128b/130b encoding, 16 lanes (the default host-to-GPU link).
PCIE3_X16_BYTES_PER_S = 8e9 * 128 / 130 * 16 / 8

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_bytes(value: str | int | float, what: str = "memory") -> int:
    """A size such as ``4GiB``, ``512 MiB``, ``1.5GB`` or a plain number of bytes.

    Binary units (KiB, MiB, GiB, TiB) are powers of 1024, decimal ones (KB, MB, GB, TB)
    powers of 1000, as GPU vendors and PCIe specifications write them.

    Raises:
        SearchmergeError: For an unknown unit, a malformed number or a size that is not positive.

    Example:
        >>> parse_bytes("4GiB"), parse_bytes("1.5 GB"), parse_bytes(1024)
        (4294967296, 1500000000, 1024)
    """
    if isinstance(value, bool):
        raise SearchmergeError(f"{what} must be a size such as 4GiB, got {value!r}")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        match = _SIZE.match(str(value))
        if match is None:
            raise SearchmergeError(f"{what} must be a size such as 4GiB or 512MiB, got {value!r}")
        number, unit = float(match.group(1)), match.group(2)
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise SearchmergeError(
            f"{what}: unknown unit {unit!r} in {value!r} (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)"
        )
    size = int(number * factor)
    if size <= 0:
        raise SearchmergeError(f"{what} must be positive, got {value!r}")
    return size


def format_bytes(size: float) -> str:
    """``1.50 GiB``, ``512.0 MiB``: binary units, as budgets are usually given."""
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(size) >= factor:
            return f"{size / factor:.2f} {unit}"
    return f"{int(size)} B"


def positive(value: Any, what: str) -> float:
    """``value`` as a positive number, or a one-line error naming ``what`` (``true`` is not a number)."""
    if isinstance(value, bool):
        raise SearchmergeError(f"{what} must be a positive number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SearchmergeError(f"{what} must be a positive number, got {value!r}") from None
    if not number > 0 or number == float("inf"):
        raise SearchmergeError(f"{what} must be a positive number, got {value!r}")
    return number


@dataclass(frozen=True)
class DeploySettings:
    """The edge box: GPU memory budget, camera frame rate, latency target, how models are swapped.

    Attributes:
        gpu_memory: GPU memory the models may use, in bytes (weights and activations).
        fps: Frames per second of every camera stream (one stream per model).
        sla_ms: Latency target: a frame counts as processed only if its result is ready
            this many milliseconds after it arrived.
        seconds: Simulated time per plan.
        policy: Eviction policy: ``lru``, or ``lookahead`` (evicts what the known
            schedule needs last).
        swap: ``model``: load only the tensors the model to run lacks; ``unit``: load the
            whole merged group it belongs to (models that share tensors), swapped as one.
    """

    gpu_memory: int
    fps: float = 15.0
    sla_ms: float = 200.0
    seconds: float = 60.0
    policy: str = "lru"
    swap: str = "model"

    def __post_init__(self) -> None:
        object.__setattr__(self, "gpu_memory", parse_bytes(self.gpu_memory, "gpu_memory"))
        for name in ("fps", "sla_ms", "seconds"):
            object.__setattr__(self, name, positive(getattr(self, name), name.replace("_", "-")))
        if self.policy not in POLICIES:
            raise SearchmergeError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.swap not in SWAP_MODES:
            raise SearchmergeError(f"swap must be one of {', '.join(SWAP_MODES)}, got {self.swap!r}")

    @classmethod
    def from_document(cls, section: Any) -> DeploySettings | None:
        """The ``deploy:`` section of a study file (``None`` when it has none)."""
        if section is None:
            return None
        if not isinstance(section, Mapping):
            raise SearchmergeError(f"deploy must be a mapping such as {{gpu_memory: 4GiB, fps: 15}}, got {section!r}")
        known = {"gpu_memory", "fps", "sla_ms", "seconds", "policy", "swap"}
        unknown = sorted(set(section) - known)
        if unknown:
            raise SearchmergeError(f"deploy: unknown setting(s) {unknown}; known: {sorted(known)}")
        if "gpu_memory" not in section:
            raise SearchmergeError("deploy: needs gpu_memory (e.g. gpu_memory: 4GiB)")
        return cls(**dict(section))

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpu_memory": self.gpu_memory,
            "fps": self.fps,
            "sla_ms": self.sla_ms,
            "seconds": self.seconds,
            "policy": self.policy,
            "swap": self.swap,
        }


#: Eviction policies of the runtime and the simulator.
POLICIES = ("lru", "lookahead")
#: What a model's run loads: its own tensors, or its whole merged group.
SWAP_MODES = ("model", "unit")
