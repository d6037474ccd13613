"""One definition of "the same tensor" (searchmerge.storage.identity), and its four users agree on it."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from searchmerge.analysis.memory import model_tensors, unique_tensor_bytes
from searchmerge.runtime.measure import layout_of
from searchmerge.storage.identity import storage_identity, tensor_identity
from searchmerge.storage.store import _read_aliases, _serialize
from searchmerge.training.deployment import _collect_tensors


def test_a_tensor_is_the_same_view_of_the_same_storage() -> None:
    weight = nn.Parameter(torch.randn(4, 4))
    assert tensor_identity(weight) == tensor_identity(weight.detach())
    assert tensor_identity(weight) != tensor_identity(weight.detach().t())  # same bytes, other strides
    assert tensor_identity(weight) != tensor_identity(weight.detach()[1:])  # overlapping view
    assert tensor_identity(weight) != tensor_identity(torch.randn(4, 4))
    assert tensor_identity(torch.empty(0)) is None
    assert tensor_identity(torch.empty(4, device="meta")) is None


def test_views_share_their_storage() -> None:
    weight = torch.randn(4, 4)
    assert storage_identity(weight) == storage_identity(weight.t()) == storage_identity(weight[1:])
    assert storage_identity(weight) != storage_identity(weight.clone())
    assert storage_identity(torch.empty(4, device="meta")) is None


class _Tied(nn.Module):
    """A weight, the same weight tied in a second slot, and its transpose as a buffer."""

    def __init__(self, weight: nn.Parameter) -> None:
        super().__init__()
        self.first = nn.Linear(4, 4, bias=False)
        self.second = nn.Linear(4, 4, bias=False)
        self.first.weight = weight
        self.second.weight = weight
        self.register_buffer("transposed", weight.detach().t())


def test_memory_runtime_export_and_store_agree_on_which_tensors_are_one() -> None:
    weight = nn.Parameter(torch.randn(4, 4))
    models = {"a": _Tied(weight), "b": _Tied(weight)}
    # Per model: first.weight and second.weight are one tensor; the transposed buffer is another
    # view of the same bytes. Across the models, everything is tied.
    expected = {"a/first.weight", "a/transposed"}

    assert set(layout_of(models).keys) == expected  # the runtime's layout
    unique, tensor_map = _collect_tensors(SimpleNamespace(names=["a", "b"]), models)  # the export
    assert set(unique) == expected
    assert tensor_map["b"] == {"first.weight": "a/first.weight", "second.weight": "a/first.weight",
                               "transposed": "a/transposed"}
    state = {f"{name}/{key}": tensor for name, model in models.items()
             for key, tensor in model.state_dict(keep_vars=True).items()}
    aliases = _read_aliases(_serialize(state))  # the checkpoint store
    assert set(state) - set(aliases) == expected
    # Memory counts storages: the transposed view costs nothing more.
    assert unique_tensor_bytes(model_tensors(models.values())) == 4 * 4 * 4
