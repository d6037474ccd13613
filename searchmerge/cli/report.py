"""Readable text for people: tables of models, pairs, groups and trials."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MB = 1_000_000


def megabytes(size: float) -> str:
    """Bytes as megabytes (10^6 bytes, like the papers' tables); small sizes keep three decimals."""
    return f"{size / MB:,.1f} MB" if abs(size) >= 10 * MB else f"{size / MB:.3f} MB"


def percent(fraction: float) -> str:
    return f"{100 * fraction:.1f}%"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str | None = None) -> str:
    """A plain-text table; text columns left-aligned, numbers right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    numeric = [all(_looks_numeric(row[i]) for row in cells) and bool(cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [title] if title else []
    out += [line(headers), line(["-" * w for w in widths])]
    out += [line(row) for row in cells]
    return "\n".join(out)


def format_analysis(result: Any, *, max_groups: int = 20) -> str:
    """The analysis as the papers show it: Table 1, Figure 2, Table 3, then the groups."""
    sizes = result.batch_sizes
    headers = ["model", "layers", "params", "buffers", "load"] + [f"run bs={b}" for b in sizes]
    rows = [
        [m.name, m.layers, megabytes(m.param_bytes), megabytes(m.buffer_bytes), megabytes(m.load_bytes)]
        + [megabytes(m.run_bytes(b)) for b in sizes]
        for m in result.models
    ]
    parts = [format_table(headers, rows, title="Models (load = parameters + buffers; run = load + activations)")]

    pair_rows = [
        [p.a, p.b, p.common_layers, percent(p.layers_fraction), megabytes(p.saved_bytes), percent(p.saved_fraction)]
        for p in result.pairs
    ]
    parts.append(
        format_table(
            ["model a", "model b", "common layers", "% of smaller", "saved", "% of pair memory"],
            pair_rows,
            title="Pairs (layers in common, memory saved by sharing them)",
        )
    )

    parts.append(
        format_table(
            ["workload", "no sharing", "max sharing", "saved", "groups"],
            [
                [
                    f"{len(result.models)} models",
                    megabytes(result.total_bytes),
                    megabytes(result.max_sharing_bytes),
                    percent(result.saved_fraction),
                    len(result.groups),
                ]
            ],
            title="Workload" + (" (normalisation layers shared too)" if result.share_norm else ""),
        )
    )
    if result.batch_sizes:
        run_rows = [
            [f"bs={b}", megabytes(result.run_bytes(b)), megabytes(result.run_bytes(b, max_sharing=True)),
             percent(1 - result.run_bytes(b, max_sharing=True) / result.run_bytes(b))]
            for b in result.batch_sizes
        ]
        parts.append(format_table(
            ["run at", "no sharing", "max sharing", "saved"], run_rows,
            title="Workload run memory (all weights resident + the largest model's activations; models run in turn)",
        ))

    group_rows = [
        [g.name, str(g.signature.kind), len(g.members), megabytes(g.bytes), megabytes(g.saved_bytes)]
        for g in result.groups[:max_groups]
    ]
    title = f"Largest shareable groups ({min(max_groups, len(result.groups))} of {len(result.groups)}; --json lists all)"
    parts.append(format_table(["group", "kind", "models", "size", "saved if shared"], group_rows, title=title))
    return "\n\n".join(parts)


def _looks_numeric(text: str) -> bool:
    stripped = text.replace(",", "").replace("%", "").replace(" MB", "").strip()
    try:
        float(stripped)
    except ValueError:
        return False
    return True


def interval_text(interval: Any) -> str:
    """An interval as ``[low, high]``, ``exact`` said (``-`` where there is none)."""
    if interval is None:
        return "-"
    return f"[{interval.low:.3f}, {interval.high:.3f}]" + ("" if interval.method == "wilson" else f" {interval.method}")


def acceptance_text(rule: str, margin: float) -> str:
    """How a study accepts a ratio, in words: ``the measured ratio`` or ``its 95% interval's lower end``."""
    text = "the measured ratio" if rule == "point" else "the lower end of its 95% interval"
    return text + (f" minus a margin of {margin:g}" if margin else "")


INTERVAL_NOTE = ("95% CI: Wilson score interval of the accuracy on its n validation samples (a ratio's: over the"
                 " baseline's value); bootstrap: mAP's, over resampled images (evaluate only); exact: an unchanged"
                 " original on its own data; '-': none (mAP in a search's trials)")


def format_models(evaluation: Any) -> str:
    """Each model of an evaluation: accuracy, baseline and ratio with their n and 95% intervals, the verdict."""
    rows = [
        [
            m.name,
            f"{m.accuracy:.3f}",
            f"{m.baseline:.3f}",
            interval_text(m.baseline_interval),
            f"{m.ratio:.3f}",
            interval_text(m.ratio_interval),
            str(m.samples),
            "-" if m.test_ratio is None else f"{m.test_ratio:.3f} {interval_text(m.test_interval)} n={m.test_samples}",
            "yes" if m.meets_target else "NO",
            str(m.check),
        ]
        for m in evaluation.models
    ]
    headers = ["model", "accuracy", "baseline", "baseline 95% CI", "ratio", "ratio 95% CI", "n", "test ratio",
               "meets target", "scored at check"]
    return format_table(headers, rows) + "\n" + INTERVAL_NOTE


def format_evaluation(evaluation: Any, *, bound_saved_bytes: int | None = None, checkpoint: str | None = None) -> str:
    """One evaluated plan: per-model accuracy against the target, with sample counts and intervals, memory, cost."""
    plan = sorted(evaluation.plan.shared)
    shown = ", ".join(plan[:8]) + (f", ... ({len(plan) - 8} more)" if len(plan) > 8 else "")
    lines = [f"plan: {len(plan)} group(s) shared" + (f": {shown}" if plan else " (no sharing)")]
    lines.append(format_models(evaluation))
    verdict = "FEASIBLE" if evaluation.feasible else "infeasible"
    lines.append(f"{verdict}: every model must keep {evaluation.target:.2f} of its baseline accuracy, judged by"
                 f" {acceptance_text(evaluation.accept, evaluation.accept_margin)} (stopped: {evaluation.stop_reason})")
    saved = f"saved {megabytes(evaluation.saved_bytes)}"
    if bound_saved_bytes:
        saved += f", {percent(evaluation.saved_bytes / bound_saved_bytes)} of the max-sharing saving"
    lines.append(f"memory: {megabytes(evaluation.unique_bytes)} unique ({saved})")
    cost = evaluation.cost
    lines.append(f"cost: {cost.steps} steps, {cost.samples:,} samples, {cost.checks} checks, {cost.seconds:.1f} s")
    if checkpoint:
        lines.append(f"merged weights: checkpoint {checkpoint}")
    return "\n".join(lines)


def format_search(search: Any, *, max_rows: int = 40) -> str:
    """A search's best feasible plan and its trials."""
    history = search.history()
    best = search.best()
    bound = search.space.max_saved_bytes
    lines = [f"study {search.study_name!r} ({search.strategy}): {len(history)} finished trials,"
             f" max-sharing saving {megabytes(bound)}"]
    lineage = search.lineage()
    if lineage:
        parts = [f"re-search of {lineage['parent_study']!r}" if "parent_study" in lineage else "search"]
        if "scenario" in lineage:
            parts.append(f"on drift scenario {lineage['scenario']!r}")
        if "parent_checkpoint" in lineage:
            parts.append(f"from checkpoint {lineage['parent_checkpoint']}")
        lines.append("lineage: " + " ".join(parts))
    if best is None:
        lines.append("best feasible plan: none yet")
    else:
        groups = ", ".join(sorted(best.plan.shared)) or "(no sharing)"
        lines.append(f"best feasible plan: trial {best.number}, saves {megabytes(best.saved_bytes)}"
                     f" ({percent(best.saved_bytes / bound if bound else 0)} of the bound),"
                     f" worst accuracy ratio {best.worst_ratio:.3f}")
        lines.append(f"  shares {len(best.plan)} group(s): {groups}")
        lines.append(f"  merged weights: checkpoint {best.checkpoint}")
        evaluation = search.stored_evaluation(best)
        if evaluation is not None:
            lines.append(format_models(evaluation))
            lines.append(f"  judged by {acceptance_text(evaluation.accept, evaluation.accept_margin)}"
                         f" against the target {evaluation.target:g}")
    rows = [
        [t.number, t.state.lower(), "yes" if t.feasible else "no", len(t.plan), megabytes(t.saved_bytes),
         f"{t.worst_ratio:.3f}", f"{t.seconds:.1f}"]
        for t in history[-max_rows:]
    ]
    title = "trials" + (f" (last {max_rows})" if len(history) > max_rows else "")
    lines.append(format_table(["trial", "state", "feasible", "groups", "saved", "worst ratio", "seconds"], rows,
                              title=title))
    return "\n".join(lines)


def format_drift_check(check: Any, study_path: str | Path, *, options: Sequence[str] = ()) -> str:
    """The deployed plan's models before and after a drift, and what the misses implicate.

    ``study_path`` is the study file the check was run on and ``options`` the storage
    flags it was given (``--storage URL``, ``--blob-dir DIR``), so that the suggested
    re-search command can be copied and run as printed.
    """
    lines = [f"deployed plan of {check.study_name!r} (trial {check.trial}, {len(check.plan)} shared group(s),"
             f" saves {megabytes(check.saved_bytes)}) on drift scenario {check.scenario!r}"]
    rows = [
        [m.name, f"{m.accuracy_before:.3f}", f"{m.accuracy_after:.3f}", f"{m.baseline:.3f}",
         interval_text(m.baseline_interval), f"{m.ratio_before:.3f}", f"{m.ratio_after:.3f}",
         interval_text(m.ratio_after_interval), m.samples_after, f"{m.target:.2f}", "MISSES" if m.misses else "ok",
         len(m.groups)]
        for m in check.models
    ]
    lines.append(format_table(["model", "acc before", "acc after", "baseline", "baseline 95% CI", "ratio before",
                               "ratio after", "ratio after 95% CI", "n", "target", "now", "shared groups"], rows))
    lines.append(INTERVAL_NOTE)
    if not check.missing:
        lines.append("every model still meets its target")
    else:
        names = ", ".join(m.name for m in check.missing)
        groups = ", ".join(check.implicated_groups) or "(none: these models share nothing)"
        lines.append(f"{len(check.missing)} model(s) miss their target: {names}")
        lines.append(f"shared groups they take part in: {groups}")
        command = ["searchmerge", "research", str(study_path), "--data", check.scenario, "--from-study",
                   check.study_name, *options]
        lines.append(f"re-search: {shlex.join(command)}")
    return "\n".join(lines)


def best_so_far(trials: Sequence[Any]) -> list[float]:
    """Best feasible bytes saved after each trial (0 before the first feasible one)."""
    best, curve = 0.0, []
    for trial in trials:
        if trial.feasible:
            best = max(best, float(trial.saved_bytes))
        curve.append(best)
    return curve


def plot_searches(searches: Sequence[Any], directory: str | Path) -> list[Path]:
    """Write ``savings_vs_trials.png`` and ``accuracy_vs_memory.png`` for one or more searches."""
    plt = _pyplot()
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for figure, name in ((savings_figure(searches), "savings_vs_trials.png"),
                         (accuracy_figure(searches), "accuracy_vs_memory.png")):
        figure.savefig(folder / name, dpi=120)
        plt.close(figure)
        written.append(folder / name)
    return written


def search_label(search: Any) -> str:
    """A search's name in a legend: its study name (a re-search and its parent may share a strategy)."""
    name = str(search.study_name)
    return name if search.strategy in name else f"{name} ({search.strategy})"


def savings_figure(searches: Sequence[Any]) -> Any:
    """Best feasible saving after each trial, one line per search, with the max-sharing bound."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = _pyplot().subplots(figsize=(8.5, 4))
    for search in searches:
        curve = best_so_far(search.history())
        ax.step(range(1, len(curve) + 1), [c / MB for c in curve], where="post", marker="o", markersize=3,
                label=search_label(search))
    bound = max((s.space.max_saved_bytes for s in searches), default=0)
    if bound:
        ax.axhline(bound / MB, color="grey", linestyle="--", label="max-sharing bound")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trials are counted: no trial 1.5
    _label(fig, ax, ("finished trials", "best feasible saving (MB)", "Memory saved vs trials"))
    return fig


#: How the accuracy plot draws a plan: colour and marker both tell feasible from infeasible
#: (blue and orange stay apart for colour-blind readers and in greyscale, by their markers).
FEASIBLE_STYLE = {"color": "tab:blue", "marker": "o"}
INFEASIBLE_STYLE = {"color": "tab:orange", "marker": "X"}
#: Accuracy plot's y axis: what a ratio is.
RATIO_LABEL = "worst accuracy ratio (merged / original)"


def accuracy_figure(searches: Sequence[Any]) -> Any:
    """Worst accuracy ratio against merged memory, per trial; one panel per search.

    Feasible plans are blue circles, infeasible ones orange crosses; a plan whose retraining
    was stopped early (pruned: it could not reach the target) is a hollow orange triangle, at
    the ratio it had when it was stopped, which is not a final one. Each search's best feasible
    plan is a star; the dotted line is the target, labelled with its value, and the dashed line
    the workload with no sharing. The legend stands outside the data, to the right.
    """
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    count = max(1, len(searches))
    columns = min(count, 3)
    rows = -(-count // columns)
    fig, grid = plt.subplots(rows, columns, figsize=(4.2 * columns + 2.4, 3.8 * rows), sharex=True, sharey=True,
                             squeeze=False)
    axes = list(grid.flat)
    target = float(searches[0].study_file.settings.target) if searches else None
    no_sharing = max([0, *(t.unique_bytes + t.saved_bytes for s in searches for t in s.history())])
    for ax, search in zip(axes, searches):
        trials = search.history()
        finished = [t for t in trials if t.state != "PRUNED"]
        groups = (
            ([t for t in finished if t.feasible], dict(FEASIBLE_STYLE, alpha=0.8), "feasible plan"),
            ([t for t in finished if not t.feasible], dict(INFEASIBLE_STYLE, alpha=0.8), "infeasible plan"),
            ([t for t in trials if t.state == "PRUNED"],
             {"facecolors": "none", "edgecolors": INFEASIBLE_STYLE["color"], "marker": "v"},
             "pruned: ratio when stopped"),
        )
        for plans, style, name in groups:
            if plans:
                ax.scatter([t.unique_bytes / MB for t in plans], [t.worst_ratio for t in plans], label=name, **style)
        best = search.best()
        if best is not None:
            ax.scatter([best.unique_bytes / MB], [best.worst_ratio], color="gold", marker="*", s=240,
                       edgecolors="black", zorder=3, label="best feasible plan")
        if no_sharing:
            ax.axvline(no_sharing / MB, color="grey", linestyle="--", label=f"no sharing ({megabytes(no_sharing)})")
        if target is not None:
            ax.axhline(target, color="red", linestyle=":", label=f"target {target:g}")
            ax.annotate(f"target {target:g}", xy=(1.0, target), xycoords=("axes fraction", "data"), xytext=(-4, 3),
                        textcoords="offset points", ha="right", va="bottom", color="red", fontsize="small",
                        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
        ax.set_title(search_label(search), fontsize="medium")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))  # tick labels of a tiny workload (0.0175 MB) stay apart
        ax.grid(True, alpha=0.3)
    for ax in axes[len(searches):]:
        ax.set_visible(False)
    for ax in grid[-1]:
        ax.set_xlabel("merged workload memory (MB)")
    for ax in grid[:, 0]:
        ax.set_ylabel(RATIO_LABEL)
    legend: dict[str, Any] = {}
    for ax in axes[: len(searches)]:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(name, handle)  # one entry per kind of mark, over every panel
    fig.suptitle("Accuracy vs memory: every evaluated plan")
    right = 1 - 2.4 / fig.get_figwidth()  # the legend's column, beside the panels
    fig.legend(legend.values(), legend.keys(), loc="center left", bbox_to_anchor=(right, 0.5), fontsize="small",
               frameon=False)
    fig.tight_layout(rect=(0, 0, right, 1))
    return fig


def _pyplot() -> Any:
    """pyplot on the file-only Agg backend: reports are written, never shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(fig: Any, ax: Any, labels: tuple[str, str, str]) -> None:
    """Axis labels, title, legend and layout of one figure."""
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(labels[2])
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)  # outside the data
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
