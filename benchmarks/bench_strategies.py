"""Strategy comparison on a tabular benchmark of the shipped digits workload.

Run by hand from the repository root:

    python benchmarks/bench_strategies.py --build-table --storage sqlite:///bench.db  # every block plan once (~40+ min)
    python benchmarks/bench_strategies.py                 # replay the strategies against the table (gp is the slow one)

To make the comparison affordable and exact, the 16 shareable groups of
``studies/digits-edge.yaml`` are coarsened into 12 blocks (``BLOCKINGS[12]``; the first
table had 6), and every one of the 2^12 = 4096 block plans is evaluated once with the
study's evaluator (the same cheap, early-exit evaluator a search uses). The outcomes are
shipped in ``benchmarks/data/digits-edge-blocks-12.json`` (and the 6-block table in
``digits-edge-blocks.json``; ``--blocks 6`` replays on it). Each strategy then runs as an
Optuna study over the block space whose objective looks its plans up in the table, so
every strategy sees exactly the same outcomes; the script prints the best feasible bytes
saved after 5, 10, 20 and 40 evaluations and after as many trials (mean and standard
error over seeds) next to the max-sharing bound and the table's optimum. The budget is
one of *evaluations*: a trial that proposes a plan its study already evaluated is
answered from the checkpoint store without retraining, so the first table counts only
new plans; the second counts every trial. Small budgets need many seeds (default 100):
with 10, the luck of the first random plans alone moves a mean at 5 trials by more than
the strategies differ.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna

from searchmerge.core.space import GroupInfo, SearchSpace, SharingPlan
from searchmerge.search.strategies import make_sampler

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "studies" / "digits-edge.yaml"
BUDGETS = (5, 10, 20, 40)
STRATEGIES = ("greedy", "surrogate", "tpe", "gp", "nsga2", "random")
#: A replay stops after this many times the budget in trials, even if plans kept repeating.
REPEAT_LIMIT = 2

#: Blocks of groups of studies/digits-edge.yaml: each block is shared or kept private as a whole.
#: Six blocks (64 plans) was the first table; greedy and the surrogate reach its optimum within
#: 10 evaluations, so it cannot tell good strategies from great ones. Twelve (4096 plans) can.
BLOCKINGS: dict[int, dict[str, tuple[str, ...]]] = {
    6: {
        "cross-layer3": ("layer3.0.conv2",),
        "resnet-layer3": ("layer3.0.conv1", "layer3.1.conv1", "layer3.1.conv2", "layer3.0.shortcut.0"),
        "cross-early": ("stem", "layer1.0.conv1", "layer2.0.conv2"),
        "resnet-layer2": ("layer2.0.conv1", "layer2.1.conv1", "layer2.1.conv2", "layer2.0.shortcut.0"),
        "resnet-layer1": ("layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2"),
        "heads": ("fc",),
    },
    12: {
        "cross-layer3.0.conv2": ("layer3.0.conv2",),
        "layer3.1.conv1": ("layer3.1.conv1",),
        "layer3.1.conv2": ("layer3.1.conv2",),
        "layer3.0.conv1+shortcut": ("layer3.0.conv1", "layer3.0.shortcut.0"),
        "cross-layer2.0.conv2": ("layer2.0.conv2",),
        "layer2.1.conv1": ("layer2.1.conv1",),
        "layer2.1.conv2": ("layer2.1.conv2",),
        "layer2.0.conv1+shortcut": ("layer2.0.conv1", "layer2.0.shortcut.0"),
        "cross-stem+layer1.0.conv1": ("stem", "layer1.0.conv1"),
        "layer1.0.conv2": ("layer1.0.conv2",),
        "layer1.1": ("layer1.1.conv1", "layer1.1.conv2"),
        "heads": ("fc",),
    },
}


def table_path(blocks: int) -> Path:
    """Where the table of a blocking is shipped."""
    suffix = "" if blocks == 6 else f"-{blocks}"
    return ROOT / "benchmarks" / "data" / f"digits-edge-blocks{suffix}.json"


_EVALUATOR = None  # one per worker process of build_table
_BLOCKS: dict[str, tuple[str, ...]] = {}


def _open_evaluator(storage: str | None, threads: int | None = None):  # type: ignore[no-untyped-def]
    import torch

    from searchmerge.config.study import open_study_file
    from searchmerge.training.evaluate import Evaluator
    from searchmerge.training.prepare import prepare_study

    if threads:
        torch.set_num_threads(threads)
    study = open_study_file(STUDY, storage=storage)
    prepared = prepare_study(study, progress=print)
    return study, Evaluator(prepared, study.settings.evaluator, study.settings.target)


def _start_worker(storage: str | None, blocks: dict[str, tuple[str, ...]]) -> None:
    global _EVALUATOR, _BLOCKS
    _EVALUATOR = _open_evaluator(storage, threads=1)[1]
    _BLOCKS = blocks


def _evaluate_blocks(blocks: tuple[str, ...]) -> dict:
    assert _EVALUATOR is not None
    plan = SharingPlan.of(n for b in blocks for n in _BLOCKS[b])
    evaluation, _ = _EVALUATOR.evaluate(plan)
    return {
        "blocks": list(blocks),
        "feasible": evaluation.feasible,
        "saved_bytes": evaluation.saved_bytes,
        "worst_ratio": round(evaluation.worst_ratio, 4),
        "stop_reason": evaluation.stop_reason,
        "seconds": round(evaluation.cost.seconds, 2),
    }


def build_table(storage: str | None, workers: int, blocking: int) -> None:
    """Evaluate every block plan; ``workers`` processes (one thread each) share the plans.

    Rows are appended to ``TABLE.partial`` (next to the table) as they come, so an interrupted build resumes
    where it stopped; the table is written when every plan is in.
    """
    from concurrent.futures import ProcessPoolExecutor

    blocks = BLOCKINGS[blocking]
    path = table_path(blocking)
    study, evaluator = _open_evaluator(storage)  # prepares the originals once, before the workers load them
    groups = {g.name: g for g in evaluator.analysis.groups}
    covered = sorted(n for names in blocks.values() for n in names)
    assert covered == sorted(groups), f"the blocks must cover every group exactly once: {sorted(groups)}"
    plans = [combo for size in range(len(blocks) + 1) for combo in itertools.combinations(blocks, size)]
    partial = path.with_suffix(".partial")
    rows = [json.loads(line) for line in partial.read_text().splitlines()] if partial.exists() else []
    done = {tuple(row["blocks"]) for row in rows}
    todo = [combo for combo in plans if combo not in done]
    print(f"{len(rows)} of {len(plans)} plans already evaluated; {len(todo)} to go", flush=True)
    start = time.perf_counter()
    with ProcessPoolExecutor(workers, initializer=_start_worker, initargs=(storage, blocks)) as pool, \
            partial.open("a") as log:
        for row in pool.map(_evaluate_blocks, todo, chunksize=4):
            rows.append(row)
            log.write(json.dumps(row) + "\n")
            log.flush()
            if len(rows) % 64 == 0 or len(rows) == len(plans):
                print(f"{len(rows)}/{len(plans)} plans ({time.perf_counter() - start:.0f} s)", flush=True)
    order = {combo: index for index, combo in enumerate(plans)}
    rows.sort(key=lambda row: order[tuple(row["blocks"])])
    table = {
        "study": "studies/digits-edge.yaml",
        "target": study.settings.target,
        "evaluator": vars(study.settings.evaluator),
        "blocks": {b: list(names) for b, names in blocks.items()},
        "block_saved_bytes": {b: sum(groups[n].saved_bytes for n in names) for b, names in blocks.items()},
        "plans": rows,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table, indent=0))
    partial.unlink()
    print(f"wrote {path}")


@dataclass(frozen=True)
class Curves:
    """Best feasible saving of one replayed search, counted two ways.

    ``per_trial[n - 1]`` is the best after n trials; ``per_evaluation[n - 1]`` after n
    *evaluations*: a trial that proposes a plan the study already evaluated is answered
    from the checkpoint store without retraining, so it spends no evaluation.
    """

    per_trial: list[float]
    per_evaluation: list[float]


def replay(strategy: str, seed: int, table: dict, budget: int, stopped_as: str = "complete") -> Curves:
    """Run one strategy against the table until ``budget`` trials and ``budget`` evaluations.

    A strategy that keeps repeating plans stops after ``REPEAT_LIMIT`` x ``budget`` trials;
    the evaluations it did not spend leave its best saving where it was. A plan the
    evaluator stopped early (``hopeless``) is recorded as the search records it:
    ``complete`` (its saved bytes and a violated constraint) or ``pruned`` (its worst
    ratio as the last intermediate value, then PRUNED), as searches did before.
    """
    space = SearchSpace([GroupInfo(b, int(table["block_saved_bytes"][b])) for b in table["blocks"]])
    outcomes = {frozenset(row["blocks"]): row for row in table["plans"]}
    evaluated: set[frozenset[str]] = set()

    def objective(trial: optuna.Trial) -> float:
        plan = frozenset(space.suggest(trial).shared)
        row = outcomes[plan]
        trial.set_user_attr("repeat", plan in evaluated)
        evaluated.add(plan)
        trial.set_user_attr("feasible", row["feasible"])
        trial.set_user_attr("saved_bytes", row["saved_bytes"])
        trial.set_user_attr("constraint", table["target"] - row["worst_ratio"])
        if stopped_as == "pruned" and row["stop_reason"] in ("hopeless", "pruned"):
            trial.report(row["worst_ratio"], step=1)
            raise optuna.TrialPruned()
        return float(row["saved_bytes"])

    def enough(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        trials = len(study.trials)
        if (trials >= budget and len(evaluated) >= budget) or trials >= REPEAT_LIMIT * budget:
            study.stop()

    sampler = make_sampler(strategy, space, seed=seed, constraints_func=lambda t: (t.user_attrs["constraint"],))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, callbacks=[enough])
    best, per_trial, per_evaluation = 0.0, [], []
    for trial in study.trials:
        if trial.user_attrs.get("feasible"):
            best = max(best, float(trial.user_attrs["saved_bytes"]))
        per_trial.append(best)
        if not trial.user_attrs["repeat"]:
            per_evaluation.append(best)
    per_evaluation += [best] * (budget - len(per_evaluation))
    return Curves(per_trial[:budget], per_evaluation[:budget])


def _table(title: str, results: dict[str, list[tuple[float, float]]], bound: float) -> None:
    print(title)
    print(f"{'strategy':<10}" + "".join(f"{n:>16}" for n in BUDGETS))
    for strategy, row in results.items():
        print(f"{strategy:<10}" + "".join(f"{m / 1e6:>9.3f} ±{e / 1e6:.3f}" for m, e in row))
    print(f"{'bound':<10}" + "".join(f"{bound / 1e6:>9.3f}       " for _ in BUDGETS))


def _mean_and_error(values: list[float]) -> tuple[float, float]:
    error = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
    return statistics.mean(values), error


def _verdicts(results: dict[str, list[tuple[float, float]]], unit: str, optimum: float) -> None:
    for name in ("surrogate", "tpe"):
        if name not in results or "random" not in results:
            continue
        behind = [n for n, (a, _), (b, _) in zip(BUDGETS, results[name], results["random"]) if a < b]
        print(f"  {name} >= random at every budget: "
              + ("yes" if not behind else f"NO (behind at {', '.join(map(str, behind))} {unit})"))
    at20 = {name: row[BUDGETS.index(20)][0] for name, row in results.items()}
    leader = max(at20, key=at20.__getitem__)
    print(f"  best strategy after 20 {unit}: {leader}, {100 * at20[leader] / optimum:.1f}% of the table's optimum"
          " (goal >= 95%); " + ", ".join(f"{name} {100 * value / optimum:.1f}%" for name, value in at20.items()))


def _start_replay_worker() -> None:
    import torch  # gp fits its Gaussian process with torch: one thread per worker process

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _replay_seed(strategy: str, table: dict, stopped_as: str, seed: int) -> Curves:
    return replay(strategy, seed, table, max(BUDGETS), stopped_as)


def compare(
    seeds: int,
    strategies: tuple[str, ...] = STRATEGIES,
    workers: int = 2,
    stopped_as: str = "complete",
    blocking: int = 12,
) -> None:
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    table = json.loads(table_path(blocking).read_text())
    bound = sum(table["block_saved_bytes"].values())
    optimum = max(row["saved_bytes"] for row in table["plans"] if row["feasible"])
    feasible = sum(row["feasible"] for row in table["plans"])
    print(f"table: {len(table['plans'])} plans, {feasible} feasible; max-sharing bound {bound / 1e6:.3f} MB;"
          f" best feasible in the table {optimum / 1e6:.3f} MB ({100 * optimum / bound:.1f}% of the bound)")
    per_trial: dict[str, list[tuple[float, float]]] = {}
    per_evaluation: dict[str, list[tuple[float, float]]] = {}
    with ProcessPoolExecutor(workers, initializer=_start_replay_worker) as pool:
        for strategy in strategies:
            start = time.perf_counter()
            curves = list(pool.map(partial(_replay_seed, strategy, table, stopped_as), range(seeds)))
            per_trial[strategy] = [_mean_and_error([c.per_trial[n - 1] for c in curves]) for n in BUDGETS]
            per_evaluation[strategy] = [_mean_and_error([c.per_evaluation[n - 1] for c in curves]) for n in BUDGETS]
            print(f"  replayed {strategy} {seeds} times in {time.perf_counter() - start:.1f} s", flush=True)
    _table(f"best feasible saving (MB) after N evaluations (repeated plans are free), mean ± standard error"
           f" of {seeds} seeds:", per_evaluation, bound)
    _verdicts(per_evaluation, "evaluations", optimum)
    _table(f"best feasible saving (MB) after N trials (repeated plans count), mean ± standard error"
           f" of {seeds} seeds:", per_trial, bound)
    _verdicts(per_trial, "trials", optimum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-table", action="store_true", help="evaluate every block plan and write the table")
    parser.add_argument("--blocks", type=int, choices=sorted(BLOCKINGS), default=12,
                        help="which table: 12 blocks (4096 plans, the default) or the first 6 (64 plans)")
    parser.add_argument("--storage", default=None, help="storage for the originals (with --build-table)")
    parser.add_argument("--workers", type=int, default=2, help="processes evaluating plans or replaying seeds")
    parser.add_argument("--seeds", type=int, default=100,
                        help="replays per strategy; below ~100, the luck of the first random plans decides small budgets")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated strategies to replay")
    parser.add_argument("--stopped-as", choices=("complete", "pruned"), default="complete",
                        help="how a plan stopped as hopeless is recorded (searchmerge records it COMPLETE)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.build_table:
        build_table(args.storage, args.workers, args.blocks)
    compare(args.seeds, tuple(args.strategies.split(",")), args.workers, args.stopped_as, args.blocks)


if __name__ == "__main__":
    main()
