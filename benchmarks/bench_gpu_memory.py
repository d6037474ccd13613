"""Measure on the accelerator the memory that merging saves: originals against a merged deployment.

Run by hand, on a machine with a GPU::

    python benchmarks/bench_gpu_memory.py                       # paper-scale workload, share every group
    python benchmarks/bench_gpu_memory.py --share none --batch-size 4

The analysis predicts the merged workload's weight memory from the layer signatures
alone; this benchmark checks that prediction where it matters, in device memory.
For the originals and for the merged workload (exported to a deployment folder and
loaded back with ``load_deployment``, as an edge box would) it prints:

- ``loaded``: ``torch.cuda.memory_allocated`` after the models are on the device
  (weights and buffers; the caching allocator rounds every tensor up to 512 bytes);
- ``running``: the peak (``max_memory_allocated``) while every model runs one
  inference pass at ``--batch-size``, one after another, as one box serving its
  cameras does: weights plus the largest activations of any one model.

Both are measured in the same process, one after the other, with the device memory
emptied between them. On a machine without CUDA it says so and prints only the bytes
counted from the tensors.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from searchmerge.analysis import analyze
from searchmerge.analysis.memory import (
    example_inputs,
    model_tensors,
    unique_tensor_bytes,
)
from searchmerge.config.study import load_study_file
from searchmerge.config.workload import Workload
from searchmerge.core.space import SearchSpace, SharingPlan
from searchmerge.training.deployment import export_deployment, load_deployment
from searchmerge.training.merge import merge_models

ROOT = Path(__file__).resolve().parents[1]
MB = 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default=str(ROOT / "studies" / "paper-scale.yaml"))
    parser.add_argument("--share", default="all", metavar="none|all|GROUP,...", help="the plan to deploy")
    parser.add_argument("--batch-size", type=int, default=1, help="frames per inference pass")
    args = parser.parse_args()

    workload, _ = load_study_file(args.study)
    started = time.perf_counter()
    originals = workload.build()
    analysis = analyze(workload, built=originals)
    space = SearchSpace.from_groups(analysis.groups)
    plan = SharingPlan.parse(args.share, list(space.names))
    merged = merge_models(originals, analysis.groups, plan, init="first")
    predicted_merged = analysis.total_bytes - space.saved_bytes(plan)
    counted_merged = unique_tensor_bytes(model_tensors(merged.values()))
    print(f"{workload.name}: {len(workload.models)} models, plan shares {len(plan)} of {len(space)} groups"
          f" (built and merged in {time.perf_counter() - started:.1f} s)")
    print(f"predicted by the analysis: originals {analysis.total_bytes / MB:.1f} MB,"
          f" merged {predicted_merged / MB:.1f} MB; counted from the merged tensors {counted_merged / MB:.1f} MB")

    if not torch.cuda.is_available():
        print("no CUDA device: device memory not measured")
        return
    device = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, batch size {args.batch_size}")

    original_loaded, original_running = measure(originals, workload, device, args.batch_size)
    with tempfile.TemporaryDirectory() as folder:
        export_deployment(folder, workload, merged, plan=plan)
        del merged
        gc.collect()
        merged_loaded, merged_running = measure_deployment(folder, workload, device, args.batch_size)

    print()
    print("| | predicted MB | loaded MB | running peak MB |")
    print("| --- | --- | --- | --- |")
    print(f"| originals | {analysis.total_bytes / MB:.1f} | {original_loaded / MB:.1f} | {original_running / MB:.1f} |")
    print(f"| merged | {predicted_merged / MB:.1f} | {merged_loaded / MB:.1f} | {merged_running / MB:.1f} |")
    print(f"| saved | {100 * (1 - predicted_merged / analysis.total_bytes):.1f}% |"
          f" {100 * (1 - merged_loaded / original_loaded):.1f}% | {100 * (1 - merged_running / original_running):.1f}% |")
    gap = abs(merged_loaded - predicted_merged) / predicted_merged
    print(f"merged loaded vs predicted: {100 * gap:.2f}% apart (allocator rounding)")


def measure(
    models: Mapping[str, nn.Module], workload: Workload, device: torch.device, batch_size: int
) -> tuple[int, int]:
    """(bytes allocated once the models are on ``device``, peak while each runs one pass)."""
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    on_device = {name: model.to(device).eval() for name, model in models.items()}
    loaded = torch.cuda.memory_allocated(device) - base
    running = _run_all(on_device, workload, device, batch_size, base)
    for model in on_device.values():
        model.to("cpu")
    del on_device
    gc.collect()
    torch.cuda.empty_cache()
    return loaded, running


def measure_deployment(folder: str, workload: Workload, device: torch.device, batch_size: int) -> tuple[int, int]:
    """The same as :func:`measure` for a deployment folder loaded straight onto ``device``."""
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    deployment = load_deployment(folder, device=device)
    gc.collect()
    loaded = torch.cuda.memory_allocated(device) - base
    running = _run_all(deployment.models, workload, device, batch_size, base)
    del deployment
    gc.collect()
    torch.cuda.empty_cache()
    return loaded, running


def _run_all(models: Mapping[str, nn.Module], workload: Workload, device: torch.device, batch_size: int, base: int) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        for name, model in models.items():
            inputs = example_inputs(model, workload.spec(name).input_shape, batch_size, device)
            model(inputs)
            del inputs
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


if __name__ == "__main__":
    main()
