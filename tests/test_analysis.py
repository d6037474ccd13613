"""Layer analysis on hand-built models where the right answer is known by construction."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from searchmerge.analysis import (
    analyze,
    layer_signature,
    measure_activation_bytes,
    unique_tensor_bytes,
)
from tests.conftest import TinyNet


def conv_bytes(cin: int, cout: int, k: int, bias: bool = True) -> int:
    return 4 * (cin * cout * k * k + (cout if bias else 0))


def test_identical_models_share_every_layer_and_half_their_weights() -> None:
    result = analyze({"a": TinyNet(), "b": TinyNet()})
    assert [m.layers for m in result.models] == [4, 4]
    assert len(result.groups) == 4
    (pair,) = result.pairs
    assert pair.common_layers == 4 and pair.layers_fraction == 1.0
    expected = conv_bytes(3, 8, 3) + conv_bytes(8, 8, 3) + conv_bytes(8, 16, 1) + 4 * (16 * 10 + 10)
    assert pair.saved_bytes == expected
    assert result.max_sharing_saved_bytes == expected
    # Batch norm stays private by default, so slightly less than half is saved.
    assert 0.45 < result.saved_fraction < 0.5
    assert result.max_sharing_bytes == result.total_bytes - expected


def test_different_heads_do_not_match() -> None:
    result = analyze({"digits": TinyNet(classes=10), "parity": TinyNet(classes=2)})
    names = {g.name for g in result.groups}
    assert names == {"stem", "body", "head_conv"}
    assert all(g.members == (("digits", g.name), ("parity", g.name)) for g in result.groups)


def test_repeated_signatures_pair_in_module_order_and_need_fewest_copies() -> None:
    a = nn.Sequential(nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3))
    b = nn.Sequential(nn.Conv2d(4, 4, 3))
    c = nn.Sequential(nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3))
    result = analyze({"a": a, "b": b, "c": c})
    groups = sorted(result.groups, key=lambda g: g.name)
    assert [g.members for g in groups] == [(("a", "0"), ("b", "0"), ("c", "0")), (("a", "1"), ("c", "1"))]
    # 6 layers need max(3, 1, 2) = 3 copies: 3 layers' worth saved.
    assert result.max_sharing_saved_bytes == 3 * conv_bytes(4, 4, 3)
    assert all(len({model for model, _ in g.members}) == len(g.members) for g in groups)


def test_every_config_field_is_part_of_the_signature() -> None:
    base = nn.Conv2d(8, 8, 3, stride=1, padding=1)
    variants = [
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.Conv2d(8, 8, 3, stride=1, padding=0),
        nn.Conv2d(8, 8, 3, stride=1, padding=1, dilation=2),
        nn.Conv2d(8, 8, 3, stride=1, padding=1, groups=2),
        nn.Conv2d(8, 8, 3, stride=1, padding=1, bias=False),
        nn.Conv2d(8, 8, 5, stride=1, padding=1),
        nn.Conv2d(8, 16, 3, stride=1, padding=1),
        nn.Conv2d(8, 8, 3, stride=1, padding=1).half(),
    ]
    assert layer_signature(base) == layer_signature(nn.Conv2d(8, 8, 3, padding=1))
    signatures = {layer_signature(v) for v in variants}
    assert layer_signature(base) not in signatures and len(signatures) == len(variants)
    assert layer_signature(nn.ReLU()) is None


def test_norm_layers_private_by_default_shareable_by_option_and_frozen_matches_plain() -> None:
    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    frozen = nn.Sequential(nn.Conv2d(3, 8, 3), FrozenBatchNorm2d(8))
    assert len(analyze({"plain": plain, "frozen": frozen}).groups) == 1
    shared = analyze({"plain": plain, "frozen": frozen}, share_norm=True)
    assert {g.signature.kind for g in shared.groups} == {"Conv2d", "BatchNorm2d"}
    norm_group = next(g for g in shared.groups if g.signature.kind == "BatchNorm2d")
    assert norm_group.bytes == 4 * 8 * 4  # weight, bias, running mean, running var


def test_tied_tensors_count_once() -> None:
    a, b = nn.Linear(8, 8), nn.Linear(8, 8)
    b.weight = a.weight
    assert unique_tensor_bytes([a.weight, a.bias, b.weight, b.bias]) == 4 * (64 + 8 + 8)
    result = analyze({"a": nn.Sequential(a), "b": nn.Sequential(b)})
    assert result.total_bytes == 4 * (64 + 8 + 8)


def test_activation_memory_grows_with_batch_size() -> None:
    model = TinyNet()
    one = measure_activation_bytes(model, (3, 32, 32), 1)
    four = measure_activation_bytes(model, (3, 32, 32), 4)
    # The first conv alone writes 8 x 32 x 32 floats per sample.
    assert one >= 8 * 32 * 32 * 4
    assert four > one and four >= 4 * 8 * 32 * 32 * 4


def test_json_document_shape() -> None:
    result = analyze({"a": TinyNet(), "b": TinyNet(classes=2)}, batch_sizes=[1, 2])
    document = json.loads(json.dumps(result.to_dict()))
    assert set(document) >= {"models", "pairs", "workload", "groups"}
    assert set(document["models"][0]) >= {"name", "layers", "param_bytes"}
    assert set(document["models"][0]["activation_bytes"]) == {"1", "2"}
    assert set(document["pairs"][0]) >= {"a", "b", "common_layers", "saved_bytes"}
    assert set(document["workload"]) >= {"total_bytes", "max_sharing_bytes", "saved_fraction"}
    group = document["groups"][0]
    assert set(group) >= {"signature", "members", "bytes", "saved_bytes"}
    assert all(isinstance(m, list) and len(m) == 2 for m in group["members"])
    assert document["workload"]["max_sharing_bytes"] == document["workload"]["total_bytes"] - sum(
        g["saved_bytes"] for g in document["groups"]
    )


@pytest.mark.parametrize("other", ["fasterrcnn_resnet50_fpn", "resnet152"])
def test_paper_claims_resnet50_shares_at_least_50_layers(other: str) -> None:
    result = analyze(["resnet50", other])
    assert result.pairs[0].common_layers >= 50


def test_paper_claim_two_instances_share_everything_and_save_half() -> None:
    result = analyze(["resnet50", "resnet50"], share_norm=True)
    pair = result.pairs[0]
    assert pair.layers_fraction == 1.0
    assert pair.saved_fraction == pytest.approx(0.5, abs=0.005)


@pytest.mark.parametrize("arch,reference_mb", [("resnet50", 98), ("resnet152", 232), ("vgg16", 528)])
def test_parameter_memory_matches_published_sizes(arch: str, reference_mb: float) -> None:
    model = analyze([arch, arch]).models[0]
    assert abs(model.param_bytes / 2**20 - reference_mb) / reference_mb < 0.15


def test_detector_input_is_a_list_of_images() -> None:
    from searchmerge.analysis.memory import example_inputs
    from searchmerge.config.workload import ModelSpec

    detector = ModelSpec(name="ssd", arch="ssdlite320_mobilenet_v3_large", kwargs={"weights_backbone": None}).build()
    inputs = example_inputs(detector, (3, 64, 64), 2, torch.device("cpu"))
    assert isinstance(inputs, list) and len(inputs) == 2


def test_batch_norm_without_affine_parameters_is_a_norm_layer() -> None:
    from searchmerge.zoo import small_resnet

    plain, bare = small_resnet(8), small_resnet(8, affine_norm=False)
    result = analyze({"plain": plain, "bare": bare}, share_norm=True)
    norm_groups = [g for g in result.groups if g.signature.kind == "BatchNorm2d"]
    # Affine and non-affine batch norms hold different tensors, so they never match.
    assert norm_groups == []
    assert len(analyze({"plain": plain, "bare": bare}).groups) == 10
