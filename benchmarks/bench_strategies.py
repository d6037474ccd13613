"""Strategy comparison on a tabular benchmark of the shipped digits workload.

Run by hand from the repository root:

    python benchmarks/bench_strategies.py --build-table --storage sqlite:///bench.db  # every coarse plan once (~15-30 min)
    python benchmarks/bench_strategies.py                 # replay the strategies against the table (seconds)

To make the comparison affordable and exact, the 16 shareable groups of
``studies/digits-edge.yaml`` are coarsened into 6 blocks (listed in ``BLOCKS``),
and every one of the 2^6 = 64 block plans is evaluated once with the study's
evaluator (the same cheap, early-exit evaluator a search uses). The outcomes are
shipped in ``benchmarks/data/digits-edge-blocks.json``. Each strategy then runs as
an Optuna study over the block space whose objective looks its plans up in the
table, so every strategy sees exactly the same outcomes; the script prints the
best feasible bytes saved after 5, 10, 20 and 40 trials (mean over seeds) next
to the max-sharing bound and the table's optimum.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
import warnings
from pathlib import Path

import optuna

from searchmerge.space import GroupInfo, SearchSpace, SharingPlan
from searchmerge.strategies import make_sampler

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "benchmarks" / "data" / "digits-edge-blocks.json"
STUDY = ROOT / "studies" / "digits-edge.yaml"
BUDGETS = (5, 10, 20, 40)
STRATEGIES = ("greedy", "surrogate", "tpe", "gp", "nsga2", "random")

#: Blocks of groups of studies/digits-edge.yaml: each block is shared or kept private as a whole.
BLOCKS: dict[str, tuple[str, ...]] = {
    "cross-layer3": ("layer3.0.conv2",),
    "resnet-layer3": ("layer3.0.conv1", "layer3.1.conv1", "layer3.1.conv2", "layer3.0.shortcut.0"),
    "cross-early": ("stem", "layer1.0.conv1", "layer2.0.conv2"),
    "resnet-layer2": ("layer2.0.conv1", "layer2.1.conv1", "layer2.1.conv2", "layer2.0.shortcut.0"),
    "resnet-layer1": ("layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2"),
    "heads": ("fc",),
}


_EVALUATOR = None  # one per worker process of build_table


def _open_evaluator(storage: str | None, threads: int | None = None):  # type: ignore[no-untyped-def]
    import torch

    from searchmerge.evaluate import Evaluator
    from searchmerge.study import open_study_file, prepare_study

    if threads:
        torch.set_num_threads(threads)
    study = open_study_file(STUDY, storage=storage)
    prepared = prepare_study(study, progress=print)
    return study, Evaluator(prepared, study.settings.evaluator, study.settings.target)


def _start_worker(storage: str | None) -> None:
    global _EVALUATOR
    _EVALUATOR = _open_evaluator(storage, threads=1)[1]


def _evaluate_blocks(blocks: tuple[str, ...]) -> dict:
    assert _EVALUATOR is not None
    plan = SharingPlan.of(n for b in blocks for n in BLOCKS[b])
    evaluation, _ = _EVALUATOR.evaluate(plan)
    return {
        "blocks": list(blocks),
        "feasible": evaluation.feasible,
        "saved_bytes": evaluation.saved_bytes,
        "worst_ratio": round(evaluation.worst_ratio, 4),
        "stop_reason": evaluation.stop_reason,
        "seconds": round(evaluation.cost.seconds, 2),
    }


def build_table(storage: str | None, workers: int) -> None:
    """Evaluate every block plan; ``workers`` processes (one thread each) share the plans."""
    from concurrent.futures import ProcessPoolExecutor

    study, evaluator = _open_evaluator(storage)  # prepares the originals once, before the workers load them
    groups = {g.name: g for g in evaluator.analysis.groups}
    covered = sorted(n for names in BLOCKS.values() for n in names)
    assert covered == sorted(groups), f"BLOCKS must cover every group exactly once: {sorted(groups)}"
    plans = [blocks for size in range(len(BLOCKS) + 1) for blocks in itertools.combinations(BLOCKS, size)]
    rows = []
    with ProcessPoolExecutor(workers, initializer=_start_worker, initargs=(storage,)) as pool:
        for row in pool.map(_evaluate_blocks, plans):
            rows.append(row)
            print(f"{len(rows):>2}/{len(plans)} {','.join(row['blocks']) or '(none)':<70} {row['feasible']!s:<5}"
                  f" {row['worst_ratio']:.3f} {row['seconds']:.1f} s", flush=True)
    table = {
        "study": "studies/digits-edge.yaml",
        "target": study.settings.target,
        "evaluator": vars(study.settings.evaluator),
        "blocks": {b: list(names) for b, names in BLOCKS.items()},
        "block_saved_bytes": {b: sum(groups[n].saved_bytes for n in names) for b, names in BLOCKS.items()},
        "plans": rows,
    }
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    TABLE.write_text(json.dumps(table, indent=1))
    print(f"wrote {TABLE}")


def replay(strategy: str, seed: int, table: dict, n_trials: int) -> list[float]:
    """Best feasible saving after each trial of one strategy run against the table."""
    space = SearchSpace([GroupInfo(b, int(table["block_saved_bytes"][b])) for b in table["blocks"]])
    outcomes = {frozenset(row["blocks"]): row for row in table["plans"]}

    def objective(trial: optuna.Trial) -> float:
        row = outcomes[frozenset(space.suggest(trial).shared)]
        trial.set_user_attr("feasible", row["feasible"])
        trial.set_user_attr("constraint", table["target"] - row["worst_ratio"])
        return float(row["saved_bytes"])

    sampler = make_sampler(strategy, space, seed=seed, constraints_func=lambda t: (t.user_attrs["constraint"],))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=n_trials)
    best, curve = 0.0, []
    for trial in study.trials:
        if trial.user_attrs.get("feasible"):
            best = max(best, float(trial.value or 0.0))
        curve.append(best)
    return curve


def compare(seeds: int) -> None:
    table = json.loads(TABLE.read_text())
    bound = sum(table["block_saved_bytes"].values())
    optimum = max(row["saved_bytes"] for row in table["plans"] if row["feasible"])
    feasible = sum(row["feasible"] for row in table["plans"])
    print(f"table: {len(table['plans'])} plans, {feasible} feasible; max-sharing bound {bound / 1e6:.3f} MB;"
          f" best feasible in the table {optimum / 1e6:.3f} MB ({100 * optimum / bound:.1f}% of the bound)")
    print(f"best feasible saving (MB), mean over {seeds} seeds, after N trials:")
    print(f"{'strategy':<10}" + "".join(f"{n:>10}" for n in BUDGETS) + f"{'seconds':>10}")
    results: dict[str, list[float]] = {}
    for strategy in STRATEGIES:
        start = time.perf_counter()
        curves = [replay(strategy, seed, table, max(BUDGETS)) for seed in range(seeds)]
        results[strategy] = [statistics.mean(c[n - 1] for c in curves) for n in BUDGETS]
        print(f"{strategy:<10}" + "".join(f"{v / 1e6:>10.3f}" for v in results[strategy])
              + f"{time.perf_counter() - start:>10.1f}")
    print(f"{'bound':<10}" + "".join(f"{bound / 1e6:>10.3f}" for _ in BUDGETS))
    best40 = max(r[-1] for r in results.values())
    best20 = max(r[BUDGETS.index(20)] for r in results.values())
    for name in ("surrogate", "tpe"):
        ok = all(a >= b for a, b in zip(results[name], results["random"]))
        print(f"{name} >= random at every budget: {'yes' if ok else 'NO'}")
    print(f"best at 20 trials / best at 40 trials: {100 * best20 / best40:.1f}% (required >= 90%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-table", action="store_true", help="evaluate every block plan and write the table")
    parser.add_argument("--storage", default=None, help="storage for the originals (with --build-table)")
    parser.add_argument("--workers", type=int, default=2, help="processes evaluating plans (with --build-table)")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.build_table:
        build_table(args.storage, args.workers)
    compare(args.seeds)


if __name__ == "__main__":
    main()
