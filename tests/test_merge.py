"""The merge builder and the merged deployment artifact, on tiny zoo models that run on a CPU."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from searchmerge import zoo
from searchmerge.analysis import (
    AnalysisResult,
    ShareableGroup,
    analyze,
    unique_tensor_bytes,
)
from searchmerge.analysis.layers import shareable_tensors
from searchmerge.analysis.memory import model_tensors
from searchmerge.config.workload import ModelSpec, Workload
from searchmerge.core.errors import SearchmergeError
from searchmerge.core.space import SharingPlan
from searchmerge.training.deployment import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    export_deployment,
    load_deployment,
)
from searchmerge.training.merge import merge_models

INPUT_SHAPE = (3, 16, 16)
ZOO_SPECS = (
    ModelSpec(name="r8", arch="searchmerge.zoo:small_resnet", kwargs={"depth": 8}, input_shape=INPUT_SHAPE),
    ModelSpec(
        name="r8_parity",
        arch="searchmerge.zoo:small_resnet",
        kwargs={"depth": 8, "num_classes": 2},
        input_shape=INPUT_SHAPE,
        options={"task": "parity"},
    ),
    ModelSpec(name="r14", arch="searchmerge.zoo:small_resnet", kwargs={"depth": 14}, input_shape=INPUT_SHAPE),
    ModelSpec(name="vgg", arch="searchmerge.zoo:small_vgg", input_shape=INPUT_SHAPE),
)


def _randomize_norm_stats(model: nn.Module, generator: torch.Generator) -> None:
    """Give batch norms non-default running statistics, so that losing them would show."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator))
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)


def _build_zoo(workload: Workload) -> dict[str, nn.Module]:
    """The workload's models, each with its own random weights and norm statistics."""
    models = {}
    for seed, spec in enumerate(workload.models):
        torch.manual_seed(seed)
        model = spec.build()
        with torch.no_grad():
            _randomize_norm_stats(model, torch.Generator().manual_seed(100 + seed))
        models[spec.name] = model
    return models


@pytest.fixture
def workload() -> Workload:
    return Workload(models=ZOO_SPECS, name="zoo")


@pytest.fixture
def models(workload: Workload) -> dict[str, nn.Module]:
    return _build_zoo(workload)


@pytest.fixture
def analysis(models: dict[str, nn.Module]) -> AnalysisResult:
    return analyze(models, built=models)


def _plan(kind: str, groups: tuple[ShareableGroup, ...]) -> SharingPlan:
    if kind == "none":
        return SharingPlan.of([])
    if kind == "all":
        return SharingPlan.of(g.name for g in groups)
    # A few: the largest group, one with every model in it, and the smallest.
    everyone = next(g for g in groups if len(g.members) == 4)
    return SharingPlan.of({groups[0].name, everyone.name, groups[-1].name})


def _total_bytes(models: Mapping[str, nn.Module]) -> int:
    return unique_tensor_bytes(model_tensors(models.values()))


def _predicted_bytes(analysis: AnalysisResult, plan: SharingPlan) -> int:
    return analysis.total_bytes - sum(g.saved_bytes for g in analysis.groups if g.name in plan.shared)


def _member_tensors(models: Mapping[str, nn.Module], group: ShareableGroup) -> list[dict[str, torch.Tensor]]:
    return [shareable_tensors(models[model].get_submodule(layer)) for model, layer in group.members]


def _outputs(models: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
    batch = torch.rand((2, *INPUT_SHAPE), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return {name: model.eval()(batch.to(next(model.parameters()).device)).cpu() for name, model in models.items()}


# --- merge_models -----------------------------------------------------------


def test_zoo_workload_has_groups_of_every_size(analysis: AnalysisResult) -> None:
    sizes = {len(g.members) for g in analysis.groups}
    assert {3, 4} <= sizes
    assert analysis.groups[0].saved_bytes >= analysis.groups[-1].saved_bytes


@pytest.mark.parametrize("kind", ["none", "all", "few"])
@pytest.mark.parametrize("init", ["first", "average"])
def test_merged_bytes_equal_the_analysis_prediction(
    models: dict[str, nn.Module], analysis: AnalysisResult, kind: str, init: str
) -> None:
    plan = _plan(kind, analysis.groups)
    merged = merge_models(models, analysis.groups, plan, init=init)  # type: ignore[arg-type]
    assert list(merged) == list(models)
    assert _total_bytes(merged) == _predicted_bytes(analysis, plan)
    if kind == "all":
        assert _total_bytes(merged) == analysis.max_sharing_bytes
    if kind == "none":
        assert _total_bytes(merged) == analysis.total_bytes


def test_shared_members_hold_the_very_same_parameter(models: dict[str, nn.Module], analysis: AnalysisResult) -> None:
    plan = _plan("few", analysis.groups)
    merged = merge_models(models, analysis.groups, plan)
    for group in analysis.groups:
        members = [merged[model].get_submodule(layer) for model, layer in group.members]
        for tensor_name in shareable_tensors(members[0]):
            objects = [m._parameters.get(tensor_name, m._buffers.get(tensor_name)) for m in members]
            if group.name in plan.shared:
                assert all(obj is objects[0] for obj in objects), (group.name, tensor_name)
                assert isinstance(objects[0], nn.Parameter)
            else:
                storages = {obj.untyped_storage().data_ptr() for obj in objects}
                assert len(storages) == len(objects), (group.name, tensor_name)


def test_originals_are_not_modified(models: dict[str, nn.Module], analysis: AnalysisResult) -> None:
    before = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in models.items()}
    original_storages = {t.untyped_storage().data_ptr() for t in model_tensors(models.values())}
    merged = merge_models(models, analysis.groups, _plan("all", analysis.groups))
    _one_sgd_step(merged["r8"])

    merged_storages = {t.untyped_storage().data_ptr() for t in model_tensors(merged.values())}
    assert not original_storages & merged_storages
    assert _total_bytes(models) == analysis.total_bytes
    for name, model in models.items():
        after = model.state_dict()
        assert after.keys() == before[name].keys()
        assert all(torch.equal(after[k], before[name][k]) for k in after), name


def test_first_init_starts_from_the_first_member(models: dict[str, nn.Module], analysis: AnalysisResult) -> None:
    merged = merge_models(models, analysis.groups, _plan("all", analysis.groups), init="first")
    for group in analysis.groups:
        first = _member_tensors(models, group)[0]
        for tensor_name, value in _member_tensors(merged, group)[0].items():
            assert torch.equal(value, first[tensor_name]), (group.name, tensor_name)


def test_average_init_starts_from_the_members_mean(models: dict[str, nn.Module], analysis: AnalysisResult) -> None:
    merged = merge_models(models, analysis.groups, _plan("all", analysis.groups), init="average")
    for group in analysis.groups:
        originals = _member_tensors(models, group)
        for tensor_name, value in _member_tensors(merged, group)[0].items():
            values = [tensors[tensor_name] for tensors in originals]
            mean = sum(values[1:], values[0]) / len(values)
            torch.testing.assert_close(value, mean)
            # The members start from different random weights, so the mean is none of them.
            assert not torch.equal(value, values[0])


def _one_sgd_step(model: nn.Module) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    batch = torch.rand((4, *INPUT_SHAPE), generator=torch.Generator().manual_seed(3))
    model(batch).square().mean().backward()
    optimizer.step()


def test_a_step_on_one_model_moves_the_weights_the_others_share(
    models: dict[str, nn.Module], analysis: AnalysisResult
) -> None:
    plan = _plan("all", analysis.groups)
    merged = merge_models(models, analysis.groups, plan)
    shared = next(g for g in analysis.groups if {"r8", "vgg"} <= set(g.models))
    layer_in_vgg = dict(shared.members)["vgg"]
    seen_by_b = merged["vgg"].get_submodule(layer_in_vgg).weight
    private_of_b = merged["vgg"].features[1].weight  # a batch norm: private by default
    before_shared, before_private = seen_by_b.detach().clone(), private_of_b.detach().clone()
    assert seen_by_b.requires_grad, "shared parameters must stay trainable"

    _one_sgd_step(merged["r8"])

    assert not torch.equal(seen_by_b, before_shared)
    assert torch.equal(private_of_b, before_private)
    assert private_of_b.grad is None


def test_a_plan_naming_a_missing_group_is_refused(models: dict[str, nn.Module], analysis: AnalysisResult) -> None:
    plan = SharingPlan.of({analysis.groups[0].name, "no.such.layer"})
    with pytest.raises(SearchmergeError, match=r"no\.such\.layer"):
        merge_models(models, analysis.groups, plan)


def test_an_unknown_init_is_refused(models: dict[str, nn.Module], analysis: AnalysisResult) -> None:
    with pytest.raises(SearchmergeError, match="median"):
        merge_models(models, analysis.groups, SharingPlan.of([]), init="median")  # type: ignore[arg-type]


def test_shared_norm_layers_share_their_running_statistics(models: dict[str, nn.Module]) -> None:
    analysis = analyze(models, built=models, share_norm=True)
    norm_groups = [g for g in analysis.groups if g.signature.kind == "BatchNorm2d"]
    assert norm_groups
    plan = _plan("all", analysis.groups)
    merged = merge_models(models, analysis.groups, plan)

    assert _total_bytes(merged) == _predicted_bytes(analysis, plan)
    for group in norm_groups:
        members = [merged[model].get_submodule(layer) for model, layer in group.members]
        for buffer in ("running_mean", "running_var"):
            assert all(m._buffers[buffer] is members[0]._buffers[buffer] for m in members), group.name
        assert all(m.weight is members[0].weight for m in members)
        # Integer book-keeping stays private.
        counters = {m.num_batches_tracked.untyped_storage().data_ptr() for m in members}
        assert len(counters) == len(members)


# --- deployment -------------------------------------------------------------


@pytest.fixture
def merged(models: dict[str, nn.Module], analysis: AnalysisResult) -> dict[str, nn.Module]:
    merged = merge_models(models, analysis.groups, _plan("all", analysis.groups))
    _one_sgd_step(merged["r14"])  # the deployed weights are trained ones, not the initial average
    return merged


def _tie_classes(models: Mapping[str, nn.Module]) -> set[frozenset[tuple[str, str]]]:
    """Which (model, state_dict key) slots hold one tensor object together."""
    by_object: dict[int, set[tuple[str, str]]] = {}
    for name, model in models.items():
        for key, tensor in model.state_dict(keep_vars=True).items():
            by_object.setdefault(id(tensor), set()).add((name, key))
    return {frozenset(slots) for slots in by_object.values()}


def test_a_deployment_loads_back_identical_and_tied(
    tmp_path: Path, workload: Workload, merged: dict[str, nn.Module], analysis: AnalysisResult
) -> None:
    plan = _plan("all", analysis.groups)
    directory = export_deployment(tmp_path / "deploy", workload, merged, plan=plan, metadata={"trial": 3})
    deployment = load_deployment(directory)

    assert list(deployment.models) == workload.names
    assert deployment.plan == plan
    assert deployment.metadata == {"trial": 3}
    assert deployment.workload.models == workload.models
    assert all(spec.weights is None for spec in deployment.workload.models)

    assert _total_bytes(deployment.models) == _total_bytes(merged) == analysis.max_sharing_bytes
    assert _tie_classes(deployment.models) == _tie_classes(merged)
    expected, loaded = _outputs(merged), _outputs(deployment.models)
    assert all(torch.equal(loaded[name], expected[name]) for name in expected)


def test_a_deployment_stores_each_shared_tensor_once(
    tmp_path: Path, workload: Workload, merged: dict[str, nn.Module], analysis: AnalysisResult
) -> None:
    directory = export_deployment(tmp_path, workload, merged, plan=_plan("all", analysis.groups))
    with safe_open(str(directory / WEIGHTS_FILE), framework="pt") as file:
        file_keys = set(file.keys())

    entries = sum(len(m.state_dict()) for m in merged.values())
    duplicates = sum((len(g.members) - 1) * len(_member_tensors(merged, g)[0]) for g in analysis.groups)
    assert len(file_keys) == entries - duplicates == len(_tie_classes(merged))

    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    assert manifest["version"] == 1
    assert manifest["plan"] == sorted(g.name for g in analysis.groups)
    for group in analysis.groups:
        (model_a, layer_a), (model_b, layer_b) = group.members[:2]
        key_a = manifest["tensors"][model_a][f"{layer_a}.weight"]
        assert key_a == f"{model_a}/{layer_a}.weight"  # the first occurrence names it
        assert manifest["tensors"][model_b][f"{layer_b}.weight"] == key_a
    assert set(manifest["tensors"]["vgg"].values()) <= file_keys
    assert sorted(p.name for p in directory.iterdir()) == [MANIFEST_FILE, WEIGHTS_FILE]  # no temporary leftovers


def test_an_unmerged_deployment_keeps_every_tensor(
    tmp_path: Path, workload: Workload, models: dict[str, nn.Module]
) -> None:
    deployment = load_deployment(export_deployment(tmp_path, workload, models))
    assert deployment.plan is None
    assert _total_bytes(deployment.models) == _total_bytes(models)
    expected, loaded = _outputs(models), _outputs(deployment.models)
    assert all(torch.equal(loaded[name], expected[name]) for name in expected)


def test_a_deployment_keeps_the_study_settings_but_not_its_storage(
    tmp_path: Path, workload: Workload, models: dict[str, nn.Module]
) -> None:
    from searchmerge.config.settings import StudySettings

    settings = StudySettings.from_document({"seed": 5, "storage": "postgresql://user:secret@db/s",
                                            "drift": {"dusk": {"brightness": -0.1}}})
    directory = export_deployment(tmp_path, workload, models, settings=settings)
    assert load_deployment(directory).settings == settings
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    assert "storage" not in manifest["workload"]["settings"]
    # An older manifest kept the study file's sections as written, storage included: they read the same way.
    manifest["workload"]["settings"] = {"seed": 5, "storage": "sqlite:///s.db", "drift": {"dusk": {"brightness": -0.1}}}
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert load_deployment(directory).settings == settings
    manifest["workload"]["settings"] = {"seed": "five"}
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(SearchmergeError, match="its settings: seed must be an integer, got 'five'"):
        load_deployment(directory)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_weights_file_is_refused(
    tmp_path: Path, workload: Workload, merged: dict[str, nn.Module], damage: str
) -> None:
    directory = export_deployment(tmp_path, workload, merged)
    weights = directory / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(bytes(data[: len(data) - 100]))
    else:
        weights.unlink()
    with pytest.raises(SearchmergeError, match=WEIGHTS_FILE.replace(".", r"\.")):
        load_deployment(directory)


def test_a_directory_without_a_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SearchmergeError, match="not a searchmerge deployment"):
        load_deployment(tmp_path)


def test_a_manifest_of_another_version_is_refused(
    tmp_path: Path, workload: Workload, models: dict[str, nn.Module]
) -> None:
    directory = export_deployment(tmp_path, workload, models)
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    manifest["version"] = 99
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(SearchmergeError, match="version 99"):
        load_deployment(directory)


def test_a_model_given_as_a_raw_module_cannot_be_exported(tmp_path: Path, models: dict[str, nn.Module]) -> None:
    workload = Workload(models=(ZOO_SPECS[0], ModelSpec(name="handmade", module=zoo.small_vgg())))
    with pytest.raises(SearchmergeError, match="'handmade'.*without an architecture"):
        export_deployment(tmp_path, workload, {"r8": models["r8"], "handmade": models["vgg"]})
    assert not (tmp_path / MANIFEST_FILE).exists()


def test_models_that_do_not_match_the_workload_are_refused(
    tmp_path: Path, workload: Workload, models: dict[str, nn.Module]
) -> None:
    del models["vgg"]
    with pytest.raises(SearchmergeError, match="missing \\['vgg'\\]"):
        export_deployment(tmp_path, workload, models)


def test_metadata_that_is_not_json_is_refused(
    tmp_path: Path, workload: Workload, models: dict[str, nn.Module]
) -> None:
    with pytest.raises(SearchmergeError, match="JSON"):
        export_deployment(tmp_path, workload, models, metadata={"when": object()})
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_deployment_loads_onto_a_gpu_tied(
    tmp_path: Path, workload: Workload, merged: dict[str, nn.Module]
) -> None:
    deployment = load_deployment(export_deployment(tmp_path, workload, merged), device="cuda")
    assert all(t.is_cuda for t in model_tensors(deployment.models.values()))
    assert _tie_classes(deployment.models) == _tie_classes(merged)
    assert _total_bytes(deployment.models) == _total_bytes(merged)
    # Compared on the GPU with the in-memory models there too: the GPU's kernels (TF32
    # convolutions on recent cards) differ from the CPU's, the deployment must not.
    on_gpu = {name: model.to("cuda") for name, model in copy.deepcopy(merged).items()}
    expected, loaded = _outputs(on_gpu), _outputs(deployment.models)
    for name in expected:
        torch.testing.assert_close(loaded[name], expected[name], rtol=0, atol=0)
