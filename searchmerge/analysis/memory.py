"""Memory accounting: weights and activations.

Weight memory counts every tensor storage once, so models that already share
tensors (merged models) are not double counted. Activation memory is measured by
running the model: on CUDA with ``torch.cuda.max_memory_allocated``, on the CPU
with the PyTorch profiler's memory events (the running total of allocations).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from searchmerge.storage.identity import storage_identity


def unique_tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (a shared tensor counts once).

    Storages are told apart by :func:`searchmerge.storage.identity.storage_identity`; a
    meta tensor has no storage to share and counts its own size.
    """
    seen: dict[object, int] = {}
    for tensor in tensors:
        storage = storage_identity(tensor)
        if storage is None:
            seen[("meta", id(tensor))] = tensor.numel() * tensor.element_size()
        else:
            seen[storage] = tensor.untyped_storage().nbytes()
    return sum(seen.values())


def model_tensors(models: Iterable[nn.Module], *, buffers: bool = True) -> list[torch.Tensor]:
    """All parameters (and buffers) of the given models."""
    tensors: list[torch.Tensor] = []
    for model in models:
        tensors.extend(p.detach() for p in model.parameters())
        if buffers:
            tensors.extend(b for b in model.buffers() if b is not None)
    return tensors


def example_inputs(model: nn.Module, input_shape: Sequence[int], batch_size: int, device: torch.device) -> object:
    """A random batch in the form the model's ``forward`` takes.

    torchvision detectors take a list of images and resize them themselves;
    everything else takes one batched tensor.
    """
    generator = torch.Generator().manual_seed(0)
    batch = torch.rand((batch_size, *input_shape), generator=generator).to(device)
    if _is_detector(model):
        return list(batch.unbind(0))
    return batch


def measure_activation_bytes(
    model: nn.Module, input_shape: Sequence[int], batch_size: int, device: torch.device | str = "cpu"
) -> int:
    """Peak memory one inference forward pass allocates beyond its weights and input."""
    device = torch.device(device)
    model = model.to(device).eval()
    inputs = example_inputs(model, input_shape, batch_size, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with torch.inference_mode():
            model(inputs)
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    return _cpu_peak_bytes(model, inputs)


def _cpu_peak_bytes(model: nn.Module, inputs: object) -> int:
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), torch.inference_mode(), profile(
        activities=[ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        model(inputs)
    with tempfile.TemporaryDirectory() as folder:
        trace = Path(folder) / "trace.json"
        with _quiet_stderr():
            prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    totals = [
        e["args"]["Total Allocated"]
        for e in events
        if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0
    ]
    return int(max(totals, default=0))


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the profiler backend's log lines, which it writes straight to fd 2."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _is_detector(model: nn.Module) -> bool:
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    return isinstance(getattr(model, "transform", None), GeneralizedRCNNTransform)
