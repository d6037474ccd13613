"""Shareable groups: which layers of different models can hold one copy of weights.

A group is a set of matching layers (equal signatures) with at most one layer per
model and at least two models. When a model has several layers of one signature
(a ResNet has many 3x3 256->256 convolutions), the k-th such layer of every model
goes into the k-th group of that signature. Pairing in module order keeps
corresponding layers together (``layer3.0.conv2`` with ``layer3.0.conv2``) and
needs only ``max(count per model)`` copies per signature, the fewest possible.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from searchmerge.analysis.layers import Layer, LayerSignature


@dataclass(frozen=True)
class ShareableGroup:
    """A set of matching layers from different models that may share weights.

    Attributes:
        name: Stable, readable name derived from the member layer names.
        signature: The configuration all members have.
        members: ``(model name, layer name)`` pairs, one per model, in workload order.
        bytes: Size of one member's shareable tensors.
    """

    name: str
    signature: LayerSignature
    members: tuple[tuple[str, str], ...]
    bytes: int

    @property
    def saved_bytes(self) -> int:
        """Memory saved when all members use one copy: ``bytes x (members - 1)``."""
        return self.bytes * (len(self.members) - 1)

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(model for model, _ in self.members)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "signature": str(self.signature),
            "members": [list(member) for member in self.members],
            "bytes": self.bytes,
            "saved_bytes": self.saved_bytes,
        }


def find_groups(layers_by_model: Mapping[str, Sequence[Layer]]) -> list[ShareableGroup]:
    """All shareable groups of a workload, largest saving first (ties by name)."""
    by_signature: dict[LayerSignature, dict[str, list[Layer]]] = defaultdict(lambda: defaultdict(list))
    for model, layers in layers_by_model.items():
        for layer in layers:
            by_signature[layer.signature][model].append(layer)

    raw: list[tuple[LayerSignature, list[Layer]]] = []
    for signature, per_model in by_signature.items():
        depth = max(len(layers) for layers in per_model.values())
        for k in range(depth):
            members = [layers[k] for model in layers_by_model if len(layers := per_model.get(model, [])) > k]
            if len(members) >= 2:
                raw.append((signature, members))

    groups = []
    used: Counter[str] = Counter()
    for signature, members in raw:
        base = _group_name(members)
        used[base] += 1
        name = base if used[base] == 1 else f"{base}#{used[base]}"
        groups.append(
            ShareableGroup(
                name=name,
                signature=signature,
                members=tuple((layer.model, layer.name) for layer in members),
                bytes=min(layer.bytes for layer in members),
            )
        )
    return sorted(groups, key=lambda g: (-g.saved_bytes, g.name))


def common_layers(a: Sequence[Layer], b: Sequence[Layer]) -> tuple[int, int]:
    """Number of layers two models have in common, and the bytes sharing them would save."""
    count_a = Counter(layer.signature for layer in a)
    count_b = Counter(layer.signature for layer in b)
    size = {layer.signature: layer.bytes for layer in [*a, *b]}
    common = {s: min(count_a[s], count_b[s]) for s in count_a.keys() & count_b.keys()}
    return sum(common.values()), sum(n * size[s] for s, n in common.items())


def _group_name(members: Sequence[Layer]) -> str:
    """The layer name most members use (the first member's on a tie)."""
    counts = Counter(layer.name for layer in members)
    best = max(counts.values())
    return next(layer.name for layer in members if counts[layer.name] == best) or "(root)"
