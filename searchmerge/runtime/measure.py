"""Measure a profile: the models' compute on the device present and each plan's tensor layout.

Per model, at every batch size: inference time (the least of a few runs after a warm-up,
synchronised on CUDA) and run memory (the analysis' activation measurement: CUDA's
allocator peak, or the CPU profiler's). Models of one architecture and input shape are
measured once: sharing and weights change which tensors exist, not the arithmetic. Per
plan, the models are merged by it and the distinct tensors listed, as a deployment would
hold them. On CUDA each model's load is measured too (its tensors copied from pinned host
memory), and the link's bandwidth follows; elsewhere the profile takes a configured
bandwidth (PCIe 3 x16 by default) and a load is the model's bytes over it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from searchmerge.analysis import ShareableGroup, analyze, measure_activation_bytes
from searchmerge.analysis.memory import (
    example_inputs,
    model_tensors,
    unique_tensor_bytes,
)
from searchmerge.config.deploy import PCIE3_X16_BYTES_PER_S
from searchmerge.config.workload import ModelSpec, Workload
from searchmerge.core.errors import SearchmergeError
from searchmerge.core.space import SharingPlan
from searchmerge.runtime.layout import TensorLayout
from searchmerge.runtime.profile import (
    ModelProfile,
    PlanProfile,
    Profile,
    plan_fingerprint,
    workload_fingerprint,
)
from searchmerge.storage.identity import tensor_identity
from searchmerge.training.merge import merge_models

__all__ = ["BATCH_SIZES", "layout_of", "measure_profile", "tensor_index"]

#: The batch sizes Gemel's scheduler chooses from, and one more.
BATCH_SIZES = (1, 2, 4, 8)


def layout_of(models: Mapping[str, nn.Module]) -> TensorLayout:
    """The distinct tensors of ``models`` (tied tensors once) and each model's layers.

    A tensor is named by its first occurrence (``model/state.key``, models in the given
    order), exactly as :func:`searchmerge.training.deployment.export_deployment` names it in the
    weights file. A layer is a module that owns tensors directly, in module order.
    """
    return tensor_index(models)[0]


def tensor_index(models: Mapping[str, nn.Module]) -> tuple[TensorLayout, dict[str, dict[str, int]]]:
    """The layout of ``models`` and, per model, the id of the tensor behind each state-dict key."""
    keys: list[str] = []
    sizes: list[int] = []
    index_of: dict[tuple[object, ...], int] = {}
    layers: dict[str, tuple[tuple[str, tuple[int, ...]], ...]] = {}
    ids: dict[str, dict[str, int]] = {}
    for name, model in models.items():
        per_layer: dict[str, list[int]] = {}
        ids[name] = {}
        for state_key, tensor in model.state_dict(keep_vars=True).items():
            identity = tensor_identity(tensor)
            index = index_of.get(identity) if identity is not None else None
            if index is None:
                index = len(keys)
                keys.append(f"{name}/{state_key}")
                sizes.append(tensor.numel() * tensor.element_size())
                if identity is not None:
                    index_of[identity] = index
            per_layer.setdefault(state_key.rpartition(".")[0], []).append(index)
            ids[name][state_key] = index
        layers[name] = tuple((layer, tuple(members)) for layer, members in per_layer.items())
    return TensorLayout(keys=tuple(keys), sizes=tuple(sizes), layers=layers), ids


def measure_profile(
    workload: Workload,
    plans: Mapping[str, SharingPlan],
    *,
    models: Mapping[str, nn.Module] | None = None,
    groups: Sequence[ShareableGroup] | None = None,
    device: str | torch.device | None = None,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    link_bytes_per_s: float | None = None,
    repeats: int = 3,
    progress: Callable[[str], None] | None = None,
) -> Profile:
    """Measure what running ``workload`` costs on ``device``, and lay out each plan's tensors.

    Args:
        workload: The models.
        plans: The plans to lay out, by the name the profile keeps them under.
        models: The built models (default: built from the workload; their weights do
            not matter, only their architectures).
        groups: The workload's shareable groups (default: found by the analysis).
        device: Where to measure (default: CUDA when present, else the CPU).
        batch_sizes: Batch sizes to measure.
        link_bytes_per_s: Host-to-device bandwidth to assume; default: measured on CUDA,
            PCIe 3 x16 elsewhere.
        repeats: Timed runs per batch size (after one warm-up); the least is kept.
        progress: Called with one line per model measured.

    Returns:
        The profile.
    """
    if repeats < 1:
        raise SearchmergeError(f"repeats must be at least 1, got {repeats}")
    say = progress or (lambda _line: None)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    models = dict(models) if models is not None else workload.build()
    if groups is None:
        groups = analyze(workload, built=models).groups
    by_key: dict[tuple[object, ...], ModelProfile] = {}
    profiles = []
    for spec in workload.models:
        key = _compute_key(spec)
        known = by_key.get(key)
        if known is None:
            say(f"measuring {spec.name} on {device} at batch sizes {list(batch_sizes)} ...")
            known = _measure_model(spec.name, models[spec.name], spec.input_shape, batch_sizes, device, repeats)
            by_key[key] = known
        profiles.append(known if known.name == spec.name else replace(known, name=spec.name, measured_as=known.name))
    measured = link_bytes_per_s is None and device.type == "cuda"
    sizes = {name: unique_tensor_bytes(model_tensors([model])) for name, model in models.items()}
    if measured:
        say("measuring each model's load: its tensors copied from pinned host memory ...")
        loads = {name: _measure_load(model, device) for name, model in models.items()}
        link_bytes_per_s = sum(sizes.values()) / sum(loads.values())
    else:
        link_bytes_per_s = link_bytes_per_s or PCIE3_X16_BYTES_PER_S
        loads = {name: size / link_bytes_per_s for name, size in sizes.items()}
    profiles = [replace(profile, load_seconds=loads[profile.name]) for profile in profiles]
    fingerprint = workload_fingerprint(workload)
    plan_profiles = []
    for name, plan in plans.items():
        merged = models if not plan.shared else merge_models(models, groups, plan, init="first")
        groups_shared = tuple(sorted(plan.shared))
        plan_profiles.append(PlanProfile(
            name=name,
            groups=groups_shared,
            fingerprint=plan_fingerprint(fingerprint, groups_shared),
            layout=layout_of(merged),
        ))
    return Profile(
        device="cpu" if device.type == "cpu" else f"{device.type}: {_device_name(device)}",
        workload=workload.name,
        workload_fingerprint=fingerprint,
        batch_sizes=tuple(batch_sizes),
        link_bytes_per_s=float(link_bytes_per_s),
        link_measured=measured,
        models=tuple(profiles),
        plans=tuple(plan_profiles),
    )


# --- measuring --------------------------------------------------------------------


def _measure_model(
    name: str, model: nn.Module, input_shape: Sequence[int], batch_sizes: Sequence[int], device: torch.device,
    repeats: int,
) -> ModelProfile:
    home = next((t.device for t in model.state_dict().values()), torch.device("cpu"))
    model = model.to(device).eval()
    try:
        seconds = {b: _time_inference(model, input_shape, b, device, repeats) for b in batch_sizes}
        activations = {b: measure_activation_bytes(model, input_shape, b, device) for b in batch_sizes}
        shares = _layer_shares(model, input_shape, min(batch_sizes), device)
    finally:
        model.to(home)
    return ModelProfile(name, seconds, activations, shares, name, load_seconds=0.0)


def _time_inference(model: nn.Module, input_shape: Sequence[int], batch: int, device: torch.device, repeats: int) -> float:
    inputs = example_inputs(model, input_shape, batch, device)
    times = []
    with torch.inference_mode():
        for attempt in range(repeats + 1):
            _synchronize(device)
            start = time.perf_counter()
            model(inputs)
            _synchronize(device)
            if attempt:  # the first run warms up (allocator, cuDNN's algorithm choice)
                times.append(time.perf_counter() - start)
    return min(times)  # on a shared machine other work only ever adds time: the least is the model's


def _layer_shares(model: nn.Module, input_shape: Sequence[int], batch: int, device: torch.device) -> tuple[float, ...]:
    """Share of one inference each tensor-owning module takes, in state-dict layer order."""
    order = list(dict.fromkeys(key.rpartition(".")[0] for key in model.state_dict(keep_vars=True)))
    modules = dict(model.named_modules())
    spent = dict.fromkeys(order, 0.0)
    started: dict[str, float] = {}
    handles = []

    def before(name: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            _synchronize(device)
            started[name] = time.perf_counter()
        return hook

    def after(name: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            _synchronize(device)
            spent[name] += time.perf_counter() - started.pop(name, time.perf_counter())
        return hook

    for name in order:
        handles.append(modules[name].register_forward_pre_hook(before(name)))
        handles.append(modules[name].register_forward_hook(after(name)))
    try:
        with torch.inference_mode():
            model(example_inputs(model, input_shape, batch, device))
    finally:
        for handle in handles:
            handle.remove()
    total = sum(spent.values())
    if total <= 0:
        return tuple(1.0 / len(order) for _ in order) if order else ()
    return tuple(spent[name] / total for name in order)


def _measure_load(model: nn.Module, device: torch.device) -> float:
    """Seconds to copy the model's tensors to the device from pinned host memory (after a warm-up copy)."""
    pinned = [t.detach().to("cpu").contiguous().pin_memory() for t in model.state_dict().values() if t.numel()]
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(2):  # the first copy warms up the copy engine and the allocator
        torch.cuda.synchronize(device)
        start.record()
        copies = [tensor.to(device, non_blocking=True) for tensor in pinned]
        end.record()
        torch.cuda.synchronize(device)
        times.append(start.elapsed_time(end) / 1000.0)
        del copies
    return times[-1]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)


def _compute_key(spec: ModelSpec) -> tuple[object, ...]:
    """Models with equal keys compute the same: measured once."""
    if not spec.arch:
        return ("module", spec.name)
    return (spec.arch, repr(sorted(spec.kwargs.items())), tuple(spec.input_shape))
