"""Layer analysis: signatures, shareable groups and memory accounting."""

from searchmerge.analysis.analyze import AnalysisResult, ModelMemory, PairStats, analyze
from searchmerge.analysis.groups import ShareableGroup, common_layers, find_groups
from searchmerge.analysis.layers import (
    Layer,
    LayerSignature,
    is_norm_layer,
    layer_signature,
    weighted_layers,
)
from searchmerge.analysis.memory import measure_activation_bytes, unique_tensor_bytes

__all__ = [
    "AnalysisResult",
    "Layer",
    "LayerSignature",
    "ModelMemory",
    "PairStats",
    "ShareableGroup",
    "analyze",
    "common_layers",
    "find_groups",
    "is_norm_layer",
    "layer_signature",
    "measure_activation_bytes",
    "unique_tensor_bytes",
    "weighted_layers",
]
