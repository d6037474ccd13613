"""Weighted layers and their signatures: the paper's rule for what may be shared.

Two layers may share one copy of their weights when their configuration is
identical: same type, channels, kernel, stride, padding, dilation, groups, bias
(and dtype). A :class:`LayerSignature` captures exactly that configuration, so
"these layers match" is plain equality of signatures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

_NORM_TYPES: tuple[type, ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    FrozenBatchNorm2d,
)


@dataclass(frozen=True, order=True)
class LayerSignature:
    """The configuration of a layer that must be equal for two layers to share weights."""

    kind: str
    config: tuple[tuple[str, Any], ...]

    def __str__(self) -> str:
        return f"{self.kind}(" + ", ".join(f"{k}={_short(v)}" for k, v in self.config) + ")"


@dataclass(frozen=True)
class Layer:
    """One weighted layer of one model, named by its qualified module name."""

    model: str
    name: str
    signature: LayerSignature
    bytes: int
    is_norm: bool


def is_norm_layer(module: nn.Module) -> bool:
    """Normalisation layers carry a model's data statistics and are private by default."""
    return isinstance(module, _NORM_TYPES) or "Norm" in type(module).__name__


def shareable_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a layer owns directly that sharing would replace by one copy.

    Floating-point parameters and buffers (a batch norm's running statistics
    included); integer book-keeping such as ``num_batches_tracked`` stays private.
    """
    owned = dict(module.named_parameters(recurse=False))
    owned.update((n, b) for n, b in module.named_buffers(recurse=False) if b is not None)
    return {n: t for n, t in owned.items() if t is not None and t.is_floating_point()}


def layer_signature(module: nn.Module) -> LayerSignature | None:
    """The signature of a weighted layer, or ``None`` for modules without own weights."""
    tensors = shareable_tensors(module)
    if not tensors:
        return None
    dtype = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    if isinstance(module, nn.modules.conv._ConvNd):
        config: dict[str, Any] = {
            "in": module.in_channels,
            "out": module.out_channels,
            "kernel": tuple(module.kernel_size),
            "stride": tuple(module.stride),
            "padding": module.padding if isinstance(module.padding, str) else tuple(module.padding),
            "dilation": tuple(module.dilation),
            "groups": module.groups,
            "bias": module.bias is not None,
            "padding_mode": module.padding_mode,
        }
        if module.transposed:
            config["output_padding"] = tuple(module.output_padding)
        kind = type(module).__name__ if type(module).__module__.startswith("torch.nn") else _conv_kind(module)
    elif isinstance(module, nn.Linear):
        config = {"in": module.in_features, "out": module.out_features, "bias": module.bias is not None}
        kind = "Linear"
    elif isinstance(module, (nn.modules.batchnorm._NormBase, FrozenBatchNorm2d)):
        # FrozenBatchNorm2d (torchvision detectors) holds the same tensors as BatchNorm2d.
        num_features = getattr(module, "num_features", None) or module.weight.shape[0]
        config = {"features": num_features, "tensors": tuple(sorted(tensors))}
        kind = "BatchNorm2d" if isinstance(module, FrozenBatchNorm2d) else type(module).__name__
    else:
        config = {"tensors": tuple((n, tuple(t.shape)) for n, t in sorted(tensors.items()))}
        kind = type(module).__name__
    config["dtype"] = dtype
    return LayerSignature(kind=kind, config=tuple(config.items()))


def weighted_layers(model_name: str, model: nn.Module, *, share_norm: bool = False) -> list[Layer]:
    """The weighted layers of a model in module order.

    Normalisation layers are included only with ``share_norm``; the others are
    every module that owns floating-point weights (conv, linear, and any custom
    layer, which then matches on its class and tensor shapes).
    """
    layers = []
    for name, module in model.named_modules():
        signature = layer_signature(module)
        if signature is None:
            continue
        norm = is_norm_layer(module)
        if norm and not share_norm:
            continue
        size = sum(t.numel() * t.element_size() for t in shareable_tensors(module).values())
        layers.append(Layer(model=model_name, name=name, signature=signature, bytes=size, is_norm=norm))
    return layers


def _conv_kind(module: nn.Module) -> str:
    """Subclasses of a torch convolution match their torch base class."""
    for base in type(module).__mro__:
        if base.__module__.startswith("torch.nn.modules.conv") and not base.__name__.startswith("_"):
            return base.__name__
    return type(module).__name__


def _short(value: Any) -> str:
    if isinstance(value, tuple) and value and all(isinstance(v, int) for v in value):
        return "x".join(map(str, value)) if len(set(value)) > 1 else str(value[0])
    return str(value)
