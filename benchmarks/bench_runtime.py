"""What a plan does on an edge box's GPU budget: swaps, lag, frames processed; and the simulator's speed.

Run by hand from the repository root::

    python benchmarks/bench_runtime.py                 # every section; profiles cached in /tmp
    python benchmarks/bench_runtime.py --sections figure1,speed

Sections:

- ``figure1``: the paper's Figure 1. Six VGG16s (one per camera) on a GPU budget that holds
  three with their run memory. Without sharing, models are swapped in and out at nearly every
  turn; with all six merged (every layer shared: one VGG16's weights) nothing is swapped.
  Same profile, same streams, side by side, for LRU and look-ahead eviction.
- ``paper``: ``studies/paper-scale.yaml`` at Gemel's three memory levels (the minimum that
  runs: the largest model alone; 50% and 75% of what holds every model unshared), for no
  sharing and max sharing: processed fraction, loading share, swaps.
- ``speed``: the simulator alone, 8 streams x 60 s x 30 fps, on one CPU core.
- ``switch``: the bytes the runtime moves (on CUDA, or the simulated device) when it switches
  between two merged models, against the unique bytes the analysis predicts.
- ``gpu`` (only with CUDA): the real runtime on the GPU, driven by the same scheduler, against
  the simulator's prediction for the same settings (loads, evictions, processed fraction; goal
  within 10%).

The profiles are measured on the device present. On a machine without a GPU the inference
times are the CPU's (hundreds of milliseconds per frame), so the frame rate and latency target
are derived from them unless given: the frame rate at which the streams would use 60% of the
device with every model resident at batch size 2, and a target of three frame intervals (15
fps and 200 ms are three intervals too). Loads are bytes over the PCIe 3 x16 bandwidth there.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from searchmerge.analysis import analyze
from searchmerge.analysis.memory import (
    example_inputs,
    model_tensors,
    unique_tensor_bytes,
)
from searchmerge.cli.edgebox import memory_levels
from searchmerge.config.deploy import DeploySettings, format_bytes
from searchmerge.config.study import load_study_file
from searchmerge.config.workload import Workload, from_models
from searchmerge.core.space import SharingPlan
from searchmerge.runtime.measure import measure_profile
from searchmerge.runtime.profile import Profile
from searchmerge.runtime.simulator import SimulationResult, simulate
from searchmerge.training.merge import merge_models

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("figure1", "paper", "speed", "switch", "gpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated, from " + ", ".join(SECTIONS))
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "searchmerge-bench-runtime"),
                        help="folder where profiles are kept between runs")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per batch size when profiling")
    parser.add_argument("--fps", type=float, default=None, help="frames per second (default: derived, see above)")
    parser.add_argument("--sla-ms", type=float, default=None, help="latency target (default: three frame intervals)")
    parser.add_argument("--seconds", type=float, default=60.0, help="simulated seconds")
    args = parser.parse_args()
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    torch.manual_seed(0)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device: {device}{' (' + torch.cuda.get_device_name() + ')' if device == 'cuda' else ''},"
          f" torch {torch.__version__}, {torch.get_num_threads()} threads")
    vgg = from_models(["vgg16"] * 6, name="six-vgg16")
    paper, _ = load_study_file(ROOT / "studies" / "paper-scale.yaml")
    if "figure1" in sections or "gpu" in sections:
        vgg_profile = cached_profile(vgg, Path(args.cache), args.repeats)
    if "figure1" in sections:
        figure1(vgg_profile, args)
    if "paper" in sections or "speed" in sections:
        paper_profile = cached_profile(paper, Path(args.cache), args.repeats)
    if "paper" in sections:
        paper_scale(paper_profile, args)
    if "speed" in sections:
        speed(paper_profile)
    if "switch" in sections:
        switch_bytes(paper)
    if "gpu" in sections:
        if device == "cuda":
            gpu_comparison(vgg, vgg_profile, args)
        else:
            print("\n== gpu: no CUDA device here; the runtime-vs-simulator comparison runs on a GPU machine")


# --- profiles and settings ----------------------------------------------------------


def cached_profile(workload: Workload, cache: Path, repeats: int) -> Profile:
    """The workload's profile for none and max sharing, measured once per device and kept in ``cache``."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = cache / f"{workload.name}-{device}.json"
    if path.exists():
        print(f"(profile of {workload.name} read from {path})")
        return Profile.load(path)
    started = time.perf_counter()
    models = workload.build()
    groups = analyze(workload, built=models).groups
    plans = {"none": SharingPlan.of([]), "all": SharingPlan.of(g.name for g in groups)}
    profile = measure_profile(workload, plans, models=models, groups=groups, repeats=repeats, progress=print)
    profile.save(path)
    print(f"(profiled {workload.name} in {time.perf_counter() - started:.0f} s, kept in {path})")
    return profile


def settings_for(profile: Profile, gpu_memory: int, args: argparse.Namespace, **changes: object) -> DeploySettings:
    """15 fps / 200 ms on a GPU; elsewhere a rate the profiled device can serve (see the module docstring)."""
    fps = args.fps
    if fps is None:
        if profile.device.startswith("cuda"):
            fps = 15.0
        else:
            per_frame = sum(m.batch_seconds[2] / 2 for m in profile.models)
            fps = round(0.6 / per_frame, 3)
    sla_ms = args.sla_ms if args.sla_ms is not None else round(3000.0 / fps, 1)
    values = {"gpu_memory": gpu_memory, "fps": fps, "sla_ms": sla_ms, "seconds": args.seconds, **changes}
    return DeploySettings(**values)  # type: ignore[arg-type]


def describe(profile: Profile) -> None:
    for model in profile.models:
        if model.measured_as == model.name:
            times = ", ".join(f"bs {b}: {s * 1000:.0f} ms" for b, s in model.batch_seconds.items())
            print(f"  {model.name}: inference {times}; run memory bs 1 {format_bytes(model.activation_bytes[1])};"
                  f" load {model.load_seconds * 1000:.0f} ms")
    print(f"  link: {profile.link_bytes_per_s / 1e9:.2f} GB/s ({'measured' if profile.link_measured else 'PCIe 3 x16'})")


def row(result: SimulationResult, label: str) -> str:
    p95 = [s.p95_latency_ms for s in result.streams if s.p95_latency_ms is not None]
    resident = sum(s.resident_share for s in result.streams) / len(result.streams)
    return (f"| {label} | {result.processed_fraction:.1%} | {int(result.counters['swaps'])} |"
            f" {result.counters['bytes_loaded'] / 1e9:.1f} GB | {result.loading_share:.1%} |"
            f" {max(p95) if p95 else float('nan'):.0f} ms | {resident:.0%} |")


HEADER = ("| plan | processed | swaps | loaded | loading share | p95 latency (worst stream) | mean time resident |\n"
          "| --- | --- | --- | --- | --- | --- | --- |")


# --- sections ---------------------------------------------------------------------------


def figure1(profile: Profile, args: argparse.Namespace) -> None:
    print("\n== figure1: six VGG16s on a budget that holds three")
    describe(profile)
    none = profile.plan("none").layout
    one = none.model_bytes(none.models[0])
    budget = 3 * one + max(m.activation_bytes[1] for m in profile.models)
    merged = profile.plan("all").layout.resident_bytes
    print(f"  one VGG16: {format_bytes(one)}; budget {format_bytes(budget)} (three and run memory);"
          f" all six merged: {format_bytes(merged)}")
    for policy in ("lru", "lookahead"):
        settings = settings_for(profile, budget, args, policy=policy)
        print(f"\n{policy}: {settings.fps:g} fps per stream, SLA {settings.sla_ms:g} ms, {settings.seconds:g} s\n")
        print(HEADER)
        for plan, label in (("none", "no sharing"), ("all", "all six merged")):
            print(row(simulate(profile, plan, settings), label))


def paper_scale(profile: Profile, args: argparse.Namespace) -> None:
    print("\n== paper: studies/paper-scale.yaml at Gemel's three memory levels")
    describe(profile)
    levels = memory_levels(profile)
    print("  levels: " + ", ".join(f"{name} {format_bytes(size)}" for name, size in levels.items())
          + f"; max sharing holds {format_bytes(profile.plan('all').layout.resident_bytes)}")
    base = settings_for(profile, levels["everything"], args)
    print(f"  {base.fps:g} fps per stream, SLA {base.sla_ms:g} ms, {base.seconds:g} s, LRU\n")
    print(HEADER.replace("| plan |", "| level | plan |").replace("| --- |", "| --- | --- |", 1))
    for level in ("minimum", "50%", "75%"):
        settings = replace(base, gpu_memory=levels[level])
        for plan, label in (("none", "no sharing"), ("all", "max sharing")):
            print(row(simulate(profile, plan, settings), f"{level} ({format_bytes(levels[level])}) | {label}"))


def speed(profile: Profile) -> None:
    """The simulator's own cost, in its worst case: every frame goes through the scheduler.

    With the CPU's inference times the device cannot keep up with 240 frames a second and
    most frames are dropped in bulk, which costs the simulator nothing; so the profile's
    compute times are scaled until the streams keep the device 70% busy at batch size 1,
    and the budget (50% of what fits everything) forces swaps.
    """
    print("\n== speed: the simulator alone, 8 streams x 60 s x 30 fps (one process, one core)")
    scale = 0.7 / (30 * sum(m.batch_seconds[1] for m in profile.models))
    scaled = replace(profile, models=tuple(
        replace(m, batch_seconds={b: s * scale for b, s in m.batch_seconds.items()}) for m in profile.models))
    levels = memory_levels(scaled)
    for level in ("50%", "everything"):
        for plan in ("none", "all"):
            settings = DeploySettings(gpu_memory=levels[level], fps=30, sla_ms=200, seconds=60)
            started = time.process_time()
            result = simulate(scaled, plan, settings)
            spent = time.process_time() - started
            print(f"  {plan}, budget {level} ({format_bytes(levels[level])}): {spent:.2f} s CPU for {result.frames}"
                  f" frames ({result.processed_fraction:.0%} processed), {len(result.runs)} batches,"
                  f" {int(result.counters['swaps'])} swaps (goal: under 5 s)")
    print(f"  (compute times x{scale:.4f}: the streams keep the device 70% busy at batch size 1)")


def gpu_comparison(workload: Workload, profile: Profile, args: argparse.Namespace) -> None:
    """The runtime on the GPU against the simulator, for the same scheduler and settings."""
    from searchmerge.runtime.runtime import RuntimeExecutor, SwapRuntime
    from searchmerge.training.deployment import export_deployment

    print("\n== gpu: the runtime on CUDA against the simulator's prediction (six VGG16s, budget of three)")
    models = workload.build()
    groups = analyze(workload, built=models).groups
    none = profile.plan("none").layout
    budget = 3 * none.model_bytes(none.models[0]) + max(m.activation_bytes[1] for m in profile.models)
    seconds = min(args.seconds, 10.0)
    shapes = {spec.name: spec.input_shape for spec in workload.models}
    print("| plan | policy | | processed | swaps | evictions | loaded | loading share |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
    for plan_name in ("none", "all"):
        plan = SharingPlan.of([]) if plan_name == "none" else SharingPlan.of(g.name for g in groups)
        with tempfile.TemporaryDirectory() as folder:
            export_deployment(folder, workload, merge_models(models, groups, plan, init="first"), plan=plan)
            for policy in ("lru", "lookahead"):
                settings = settings_for(profile, budget, args, policy=policy, seconds=seconds)
                predicted = simulate(profile, plan_name, settings)
                runtime = SwapRuntime.from_deployment(folder, gpu_memory=budget, device="cuda", policy=policy,
                                                      profile=profile)
                executor = RuntimeExecutor(runtime, profile, profile.plan(plan_name), shapes)
                measured = simulate(profile, plan_name, settings, executor=executor)
                for label, result in (("simulated", predicted), ("measured", measured)):
                    print(f"| {plan_name} | {policy} | {label} | {result.processed_fraction:.1%} |"
                          f" {int(result.counters['swaps'])} | {int(result.counters['evictions'])} |"
                          f" {result.counters['bytes_loaded'] / 1e9:.2f} GB | {result.loading_share:.1%} |")
                del runtime, executor
                torch.cuda.empty_cache()


def switch_bytes(paper: Workload) -> None:
    """Bytes the runtime moves when switching between two models of the paper-scale workload, max sharing."""
    from searchmerge.runtime.runtime import SwapRuntime

    device = "cuda" if torch.cuda.is_available() else "simulated"
    print(f"\n== switch: bytes one switch moves, paper-scale with max sharing, runtime on the {device} device")
    models = paper.build()
    groups = analyze(paper, built=models).groups
    merged = merge_models(models, groups, SharingPlan.of(g.name for g in groups), init="first")
    print("\n| switch (max sharing) | moved by the runtime | the analysis' unique bytes of the pair minus the first |"
          "\n| --- | --- | --- |")
    for first, second in (("resnet50-a", "faster-rcnn"), ("resnet152-a", "resnet101"), ("vgg16", "ssd300")):
        runtime = SwapRuntime({n: merged[n] for n in (first, second)}, gpu_memory="64GiB",
                              device="cuda" if torch.cuda.is_available() else "simulated")
        for name in (first, second):
            before = runtime.counters.bytes_loaded
            runtime.run(name, example_inputs(merged[name], paper.spec(name).input_shape, 1, torch.device("cpu")))
        predicted = unique_tensor_bytes(model_tensors([merged[first], merged[second]])) - unique_tensor_bytes(
            model_tensors([merged[first]]))
        print(f"| {first} -> {second} | {(runtime.counters.bytes_loaded - before) / 1e6:.1f} MB |"
              f" {predicted / 1e6:.1f} MB |")
        del runtime


if __name__ == "__main__":
    main()
