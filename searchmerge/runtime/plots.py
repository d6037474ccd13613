"""The simulator's figures: which model is on the GPU when, and frames processed against memory.

The residency timeline is the paper's Figure 1: one row per model, a bar while the model
is resident (all its tensors on the GPU), marks where it runs; without enough memory
every model spends much of its time out of the GPU. The second figure shows, per plan,
the share of frames processed in time as the GPU memory budget grows.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from searchmerge.config.deploy import format_bytes
from searchmerge.runtime.simulator import SimulationResult

__all__ = ["plot_sweep", "plot_timeline"]

GiB = 2**30


def plot_timeline(results: Sequence[SimulationResult], path: str | os.PathLike[str], *, window_s: float = 5.0) -> Path:
    """One panel per plan: each model's residency (bars) and runs (ticks) in the first ``window_s`` seconds."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(results), 1, figsize=(9, 1.0 + 0.35 * _rows(results) + 0.9 * len(results)),
                             squeeze=False, sharex=True)
    for ax, result in zip(axes[:, 0], results):
        models = [stream.model for stream in result.streams]
        row = {model: i for i, model in enumerate(models)}
        changes = [*result.residency, (max(window_s, result.residency[-1][0]), frozenset())]
        for model in models:
            ax.broken_barh(_spans(changes, model, window_s), (row[model] - 0.35, 0.7), color="tab:blue", alpha=0.35,
                           linewidth=0)
        runs = [run for run in result.runs if run.start < window_s]
        ax.scatter([run.start for run in runs], [row[run.model] for run in runs], marker="|", s=60,
                   color=["tab:red" if run.load_s > 0 else "tab:green" for run in runs])
        ax.set_yticks(range(len(models)), models, fontsize="small")
        ax.set_ylim(-0.6, len(models) - 0.4)
        ax.invert_yaxis()
        ax.set_title(
            f"{result.plan}: {result.processed_fraction:.1%} of frames in time, {int(result.counters['swaps'])} swaps,"
            f" {result.loading_share:.0%} of GPU time loading", fontsize="small",
        )
    axes[-1, 0].set_xlim(0, window_s)
    axes[-1, 0].set_xlabel("seconds (bars: resident on the GPU; ticks: runs, red when it had to load)")
    fig.suptitle(f"Residency under {format_bytes(results[0].settings.gpu_memory)} of GPU memory" if results else "")
    fig.tight_layout()
    return _save(fig, path)


def plot_sweep(sweep: Mapping[str, Sequence[tuple[int, float]]], path: str | os.PathLike[str]) -> Path:
    """Processed fraction (y) against the GPU memory budget (x), one line per plan."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for plan, points in sweep.items():
        ax.plot([budget / GiB for budget, _ in points], [fraction for _, fraction in points], marker="o",
                markersize=3, label=plan)
    ax.set_xlabel("GPU memory budget (GiB)")
    ax.set_ylabel("frames processed within the SLA")
    ax.set_ylim(0, 1.02)
    ax.set_title("Frames processed vs GPU memory")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


def _spans(changes: Sequence[tuple[float, frozenset[str]]], model: str, window_s: float) -> list[tuple[float, float]]:
    """``(start, length)`` of each stretch during which ``model`` stays resident, joined across changes."""
    spans: list[tuple[float, float]] = []
    for (start, resident), (stop, _) in zip(changes, changes[1:]):
        if model not in resident or start >= window_s:
            continue
        if spans and abs(spans[-1][0] + spans[-1][1] - start) < 1e-12:
            spans[-1] = (spans[-1][0], stop - spans[-1][0])
        else:
            spans.append((start, stop - start))
    return spans


def _rows(results: Sequence[SimulationResult]) -> int:
    return sum(len(result.streams) for result in results)


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
