"""A profile: what running a workload's models costs on one device, per sharing plan.

The simulator predicts from a profile alone, so a profile holds everything it needs:

* per model: inference time and run memory (activations) at batch sizes 1, 2, 4, 8,
  how its inference time splits over its layers (for layer-by-layer streaming), and the
  time to load it whole;
* per plan: the deployment's tensor layout, so that the bytes each model needs resident
  (shared tensors counted once across the deployment) and the bytes every switch moves
  follow from it;
* the link: host-to-device bytes per second (measured from pinned memory on CUDA; on a
  machine without a GPU, a configured bandwidth, by default that of PCIe 3 x16);
* the device it was measured on and a fingerprint of the workload and of each plan, so
  that a profile of another workload or plan is refused.

Inference time and run memory do not depend on the plan (sharing changes which tensors
exist, not the arithmetic), so they are measured once per model and the plans differ in
their layout only. This module is the record and its JSON (plain Python); measuring is
:mod:`searchmerge.runtime.measure`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from searchmerge.config.workload import Workload
from searchmerge.core.errors import SearchmergeError
from searchmerge.runtime.layout import TensorLayout
from searchmerge.storage.atomic import write_atomic

__all__ = ["FORMAT", "ModelProfile", "PlanProfile", "Profile", "plan_fingerprint", "workload_fingerprint"]

FORMAT = "searchmerge-profile"
FORMAT_VERSION = 1


def workload_fingerprint(workload: Workload) -> str:
    """SHA-256 over what determines the models' tensors and compute: names, architectures, kwargs, input shapes."""
    described = [
        [
            spec.name,
            spec.arch or f"module:{type(spec.module).__module__}.{type(spec.module).__qualname__}",
            dict(spec.kwargs),
            list(spec.input_shape),
        ]
        for spec in workload.models
    ]
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:20]


def plan_fingerprint(workload: str, groups: Sequence[str]) -> str:
    """SHA-256 over the workload's fingerprint and the plan's shared groups."""
    return hashlib.sha256(json.dumps([workload, sorted(groups)]).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class ModelProfile:
    """One model's compute on the profiled device (the same under every plan).

    Attributes:
        name: The model.
        batch_seconds: Inference time of one batch, per batch size.
        activation_bytes: Run memory beyond the weights (activations), per batch size.
        layer_shares: Share of the inference time each layer takes, in the layout's layer order.
        measured_as: The model whose measurement this is (models of one architecture are
            measured once).
        load_seconds: Time to copy all its tensors to the device (measured on CUDA from
            pinned memory; elsewhere its bytes over the link bandwidth).
    """

    name: str
    batch_seconds: Mapping[int, float]
    activation_bytes: Mapping[int, int]
    layer_shares: tuple[float, ...]
    measured_as: str
    load_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "batch_seconds": {str(b): s for b, s in self.batch_seconds.items()},
            "activation_bytes": {str(b): n for b, n in self.activation_bytes.items()},
            "layer_shares": list(self.layer_shares),
            "measured_as": self.measured_as,
            "load_seconds": self.load_seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelProfile:
        return cls(
            name=str(data["name"]),
            batch_seconds={int(b): float(s) for b, s in data["batch_seconds"].items()},
            activation_bytes={int(b): int(n) for b, n in data["activation_bytes"].items()},
            layer_shares=tuple(float(s) for s in data["layer_shares"]),
            measured_as=str(data.get("measured_as", data["name"])),
            load_seconds=float(data.get("load_seconds", 0.0)),
        )


@dataclass(frozen=True)
class PlanProfile:
    """One plan's deployment layout.

    Attributes:
        name: How the plan was asked for (``none``, ``all``, ``best``, or its groups).
        groups: The shared groups.
        fingerprint: Of the workload and the groups.
        layout: The distinct tensors and each model's layers.
    """

    name: str
    groups: tuple[str, ...]
    fingerprint: str
    layout: TensorLayout

    def to_dict(self) -> dict[str, Any]:
        layout = self.layout
        return {
            "name": self.name,
            "groups": list(self.groups),
            "fingerprint": self.fingerprint,
            "resident_bytes": layout.resident_bytes,
            "model_bytes": {m: layout.model_bytes(m) for m in layout.models},
            "units": [list(unit) for unit in layout.units],
            "layout": layout.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlanProfile:
        return cls(
            name=str(data["name"]),
            groups=tuple(map(str, data["groups"])),
            fingerprint=str(data["fingerprint"]),
            layout=TensorLayout.from_dict(data["layout"]),
        )


@dataclass(frozen=True)
class Profile:
    """What a workload costs on one device, for one or more sharing plans.

    Attributes:
        device: Where it was measured (``cpu``, or ``cuda: <GPU name>``).
        workload: The workload's name.
        workload_fingerprint: See :func:`workload_fingerprint`.
        batch_sizes: The batch sizes measured.
        link_bytes_per_s: Host-to-device copy speed.
        link_measured: Whether the link speed was measured (CUDA) or configured.
        models: Per model, in workload order.
        plans: The profiled plans.
    """

    device: str
    workload: str
    workload_fingerprint: str
    batch_sizes: tuple[int, ...]
    link_bytes_per_s: float
    link_measured: bool
    models: tuple[ModelProfile, ...]
    plans: tuple[PlanProfile, ...]

    def model(self, name: str) -> ModelProfile:
        for model in self.models:
            if model.name == name:
                return model
        raise SearchmergeError(f"the profile has no model named {name!r}")

    def plan(self, name: str) -> PlanProfile:
        """The profiled plan asked for as ``name``."""
        for plan in self.plans:
            if plan.name == name:
                return plan
        known = ", ".join(p.name for p in self.plans)
        raise SearchmergeError(f"the profile was measured for plan(s) {known}, not for {name!r}; profile that plan")

    def load_seconds(self, nbytes: float) -> float:
        """Time to copy ``nbytes`` from host to device."""
        return nbytes / self.link_bytes_per_s

    def check_for(self, fingerprint: str, workload: str, plans: Mapping[str, str] | None = None) -> Profile:
        """This profile, after making sure it was measured for this workload (and these plans).

        Args:
            fingerprint: The workload's fingerprint.
            workload: Its name, for the message.
            plans: Plan name to plan fingerprint, for the plans about to be simulated.
        """
        if fingerprint != self.workload_fingerprint:
            raise SearchmergeError(
                f"the profile was measured for workload {self.workload!r} ({self.workload_fingerprint}),"
                f" not for {workload!r} ({fingerprint}); profile this workload"
            )
        for name, plan_print in (plans or {}).items():
            if self.plan(name).fingerprint != plan_print:
                raise SearchmergeError(
                    f"the profile's plan {name!r} shares other groups than the plan {name!r} of this study"
                    " (a newer search?); profile it again"
                )
        return self

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "device": self.device,
            "workload": self.workload,
            "workload_fingerprint": self.workload_fingerprint,
            "batch_sizes": list(self.batch_sizes),
            "link_bytes_per_s": self.link_bytes_per_s,
            "link_measured": self.link_measured,
            "models": [m.to_dict() for m in self.models],
            "plans": [p.to_dict() for p in self.plans],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "the profile") -> Profile:
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise SearchmergeError(f"{where} is not a searchmerge profile (made by 'searchmerge profile')")
        if data.get("version") != FORMAT_VERSION:
            raise SearchmergeError(f"{where} has format version {data.get('version')!r}; this searchmerge reads 1")
        try:
            return cls(
                device=str(data["device"]),
                workload=str(data["workload"]),
                workload_fingerprint=str(data["workload_fingerprint"]),
                batch_sizes=tuple(int(b) for b in data["batch_sizes"]),
                link_bytes_per_s=float(data["link_bytes_per_s"]),
                link_measured=bool(data["link_measured"]),
                models=tuple(ModelProfile.from_dict(m) for m in data["models"]),
                plans=tuple(PlanProfile.from_dict(p) for p in data["plans"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SearchmergeError(f"{where} is malformed: {exc!r}") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(self.to_dict(), indent=1).encode() + b"\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Profile:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise SearchmergeError(f"profile {str(path)!r} does not exist; make one with 'searchmerge profile'") from None
        except (OSError, ValueError) as exc:
            raise SearchmergeError(f"cannot read profile {str(path)!r}: {exc}") from None
        return cls.from_dict(data, where=f"profile {str(path)!r}")
