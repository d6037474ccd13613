"""The cheap evaluator against full retraining on the shipped digits workload.

Run by hand: ``python benchmarks/bench_evaluator.py [--plans 12] [--seeds 0,1] [--greedy-trials 20]``.

For the plans none, all, and random plans (each group shared with probability
1/2, seeded), it runs
- the cheap evaluator: the study's settings (subsample, early exit on success
  and on hopeless failure), and
- full retraining: all training data, the same epoch budget and checks, never given up
  as hopeless, and judged (``--full``) either at the end of the budget (``end``, the
  default) or at the first check where every model meets its target (``first-pass``:
  early stopping on validation, which footage needs: trained on, models fitted to a few
  hundred early frames drift away from the later validation frames),
and prints per plan both verdicts and times, then per plan seed and over all of them
the agreement, false rejections (plans full retraining makes feasible that the cheap
evaluator gives up) and false acceptances, and the ratio of total times, measured side by
side in one run. With ``--greedy-trials N`` it also runs a greedy search of N trials judged
by each evaluator and compares the best feasible savings they find. The originals are prepared (or
loaded) first, in a SQLite file under a temporary folder unless --storage is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import tempfile
import time
from pathlib import Path

from searchmerge.config.settings import StudySettings
from searchmerge.config.study import StudyFile, open_study_file
from searchmerge.core.space import SharingPlan
from searchmerge.search.merge_search import open_search
from searchmerge.training.evaluate import Evaluator
from searchmerge.training.evaluate import full_retraining as full_evaluator
from searchmerge.training.prepare import PreparedWorkload, prepare_study

ROOT = Path(__file__).resolve().parents[1]


def draw_plans(names: list[str], count: int, seed: int) -> list[SharingPlan]:
    """Plans none and all, then random plans (each group shared with probability 1/2) drawn from ``seed``."""
    rng = random.Random(seed)
    plans = [SharingPlan.of([]), SharingPlan.of(names)]
    while len(plans) < count:
        plan = SharingPlan.of([n for n in names if rng.random() < 0.5])
        if plan not in plans:
            plans.append(plan)
    return plans


def compare(cheap: Evaluator, full: Evaluator, plans: list[SharingPlan], seed: int) -> dict[str, float]:
    """Both verdicts and times for each plan, printed; the seed's totals returned."""
    bound = cheap.analysis.max_sharing_saved_bytes
    totals = {"plans": 0, "agree": 0, "false_rejections": 0, "false_acceptances": 0, "cheap_s": 0.0, "full_s": 0.0,
              "cheap_trained_s": 0.0, "full_trained_s": 0.0, "cheap_feasible": 0, "full_feasible": 0}
    print(f"plan seed {seed}:")
    print(f"{'plan':>4} {'groups':>6} {'saved':>6}  {'cheap':>10} {'s':>6} {'stop':>9}  {'full':>10} {'s':>6}  agree")
    verdict = {True: "feasible", False: "infeasible"}
    for index, plan in enumerate(plans):
        fast, _ = cheap.evaluate(plan, seed=seed)
        slow, _ = full.evaluate(plan, seed=seed)
        same = fast.feasible == slow.feasible
        totals["plans"] += 1
        totals["agree"] += same
        totals["false_rejections"] += slow.feasible and not fast.feasible
        totals["false_acceptances"] += fast.feasible and not slow.feasible
        totals["cheap_s"] += fast.cost.seconds
        totals["full_s"] += slow.cost.seconds
        totals["cheap_feasible"] += fast.feasible
        totals["full_feasible"] += slow.feasible
        if plan.shared:  # plans that need retraining at all
            totals["cheap_trained_s"] += fast.cost.seconds
            totals["full_trained_s"] += slow.cost.seconds
        print(
            f"{index:>4} {len(plan):>6} {100 * fast.saved_bytes / bound:>5.0f}%"
            f"  {verdict[fast.feasible]:>10} {fast.cost.seconds:>6.1f} {fast.stop_reason:>9}"
            f"  {verdict[slow.feasible]:>10} {slow.cost.seconds:>6.1f}  {'yes' if same else 'NO'}"
            f"  (worst ratio cheap {fast.worst_ratio:.3f}, full {slow.worst_ratio:.3f};"
            f" cheap curve {' '.join(f'{r:.2f}' for r in fast.curve)};"
            f" full per model {' '.join(f'{m.name} {m.ratio:.2f}' for m in slow.models)})",
            flush=True,
        )
    _summary(f"plan seed {seed}", totals)
    return totals


def _summary(title: str, t: dict[str, float]) -> None:
    print(f"{title}: agreement {t['agree']:.0f}/{t['plans']:.0f} = {100 * t['agree'] / t['plans']:.0f}%"
          f" (false rejections {t['false_rejections']:.0f}, false acceptances {t['false_acceptances']:.0f});"
          f" time cheap {t['cheap_s']:.0f} s, full {t['full_s']:.0f} s, full/cheap = {t['full_s'] / t['cheap_s']:.1f}x"
          f" (without plan none {t['full_trained_s'] / max(t['cheap_trained_s'], 1e-9):.1f}x);"
          f" feasible: cheap {t['cheap_feasible']:.0f}, full {t['full_feasible']:.0f}", flush=True)


def full_retraining(settings: StudySettings, judged: str) -> StudySettings:
    """The study's settings as full retraining (the library's, as ``confirm`` uses it), on drifted data as well."""
    return dataclasses.replace(settings, evaluator=full_evaluator(settings.evaluator, judged=judged),
                               drift_evaluator=full_evaluator(settings.drift_evaluator, judged=judged))


def greedy_savings(study: StudyFile, prepared: PreparedWorkload, trials: int, storage: str, judged: str) -> None:
    """The best feasible saving of a greedy search judged by the cheap evaluator, and of one judged by full retraining.

    A false rejection costs memory: a plan wrongly given up is one the search cannot build on.
    """
    full_study = dataclasses.replace(study, settings=full_retraining(study.settings, judged))
    results = {}
    for label, judged_by in (("cheap evaluator", study), ("full retraining", full_study)):
        search = open_search(judged_by, prepared=prepared, strategy="greedy", study_name=f"greedy-{label}")
        start = time.perf_counter()
        search.run(trials)
        best = search.best()
        results[label] = best.saved_bytes if best is not None else 0
        print(f"greedy, {trials} trials, judged by {label}: best feasible saving {results[label] / 1e6:.3f} MB"
              f" ({100 * results[label] / search.space.max_saved_bytes:.1f}% of the bound),"
              f" {time.perf_counter() - start:.0f} s", flush=True)
    print(f"cheap / full best saving: {100 * results['cheap evaluator'] / max(results['full retraining'], 1):.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--study", default=str(ROOT / "studies" / "digits-edge.yaml"))
    parser.add_argument("--plans", type=int, default=12, help="plans per plan seed, none and all included")
    parser.add_argument("--seeds", default="0", help="comma-separated plan seeds (they also seed the retraining)")
    parser.add_argument("--greedy-trials", type=int, default=0,
                        help="also run a greedy search of N trials judged by each evaluator and compare their savings")
    parser.add_argument("--full", choices=("end", "first-pass"), default="end",
                        help="judge full retraining at the end of its budget, or at the first check where all pass")
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
    full_settings = full_retraining(settings, args.full).evaluator
    full = Evaluator(prepared, full_settings, settings.target, analysis=cheap.analysis)
    names = [g.name for g in cheap.analysis.groups]
    print(f"target {settings.target}, {len(names)} groups, evaluator {settings.evaluator};"
          f" full retraining judged at the {args.full}")

    overall: dict[str, float] = {}
    for seed in (int(part) for part in args.seeds.split(",")):
        for key, value in compare(cheap, full, draw_plans(names, args.plans, seed), seed).items():
            overall[key] = overall.get(key, 0) + value
    _summary(f"all plan seeds ({args.seeds})", overall)
    if args.greedy_trials:
        greedy_savings(study, prepared, args.greedy_trials, storage, args.full)


if __name__ == "__main__":
    main()
