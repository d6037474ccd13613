"""Build merged models from a sharing plan.

Every shared group becomes one set of ``nn.Parameter`` (and buffer) objects used
by all its members, so the merged models hold each shared tensor once and a
gradient step on one model moves the shared weights of all of them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import nn

from searchmerge.analysis import ShareableGroup
from searchmerge.analysis.layers import shareable_tensors
from searchmerge.core.errors import SearchmergeError
from searchmerge.core.space import SharingPlan

SharedInit = Literal["first", "average"]


def merge_models(
    models: Mapping[str, nn.Module],
    groups: Sequence[ShareableGroup],
    plan: SharingPlan,
    *,
    init: SharedInit = "average",
) -> dict[str, nn.Module]:
    """Copies of ``models`` in which every group of ``plan`` holds one shared copy of its weights.

    Args:
        models: The original models by name; they are not modified.
        groups: The workload's shareable groups (from :func:`searchmerge.analyze`).
        plan: The groups to share.
        init: How the shared copy starts: the ``first`` member's weights, or the
            ``average`` of all members' weights.

    Returns:
        The merged models by name, in the same order.
    """
    if init not in ("first", "average"):
        raise SearchmergeError(f"shared weights start from 'first' or 'average', not {init!r}")
    by_name = {group.name: group for group in groups}
    plan.checked(list(by_name))
    merged = {name: copy.deepcopy(model) for name, model in models.items()}
    for name in sorted(plan.shared):
        _tie_group(merged, by_name[name], init)
    return merged


def _tie_group(models: Mapping[str, nn.Module], group: ShareableGroup, init: SharedInit) -> None:
    try:
        members = [models[model].get_submodule(layer) for model, layer in group.members]
    except (KeyError, AttributeError) as exc:
        raise SearchmergeError(f"group {group.name!r} does not fit these models: {exc}") from None
    owned = [shareable_tensors(module) for module in members]
    for tensor_name in owned[0]:
        values = [tensors[tensor_name].detach() for tensors in owned]
        if any(v.shape != values[0].shape for v in values):
            raise SearchmergeError(f"group {group.name!r}: tensor {tensor_name!r} differs in shape between members")
        start = values[0].clone() if init == "first" else torch.stack(values).mean(dim=0)
        is_parameter = tensor_name in members[0]._parameters
        shared: torch.Tensor = nn.Parameter(start, requires_grad=owned[0][tensor_name].requires_grad) if is_parameter else start
        for module in members:
            if is_parameter:
                module._parameters[tensor_name] = shared  # type: ignore[assignment]
            else:
                module._buffers[tensor_name] = shared


def merged_state(models: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
    """All models' tensors in one flat dict (``model/param``) for the checkpoint store.

    Tied tensors stay the same tensor object, so the store keeps them once.
    """
    return {f"{name}/{key}": value for name, model in models.items() for key, value in model.state_dict().items()}


def load_merged_state(models: Mapping[str, nn.Module], tensors: Mapping[str, torch.Tensor]) -> None:
    """Load what :func:`merged_state` saved into merged models built from the same plan."""
    for name, model in models.items():
        prefix = f"{name}/"
        model.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
