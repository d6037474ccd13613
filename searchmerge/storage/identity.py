"""When two tensors are the same tensor, and when they share memory: one definition for all.

Memory accounting (:mod:`searchmerge.analysis.memory`), the runtime's tensor layout
(:mod:`searchmerge.runtime.measure`), the deployment export
(:mod:`searchmerge.training.deployment`) and the checkpoint store's aliases
(:mod:`searchmerge.storage.store`) all ask these two questions; they answer them here, so
that they cannot disagree on which tensors a merged model holds once.

It lives in the storage layer, the lowest layer that holds tensors (``core`` stays
torch-free), so that every layer above it can import it.

Public names: :func:`storage_identity`, :func:`tensor_identity`.
"""

from __future__ import annotations

import torch

__all__ = ["storage_identity", "tensor_identity"]


def storage_identity(tensor: torch.Tensor) -> tuple[str, int] | None:
    """Which memory ``tensor`` lives in: equal identities mean the same bytes, counted once.

    Args:
        tensor: Any tensor (a view, a parameter, a buffer).

    Returns:
        Its device and the address of its storage; ``None`` on the meta device, where
        tensors have no memory to share (every storage there has address 0).

    Example:
        >>> import torch
        >>> weight = torch.zeros(4, 4)
        >>> storage_identity(weight) == storage_identity(weight.t())
        True
    """
    if tensor.device.type == "meta":
        return None
    return (str(tensor.device), tensor.untyped_storage().data_ptr())


def tensor_identity(tensor: torch.Tensor) -> tuple[object, ...] | None:
    """What makes two tensors one tensor: the same view of the same storage.

    Tied parameters (one ``nn.Parameter`` in two models, or two state-dict keys of one
    model) have equal identities. Views that merely overlap, or that read the same bytes
    with other strides (a transpose), do not.

    Args:
        tensor: Any tensor.

    Returns:
        Its storage identity with the view's offset, shape, strides and dtype; ``None``
        for an empty tensor or one on the meta device, which is never tied to another.

    Example:
        >>> import torch
        >>> weight = torch.zeros(4, 4)
        >>> tensor_identity(weight) == tensor_identity(weight.detach())
        True
        >>> tensor_identity(weight) == tensor_identity(weight.t())
        False
    """
    storage = storage_identity(tensor)
    if storage is None or tensor.numel() == 0:
        return None
    return (*storage, tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
