"""Which tensors each model of a deployment needs on the device, shared tensors listed once.

A merged deployment holds every distinct tensor once; a model needs a subset of them,
and models that share layers need overlapping subsets. The runtime and the simulator
both work on this layout: running a model means making its subset resident, and a
switch between two merged models moves only what the second lacks.

Tensors that exactly the same models use always move together (a model needs all or
none of them), so they are grouped into *blocks*; residency is decided per block,
which keeps the accounting fast (tens of blocks instead of thousands of tensors) and
loses nothing. Models linked by shared tensors form *units* (the paper's merged
models): swapped as one when a plan asks for it.

Plain Python (no torch): the layout is built from real tensors by
:func:`searchmerge.runtime.measure.layout_of` and read back from a profile's JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from searchmerge.core.errors import SearchmergeError

__all__ = ["Block", "TensorLayout"]

#: One layer of a model: its qualified module name and the ids of the tensors it owns.
LayerTensors = tuple[str, tuple[int, ...]]


@dataclass(frozen=True)
class Block:
    """Tensors used by exactly the same models: they are resident together or not at all."""

    tensors: tuple[int, ...]
    bytes: int
    owners: frozenset[str]


@dataclass(frozen=True)
class TensorLayout:
    """The distinct tensors of a deployment and, per model, its layers' tensors in module order.

    Attributes:
        keys: A name per distinct tensor (``model/state.key`` of its first owner, as in a
            deployment's weights file).
        sizes: Bytes per distinct tensor.
        layers: Per model (workload order), its layers: ``(module name, tensor ids)``.

    Example:
        >>> layout = TensorLayout(keys=("a/w", "a/x", "b/x"), sizes=(10, 5, 5),
        ...                       layers={"a": (("l", (0, 1)),), "b": (("l", (0, 2)),)})
        >>> layout.resident_bytes, layout.model_bytes("b"), layout.switch_bytes("a", "b")
        (20, 15, 5)
    """

    keys: tuple[str, ...]
    sizes: tuple[int, ...]
    layers: Mapping[str, tuple[LayerTensors, ...]]

    def __post_init__(self) -> None:
        if len(self.keys) != len(self.sizes):
            raise SearchmergeError(f"a tensor layout has {len(self.keys)} names but {len(self.sizes)} sizes")
        count = len(self.sizes)
        for model, layers in self.layers.items():
            if any(not 0 <= tensor < count for _, ids in layers for tensor in ids):
                raise SearchmergeError(f"the tensor layout of model {model!r} names tensors that do not exist")

    # ------------------------------------------------------------------ models
    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self.layers)

    @cached_property
    def _tensors(self) -> dict[str, frozenset[int]]:
        return {model: frozenset(t for _, ids in layers for t in ids) for model, layers in self.layers.items()}

    def tensors(self, model: str) -> frozenset[int]:
        """The ids of the tensors ``model`` needs."""
        try:
            return self._tensors[model]
        except KeyError:
            raise SearchmergeError(f"the layout has no model named {model!r}; it has {list(self.layers)}") from None

    def model_bytes(self, model: str) -> int:
        """Bytes ``model`` needs resident to run."""
        return sum(self.sizes[t] for t in self.tensors(model))

    @property
    def resident_bytes(self) -> int:
        """Bytes of the whole deployment resident at once (each shared tensor once)."""
        return sum(self.sizes)

    def switch_bytes(self, resident: str, target: str) -> int:
        """Bytes a switch from ``resident`` alone to ``target`` moves: what ``target`` lacks."""
        return sum(self.sizes[t] for t in self.tensors(target) - self.tensors(resident))

    def largest_layer(self) -> tuple[str, str, int]:
        """``(model, layer, bytes)`` of the largest single layer (what streaming needs at least)."""
        best = ("", "", 0)
        for model, layers in self.layers.items():
            for name, ids in layers:
                size = sum(self.sizes[t] for t in ids)
                if size > best[2]:
                    best = (model, name, size)
        return best

    # ------------------------------------------------------------------ units
    @cached_property
    def units(self) -> tuple[tuple[str, ...], ...]:
        """Models linked by shared tensors (connected components), in workload order."""
        owner: dict[int, str] = {}
        parent = {model: model for model in self.layers}

        def root(model: str) -> str:
            while parent[model] != model:
                parent[model] = parent[parent[model]]
                model = parent[model]
            return model

        for model, tensors in self._tensors.items():
            for tensor in tensors:
                first = owner.setdefault(tensor, model)
                parent[root(model)] = root(first)
        groups: dict[str, list[str]] = {}
        for model in self.layers:
            groups.setdefault(root(model), []).append(model)
        return tuple(tuple(models) for models in groups.values())

    def unit_of(self, model: str) -> tuple[str, ...]:
        return next(unit for unit in self.units if model in unit)

    # ----------------------------------------------------------------- blocks
    @cached_property
    def blocks(self) -> tuple[Block, ...]:
        """The deployment's tensors grouped by the exact set of models that use them."""
        owners: dict[int, set[str]] = {}
        for model, tensors in self._tensors.items():
            for tensor in tensors:
                owners.setdefault(tensor, set()).add(model)
        by_owners: dict[frozenset[str], list[int]] = {}
        for tensor in sorted(owners):
            by_owners.setdefault(frozenset(owners[tensor]), []).append(tensor)
        return tuple(
            Block(tensors=tuple(ids), bytes=sum(self.sizes[t] for t in ids), owners=key)
            for key, ids in by_owners.items()
        )

    @cached_property
    def block_of(self) -> dict[int, int]:
        """The block of every tensor."""
        return {tensor: index for index, block in enumerate(self.blocks) for tensor in block.tensors}

    @cached_property
    def _model_blocks(self) -> dict[str, frozenset[int]]:
        return {
            model: frozenset(i for i, block in enumerate(self.blocks) if model in block.owners) for model in self.layers
        }

    def model_blocks(self, model: str) -> frozenset[int]:
        """The blocks ``model`` needs."""
        self.tensors(model)  # names an unknown model
        return self._model_blocks[model]

    def unit_blocks(self, model: str) -> frozenset[int]:
        """The blocks of the whole unit (merged group) ``model`` belongs to."""
        return frozenset().union(*(self._model_blocks[m] for m in self.unit_of(model)))

    def layer_blocks(self, model: str) -> tuple[tuple[tuple[int, int], ...], ...]:
        """Per layer of ``model`` (module order): ``(block, bytes of the layer in it)`` pairs."""
        result = []
        for _, ids in self.layers[model]:
            per_block: dict[int, int] = {}
            for tensor in ids:
                block = self.block_of[tensor]
                per_block[block] = per_block.get(block, 0) + self.sizes[tensor]
            result.append(tuple(per_block.items()))
        return tuple(result)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "keys": list(self.keys),
            "sizes": list(self.sizes),
            "models": {model: [[name, list(ids)] for name, ids in layers] for model, layers in self.layers.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorLayout:
        try:
            layers = {
                str(model): tuple((str(name), tuple(int(t) for t in ids)) for name, ids in entries)
                for model, entries in data["models"].items()
            }
            return cls(keys=tuple(map(str, data["keys"])), sizes=tuple(map(int, data["sizes"])), layers=layers)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SearchmergeError(f"a tensor layout in the profile is malformed: {exc!r}") from None

