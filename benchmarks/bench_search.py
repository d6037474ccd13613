"""Live searches of a study: the best feasible saving after N trials, per strategy, next to the bound.

Run by hand from the repository root (slow: every trial retrains a plan of the study)::

    python benchmarks/bench_search.py --study studies/campus.yaml --storage sqlite:///bench-search.db \\
        --strategies greedy,surrogate,tpe --trials 10,20

``bench_strategies.py`` replays strategies against a table of every plan of a coarsened space,
which only a small space affords; this runs each strategy for real, on the study's own groups
and evaluator: one search per strategy (study ``bench-search-STRATEGY``, deleted first so each
run measures afresh; the originals and any plan already in the checkpoint store are reused),
then, trial by trial, the best feasible saving so far and the retraining seconds spent (a
plan its study already evaluated is answered from the store and adds nothing). The bound is
the max-sharing saving: every group shared.
"""

from __future__ import annotations

import argparse
import sys
import time

import optuna
from bench_drift import fresh, outcome

from searchmerge.cli.progress import TerminalProgress
from searchmerge.cli.report import format_table, megabytes
from searchmerge.config.study import open_study_file
from searchmerge.search.merge_search import MergeSearch
from searchmerge.training.prepare import prepare_study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/campus.yaml")
    parser.add_argument("--storage", default="sqlite:///bench-search.db")
    parser.add_argument("--strategies", default="greedy,surrogate,tpe")
    parser.add_argument("--trials", default="10,20", help="comma-separated trial counts to report (the largest is run)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    counts = sorted(int(part) for part in args.trials.split(","))

    study = open_study_file(args.study, storage=args.storage)
    say = TerminalProgress(sys.stdout)  # a line per step; on a terminal also a bar with an ETA
    prepared = prepare_study(study, progress=say)
    rows = []
    bound = 0
    for strategy in args.strategies.split(","):
        name = f"bench-search-{strategy}"
        fresh(args.storage, name)
        start = time.perf_counter()
        search = MergeSearch(study, prepared, strategy=strategy, study_name=name, seed=args.seed, progress=say)
        search.run(counts[-1])
        result = outcome(search, time.perf_counter() - start)
        bound = search.space.max_saved_bytes
        row: list[object] = [strategy]
        for count in counts:
            best = max((saved for _, saved in result.progress[:count]), default=0)
            spent = result.progress[min(count, len(result.progress)) - 1][0] if result.progress else 0.0
            row += [f"{megabytes(best)} ({100 * best / bound:.0f}%)", f"{spent:.0f}"]
        rows.append(row + [result.first_feasible_trial or "-", f"{result.wall_seconds:.0f}"])
        print(f"{strategy}: {rows[-1]}", flush=True)
    headers = ["strategy"]
    for count in counts:
        headers += [f"best feasible after {count} trials", f"retrain s to {count}"]
    print()
    print(format_table(headers + ["first feasible at", "wall s"], rows,
                       title=f"{study.workload.name}: max-sharing bound {megabytes(bound)}, seed {args.seed}"))


if __name__ == "__main__":
    main()
