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

With ``--json`` it compares evaluators instead (issue 21, "Measured")::

    python benchmarks/bench_search.py --study studies/digits-edge.yaml --strategies greedy,surrogate \
        --trials 10 --seed 0 --evaluator cheap,full --json

runs each strategy with each evaluator on the same seed: ``cheap`` is the study's evaluator
(incremental unless ``--incremental off``), its best plan confirmed at the end by full retraining
from the originals (``searchmerge confirm``); ``full`` judges every plan by that full retraining,
from the originals. One JSON line per run: ``{"study", "strategy", "evaluator", "seed",
"trials", "best_saved_bytes", "retraining_seconds", "confirmed", ...}``, where
``retraining_seconds`` is the search's (``confirmation_seconds`` is said apart) and
``confirmed`` the verdict of full retraining on the best plan (``null`` when none is feasible);
also ``groups`` (of the space), ``evaluations`` (distinct plans evaluated), and
``evaluations_to_best`` / ``retraining_seconds_to_best`` up to the best plan's trial.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import optuna
from bench_drift import fresh, outcome

from searchmerge.cli.progress import TerminalProgress
from searchmerge.cli.report import format_table, megabytes
from searchmerge.config.study import StudyFile, open_study_file
from searchmerge.search.confirmation import confirm
from searchmerge.search.merge_search import MergeSearch
from searchmerge.training.evaluate import full_retraining
from searchmerge.training.prepare import PreparedWorkload, prepare_study


def evaluator_run(study: StudyFile, prepared: PreparedWorkload, strategy: str, evaluator: str, args: argparse.Namespace,
                  trials: int, say: TerminalProgress) -> dict[str, object]:
    """One search of ``strategy`` judged by the ``cheap`` or the ``full`` evaluator, its best plan confirmed."""
    settings = study.settings
    if args.loss_weights:
        settings = settings.with_evaluator(loss_weights=args.loss_weights)
    incremental = evaluator == "cheap" and args.incremental == "on"
    if evaluator == "full":
        settings = dataclasses.replace(settings, evaluator=full_retraining(settings.evaluator),
                                       drift_evaluator=full_retraining(settings.drift_evaluator))
    elif evaluator != "cheap":
        raise SystemExit(f"--evaluator takes cheap and full, not {evaluator!r}")
    judged = dataclasses.replace(study, settings=settings)
    name = f"bench-search-{strategy}-{evaluator}-s{args.seed}" + ("" if incremental or evaluator == "full" else "-scratch")
    name += f"-lw{args.loss_weights}" if args.loss_weights else ""
    fresh(args.storage, name)
    start = time.perf_counter()
    search = MergeSearch(judged, prepared, strategy=strategy, study_name=name, seed=args.seed, progress=say,
                         incremental=incremental)
    search.run(trials)
    result = outcome(search, time.perf_counter() - start)
    best = search.best()
    to_best = None if best is None else evaluations_until(search, best.number)
    confirmation = confirm(search, best, progress=say) if best is not None else None
    return {
        "study": study.workload.name, "strategy": strategy, "evaluator": evaluator, "seed": args.seed,
        "trials": trials, "best_saved_bytes": result.best_saved, "retraining_seconds": round(result.total_seconds, 1),
        "confirmed": None if confirmation is None else confirmation.confirmed,
        "confirmation_seconds": None if confirmation is None else round(confirmation.evaluation.cost.seconds, 1),
        "incremental": incremental, "loss_weights": args.loss_weights, "bound": search.space.max_saved_bytes,
        "best_trial": None if best is None else best.number, "wall_seconds": round(result.wall_seconds, 1),
        "groups": len(search.space.groups), "evaluations": evaluations_until(search, None)[0],
        "evaluations_to_best": None if to_best is None else to_best[0],
        "retraining_seconds_to_best": None if to_best is None else round(to_best[1], 1),
    }


def evaluations_until(search: MergeSearch, last: int | None) -> tuple[int, float]:
    """Plans evaluated (a repeated plan, answered from the store, counts once) and their retraining
    seconds, over the trials numbered up to ``last`` (every trial when ``None``)."""
    seen: set[tuple] = set()
    spent = 0.0
    for trial in sorted(search.finished_trials(), key=lambda t: t.number):
        if last is not None and trial.number > last:
            break
        plan = tuple(sorted(trial.params.items()))
        if plan not in seen:
            spent += float(trial.user_attrs.get("cost_seconds", 0.0))
        seen.add(plan)
    return len(seen), spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/campus.yaml")
    parser.add_argument("--storage", default="sqlite:///bench-search.db")
    parser.add_argument("--strategies", default="greedy,surrogate,tpe")
    parser.add_argument("--trials", default="10,20", help="comma-separated trial counts to report (the largest is run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--evaluator", default="cheap,full", help="with --json: cheap, full, or both")
    parser.add_argument("--incremental", choices=("on", "off"), default="on",
                        help="with --json: the cheap search evaluates plans incrementally (on) or from the originals")
    parser.add_argument("--loss-weights", type=float, default=0.0, metavar="P",
                        help="with --json: the evaluator's loss_weights (0: off)")
    parser.add_argument("--json", action="store_true", help="one JSON line per strategy and evaluator")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    counts = sorted(int(part) for part in args.trials.split(","))

    study = open_study_file(args.study, storage=args.storage)
    # A line per step; on a terminal also a bar with an ETA. With --json stdout holds the JSON lines alone.
    say = TerminalProgress(sys.stderr if args.json else sys.stdout)
    prepared = prepare_study(study, progress=say)
    if args.json:
        for strategy in args.strategies.split(","):
            for evaluator in args.evaluator.split(","):
                line = evaluator_run(study, prepared, strategy, evaluator, args, counts[-1], say)
                print(json.dumps(line), flush=True)
        return
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
