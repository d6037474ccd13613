"""The answer to "which layers could these models share, and what would it save?"."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from searchmerge.analysis.groups import ShareableGroup, common_layers, find_groups
from searchmerge.analysis.layers import Layer, weighted_layers
from searchmerge.analysis.memory import (
    measure_activation_bytes,
    model_tensors,
    unique_tensor_bytes,
)
from searchmerge.config.workload import Workload, from_models
from searchmerge.core.errors import SearchmergeError


@dataclass(frozen=True)
class ModelMemory:
    """One model's weighted layers and memory (the paper's Table 1).

    ``activation_bytes`` maps a batch size to the peak activation memory of one
    forward pass; it is empty unless activations were measured.
    """

    name: str
    layers: int
    param_bytes: int
    buffer_bytes: int
    activation_bytes: Mapping[int, int] = field(default_factory=dict)

    @property
    def load_bytes(self) -> int:
        """Memory to hold the model: its parameters and buffers."""
        return self.param_bytes + self.buffer_bytes

    def run_bytes(self, batch_size: int) -> int:
        """Memory to run the model at ``batch_size``: load plus activations."""
        return self.load_bytes + self.activation_bytes[batch_size]


@dataclass(frozen=True)
class PairStats:
    """What two models have in common (the paper's Figure 2)."""

    a: str
    b: str
    common_layers: int
    saved_bytes: int
    layers_fraction: float
    saved_fraction: float


@dataclass(frozen=True)
class AnalysisResult:
    """Layers, groups and memory of a workload; ``to_dict`` gives the JSON document."""

    models: tuple[ModelMemory, ...]
    pairs: tuple[PairStats, ...]
    groups: tuple[ShareableGroup, ...]
    layers: Mapping[str, tuple[Layer, ...]]
    total_bytes: int
    share_norm: bool

    @property
    def max_sharing_saved_bytes(self) -> int:
        return sum(group.saved_bytes for group in self.groups)

    @property
    def max_sharing_bytes(self) -> int:
        """The max-sharing bound: workload memory if every shareable group were shared."""
        return self.total_bytes - self.max_sharing_saved_bytes

    @property
    def saved_fraction(self) -> float:
        return self.max_sharing_saved_bytes / self.total_bytes if self.total_bytes else 0.0

    @property
    def batch_sizes(self) -> list[int]:
        """The batch sizes at which activations were measured (empty unless they were)."""
        return sorted({b for m in self.models for b in m.activation_bytes})

    def run_bytes(self, batch_size: int, *, max_sharing: bool = False) -> int:
        """Memory an edge box must hold to run the workload at ``batch_size``.

        Every model's weights stay resident (once per shared tensor with ``max_sharing``),
        and the models run one after another, so the activations needed are those of the
        largest one: resident weights plus the largest model's activations at that batch.
        """
        resident = self.max_sharing_bytes if max_sharing else self.total_bytes
        return resident + max(m.activation_bytes[batch_size] for m in self.models)

    def group(self, name: str) -> ShareableGroup:
        for group in self.groups:
            if group.name == name:
                return group
        raise SearchmergeError(f"no shareable group named {name!r} (the workload has {len(self.groups)} groups)")

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": [
                {
                    "name": m.name,
                    "layers": m.layers,
                    "param_bytes": m.param_bytes,
                    "buffer_bytes": m.buffer_bytes,
                    "load_bytes": m.load_bytes,
                    "activation_bytes": {str(b): v for b, v in m.activation_bytes.items()},
                }
                for m in self.models
            ],
            "pairs": [
                {
                    "a": p.a,
                    "b": p.b,
                    "common_layers": p.common_layers,
                    "saved_bytes": p.saved_bytes,
                    "layers_fraction": p.layers_fraction,
                    "saved_fraction": p.saved_fraction,
                }
                for p in self.pairs
            ],
            "workload": {
                "total_bytes": self.total_bytes,
                "max_sharing_bytes": self.max_sharing_bytes,
                "saved_bytes": self.max_sharing_saved_bytes,
                "saved_fraction": self.saved_fraction,
                "share_norm": self.share_norm,
                "run_bytes": {str(b): self.run_bytes(b) for b in self.batch_sizes},
                "max_sharing_run_bytes": {str(b): self.run_bytes(b, max_sharing=True) for b in self.batch_sizes},
            },
            "groups": [group.to_dict() for group in self.groups],
        }


def analyze(
    models: Workload | Iterable[str] | Mapping[str, Any],
    *,
    share_norm: bool = False,
    batch_sizes: Sequence[int] = (),
    device: torch.device | str | None = None,
    built: Mapping[str, torch.nn.Module] | None = None,
) -> AnalysisResult:
    """Find the shareable groups of a workload and account for its memory.

    Args:
        models: A workload, a list of architecture names / factory paths, or a
            mapping from model name to ``nn.Module`` (or architecture name).
        share_norm: Also share normalisation layers (private by default).
        batch_sizes: Measure activation memory at these batch sizes (slow for
            big models; empty skips it).
        device: Where to measure activations; CUDA when available by default.
        built: Already built modules by model name (skips building them again).

    Example:
        >>> import searchmerge
        >>> result = searchmerge.analyze(["resnet18", "resnet34"])
        >>> result.saved_fraction > 0.2
        True
    """
    workload = from_models(models)
    modules = dict(built) if built is not None else workload.build()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"

    layers = {name: tuple(weighted_layers(name, modules[name], share_norm=share_norm)) for name in workload.names}
    groups = tuple(find_groups(layers))

    memories = []
    for spec in workload.models:
        module = modules[spec.name]
        activations = {b: measure_activation_bytes(module, spec.input_shape, b, device) for b in batch_sizes}
        if batch_sizes:
            module.to("cpu")
        memories.append(
            ModelMemory(
                name=spec.name,
                layers=len(layers[spec.name]),
                param_bytes=unique_tensor_bytes(p.detach() for p in module.parameters()),
                buffer_bytes=unique_tensor_bytes(b for b in module.buffers() if b is not None),
                activation_bytes=activations,
            )
        )

    pairs = []
    by_name = {m.name: m for m in memories}
    for a, b in itertools.combinations(workload.names, 2):
        common, saved = common_layers(layers[a], layers[b])
        smaller = min(len(layers[a]), len(layers[b])) or 1
        pair_total = by_name[a].load_bytes + by_name[b].load_bytes
        pairs.append(PairStats(a, b, common, saved, common / smaller, saved / pair_total if pair_total else 0.0))

    return AnalysisResult(
        models=tuple(memories),
        pairs=tuple(pairs),
        groups=groups,
        layers=layers,
        total_bytes=unique_tensor_bytes(model_tensors(modules.values())),
        share_norm=share_norm,
    )
