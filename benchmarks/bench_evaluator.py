"""The cheap evaluator against full retraining on the shipped digits workload.

Run by hand: ``python benchmarks/bench_evaluator.py [--plans 12] [--study studies/digits-edge.yaml]``.

For the plans none, all, and random plans (each group shared with probability
1/2, seeded), it runs
- the cheap evaluator: the study's settings (subsample, early exit on success
  and on hopeless failure), and
- full retraining: all training data, the same epoch budget, no early exit,
  feasible if every model meets its target at the end,
and prints per plan both verdicts and times, then the agreement and the ratio of
total times, measured side by side in one run. The originals are prepared (or
loaded) first, in a SQLite file under a temporary folder unless --storage is given.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from searchmerge.evaluate import Evaluator
from searchmerge.space import SharingPlan
from searchmerge.prepare import prepare_study
from searchmerge.study import open_study_file

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--study", default=str(ROOT / "studies" / "digits-edge.yaml"))
    parser.add_argument("--plans", type=int, default=12, help="plans in all, none and all included")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--storage", default=None)
    args = parser.parse_args()

    folder = tempfile.mkdtemp(prefix="searchmerge-bench-")
    storage = args.storage or f"sqlite:///{folder}/bench.db"
    study = open_study_file(args.study, storage=storage)
    start = time.perf_counter()
    prepared = prepare_study(study, progress=print)
    print(f"originals ready in {time.perf_counter() - start:.0f} s")

    settings = study.settings
    cheap = Evaluator(prepared, settings.evaluator, settings.target)
    full_settings = settings.with_evaluator(fraction=1.0, early_exit=False).evaluator
    full = Evaluator(prepared, full_settings, settings.target, analysis=cheap.analysis)

    names = [g.name for g in cheap.analysis.groups]
    rng = random.Random(args.seed)
    plans = [SharingPlan.of([]), SharingPlan.of(names)]
    while len(plans) < args.plans:
        plan = SharingPlan.of([n for n in names if rng.random() < 0.5])
        if plan not in plans:
            plans.append(plan)

    bound = cheap.analysis.max_sharing_saved_bytes
    print(f"target {settings.target}, {len(names)} groups, evaluator {settings.evaluator}")
    print(f"{'plan':>4} {'groups':>6} {'saved':>6}  {'cheap':>10} {'s':>6} {'stop':>9}  {'full':>10} {'s':>6}  agree")
    agree = cheap_time = full_time = cheap_trained = full_trained = 0.0
    cheap_feasible = full_feasible = 0
    random_feasible = {"cheap": 0, "full": 0}
    for index, plan in enumerate(plans):
        fast, _ = cheap.evaluate(plan, seed=args.seed)
        slow, _ = full.evaluate(plan, seed=args.seed)
        same = fast.feasible == slow.feasible
        agree += same
        cheap_time += fast.cost.seconds
        full_time += slow.cost.seconds
        cheap_feasible += fast.feasible
        full_feasible += slow.feasible
        if index >= 2:  # after none and all
            random_feasible["cheap"] += fast.feasible
            random_feasible["full"] += slow.feasible
        if plan.shared:  # plans that need retraining at all
            cheap_trained += fast.cost.seconds
            full_trained += slow.cost.seconds
        verdict = {True: "feasible", False: "infeasible"}
        print(
            f"{index:>4} {len(plan):>6} {100 * fast.saved_bytes / bound:>5.0f}%"
            f"  {verdict[fast.feasible]:>10} {fast.cost.seconds:>6.1f} {fast.stop_reason:>9}"
            f"  {verdict[slow.feasible]:>10} {slow.cost.seconds:>6.1f}  {'yes' if same else 'NO'}"
            f"  (worst ratio cheap {fast.worst_ratio:.3f}, full {slow.worst_ratio:.3f};"
            f" cheap curve {' '.join(f'{r:.2f}' for r in fast.curve)})",
            flush=True,
        )
    n = len(plans)
    print(f"agreement: {agree:.0f}/{n} = {100 * agree / n:.0f}% (required >= 90%)")
    print(f"total time: cheap {cheap_time:.0f} s, full {full_time:.0f} s, full/cheap = {full_time / cheap_time:.1f}x"
          " (required >= 5x)")
    print(f"  without plan none (which needs no retraining): cheap {cheap_trained:.0f} s, full {full_trained:.0f} s,"
          f" full/cheap = {full_trained / cheap_trained:.1f}x")
    print(f"feasible: cheap {cheap_feasible}/{n}, full {full_feasible}/{n};"
          f" random plans feasible: cheap {random_feasible['cheap']}/{n - 2}, full {random_feasible['full']}/{n - 2}")


if __name__ == "__main__":
    main()
