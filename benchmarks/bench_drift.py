"""Incremental re-search against a search from scratch, after drift and after adding a model.

Run by hand from the repository root (slow: tens of retrainings of the digits workload):

    python benchmarks/bench_drift.py --storage sqlite:///bench-drift.db --n-trials 10

What it does, with one strategy and the study's own evaluator throughout:

1. the parent: a search of ``--study`` (default ``studies/digits-edge.yaml``) to
   ``--parent-trials`` finished trials, study ``WORKLOAD-STRATEGY`` (reused and resumed
   if the storage has it); its best feasible plan is the deployed plan;
2. for each drift scenario (default ``night``, ``moved`` and ``rain``):
   * incremental: ``research(study, scenario=...)``, retraining from the deployed plan's
     merged weights, re-validating it first, backing off, then searching on;
   * scratch: a search on the same drifted data, no warm start, merged from the originals;
3. a workload change: ``--added-study`` (default ``studies/digits-edge-5.yaml``, the same
   models plus one) re-searched from the parent, against a full search of all its models.

For every search it prints the retraining time until its first feasible plan (the sum of
the evaluations' measured retraining seconds, trial by trial, up to and including the
first feasible one), the trials that took, and the best bytes saved within N trials; and for
each pair, the retraining time until a *good* feasible plan (saving at least 90% of the best
either search found), since after a drift a small plan is often feasible at once either way. The
benchmark's studies are named ``bench-...``; an existing one of the same name is deleted
first, so every run measures afresh (evaluations already in the checkpoint store are
answered from it, but the times reported are those they took when measured).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna

from searchmerge.cli.progress import TerminalProgress
from searchmerge.cli.report import format_table, megabytes
from searchmerge.config.study import StudyFile, open_study_file
from searchmerge.search.merge_search import MergeSearch, open_search
from searchmerge.search.research import research

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Outcome:
    """What one search spent to its first feasible plan, and the best it found."""

    name: str
    trials: int
    first_feasible_trial: int | None
    seconds_to_feasible: float | None
    total_seconds: float
    best_saved: int
    wall_seconds: float
    #: (retraining seconds spent so far, bytes saved if feasible else 0), trial by trial.
    progress: tuple[tuple[float, int], ...] = ()
    #: Training samples the retraining saw until the first feasible trial: the same work
    #: measured without the noise of wall-clock time on a shared machine.
    samples_to_feasible: int | None = None

    def seconds_to_saving(self, saved: float) -> float | None:
        """Retraining seconds until a feasible plan saving at least ``saved`` bytes."""
        return next((spent for spent, got in self.progress if got and got >= saved), None)


def outcome(search: MergeSearch, wall_seconds: float) -> Outcome:
    """Retraining seconds to the first feasible trial (in trial order) and the best saving of ``search``."""
    best = search.best()
    return trials_outcome(search.study_name, search.finished_trials(), best.saved_bytes if best else 0, wall_seconds,
                          before_trials=baselines_seconds(search.optuna_study.user_attrs))


def baselines_seconds(attrs: dict) -> float:
    """The seconds a ``drift_baseline: reachable`` search spent measuring its baselines before its first trial."""
    return float(attrs.get("searchmerge:baselines_seconds", 0.0))


def trials_outcome(name: str, finished: Sequence[optuna.trial.FrozenTrial], best_saved: int,
                   wall_seconds: float, *, before_trials: float = 0.0) -> Outcome:
    """Retraining seconds to the first feasible of the ``finished`` trials (in trial order).

    A trial whose plan was already evaluated in its study is answered from the checkpoint
    store and retrains nothing, so it adds no seconds (its attributes carry the first
    evaluation's cost). ``before_trials``: retraining seconds the search spent before its
    first trial (measuring what sharing nothing reaches), counted first.
    """
    spent, samples, first, to_feasible, samples_to_feasible = before_trials, 0, None, None, None
    progress = []
    trials = sorted(finished, key=lambda t: t.number)
    seen: set[tuple] = set()
    for position, trial in enumerate(trials, start=1):
        plan = tuple(sorted(trial.params.items()))
        if plan not in seen:
            spent += float(trial.user_attrs.get("cost_seconds", 0.0))
            samples += int(trial.user_attrs.get("cost_samples", 0))
        seen.add(plan)
        feasible = bool(trial.user_attrs.get("feasible"))
        progress.append((spent, int(trial.user_attrs.get("saved_bytes", 0)) if feasible else 0))
        if first is None and feasible:
            first, to_feasible, samples_to_feasible = position, spent, samples
    return Outcome(name, len(trials), first, to_feasible, spent, best_saved, wall_seconds, tuple(progress),
                   samples_to_feasible)


def fresh(storage: str, name: str) -> None:
    """Delete a benchmark study left by an earlier run, so it is measured again."""
    try:
        optuna.delete_study(study_name=name, storage=storage)
    except KeyError:
        pass


def measure(storage: str, name: str, run: Callable[[str], MergeSearch]) -> Outcome:
    """Run ``run(name)`` on a fresh study ``name`` and measure it."""
    fresh(storage, name)
    start = time.perf_counter()
    search = run(name)
    return outcome(search, time.perf_counter() - start)


def speedup(incremental: float | None, scratch: float | None) -> str:
    if incremental is None:
        return "incremental: none"
    if scratch is None:
        return "scratch: none"
    return f"{scratch / max(incremental, 1e-9):.1f}x ({incremental:.0f} s vs {scratch:.0f} s)"


def compare(label: str, incremental: Outcome, scratch: Outcome) -> list[str]:
    """Speed-ups to the first feasible plan and to a good one, and the share of scratch's best saving.

    A small plan is often feasible at once after a drift, from the originals as well as from
    the deployed weights, so the first feasible plan alone says little; "a good plan" is a
    feasible one saving at least 90% of the best that either search found.
    """
    good = 0.9 * max(incremental.best_saved, scratch.best_saved)
    to_good = speedup(incremental.seconds_to_saving(good), scratch.seconds_to_saving(good))
    share = f"{100 * incremental.best_saved / scratch.best_saved:.0f}%" if scratch.best_saved else "n/a"
    samples = (f"{scratch.samples_to_feasible / incremental.samples_to_feasible:.1f}x"
               if incremental.samples_to_feasible and scratch.samples_to_feasible else "-")
    return [label, speedup(incremental.seconds_to_feasible, scratch.seconds_to_feasible), samples, to_good, share]


def rows(outcomes: list[Outcome]) -> list[list[object]]:
    return [
        [o.name, o.trials, o.first_feasible_trial or "-",
         "-" if o.seconds_to_feasible is None else f"{o.seconds_to_feasible:.1f}",
         "-" if o.samples_to_feasible is None else o.samples_to_feasible, f"{o.total_seconds:.1f}",
         megabytes(o.best_saved), f"{o.wall_seconds:.0f}"]
        for o in outcomes
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default=str(ROOT / "studies" / "digits-edge.yaml"))
    parser.add_argument("--added-study", default=str(ROOT / "studies" / "digits-edge-5.yaml"),
                        help="the study with one model more (empty: skip the workload change)")
    parser.add_argument("--storage", default="sqlite:///bench-drift.db")
    parser.add_argument("--blob-dir", default=None)
    parser.add_argument("--scenarios", default="night,moved,rain")
    parser.add_argument("--strategy", default="greedy")
    parser.add_argument("--parent-trials", type=int, default=10)
    parser.add_argument("--n-trials", type=int, default=10, help="trials of every compared search")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    say = TerminalProgress(sys.stdout)  # a line per step; on a terminal also a bar with an ETA

    study = open_study_file(args.study, storage=args.storage, blob_dir=args.blob_dir)
    start = time.perf_counter()
    parent = open_search(study, strategy=args.strategy, seed=args.seed, progress=say)
    parent.run(args.parent_trials)  # resumed, not measured afresh: it is the given deployment
    outcomes: list[Outcome] = [outcome(parent, time.perf_counter() - start)]
    comparisons: list[list[str]] = []
    common = {"strategy": args.strategy, "seed": args.seed, "progress": say}

    def searched(target: StudyFile, name: str, scenario: str | None = None) -> MergeSearch:
        search = open_search(target, study_name=name, scenario=scenario, **common)
        search.run(args.n_trials)
        return search

    for scenario in [s for s in args.scenarios.split(",") if s]:
        incremental = measure(args.storage, f"bench-{scenario}-incremental", lambda name: research(
            study, scenario=scenario, parent_study=parent.study_name, n_trials=args.n_trials, study_name=name,
            **common))  # type: ignore[arg-type]
        scratch = measure(args.storage, f"bench-{scenario}-scratch", lambda name: searched(study, name, scenario))
        outcomes += [incremental, scratch]
        comparisons.append(compare(f"drift {scenario}", incremental, scratch))

    if args.added_study:
        added = open_study_file(args.added_study, storage=args.storage, blob_dir=args.blob_dir)
        incremental = measure(args.storage, f"bench-{added.workload.name}-incremental", lambda name: research(
            added, parent_file=study, parent_study=parent.study_name, n_trials=args.n_trials, study_name=name,
            **common))  # type: ignore[arg-type]
        full = measure(args.storage, f"bench-{added.workload.name}-full", lambda name: searched(added, name))
        outcomes += [incremental, full]
        comparisons.append(compare(f"added model ({added.workload.name})", incremental, full))

    print()
    print(format_table(["search", "trials", "first feasible at", "retrain s to feasible",
                        "samples to feasible", "retrain s total",
                        "best saved", "wall s"], rows(outcomes),
                       title=f"strategy {args.strategy}, {args.n_trials} trials per compared search"))
    print()
    print(format_table(["change", "less retraining to a first feasible plan", "in samples seen",
                        "to a good plan (>= 90% of the best saving)", "best saved, % of scratch's"], comparisons))


if __name__ == "__main__":
    main()
