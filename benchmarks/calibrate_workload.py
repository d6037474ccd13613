"""Calibrate a workload: how many random plans does the cheap evaluator find feasible?

Run by hand, one variant per process (they are independent, so a many-core machine
runs a whole sweep at once)::

    python benchmarks/calibrate_workload.py --list
    OMP_NUM_THREADS=1 python benchmarks/calibrate_workload.py --variant narrow --out results/

A variant is the shipped study file with some settings changed (see ``VARIANTS``).
For each, the originals are prepared in a temporary SQLite file, then share-all and
``--plans`` random plans (each group shared with probability 1/2, seeded as in
``bench_evaluator.py``) are evaluated with the study's cheap evaluator. It prints one
line per plan and a summary, and writes them as JSON to ``OUT/VARIANT.json``.

The shipped workload must make the search matter: share-all infeasible, some plans
saving much of the bound feasible, and 20-80% of random plans feasible.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from searchmerge.config.study import open_study_file
from searchmerge.core.space import SharingPlan
from searchmerge.training.evaluate import Evaluator
from searchmerge.training.prepare import prepare_study

ROOT = Path(__file__).resolve().parents[1]
Patch = Callable[[dict[str, Any]], None]


def _models(doc: dict[str, Any], **kwargs: Any) -> None:
    for model in doc["models"]:
        model.setdefault("kwargs", {}).update(kwargs)


def _evaluator(doc: dict[str, Any], **settings: Any) -> None:
    doc.setdefault("evaluator", {}).update(settings)


def _camera(doc: dict[str, Any], name: str, **camera: Any) -> None:
    next(m for m in doc["models"] if m["name"] == name)["camera"] = camera


def _task(doc: dict[str, Any], name: str, task: str, classes: int) -> None:
    model = next(m for m in doc["models"] if m["name"] == name)
    model["task"] = task
    model["kwargs"]["num_classes"] = classes


def _all(*patches: Patch) -> Patch:
    def apply(doc: dict[str, Any]) -> None:
        for patch in patches:
            patch(doc)

    return apply


NARROW: Patch = lambda d: _models(d, widths=[8, 16, 32])  # noqa: E731
TINY: Patch = lambda d: _models(d, widths=[4, 8, 16])  # noqa: E731
#: The cameras disagree on orientation: shared early filters must serve upright and turned digits.
TURNED: Patch = _all(
    lambda d: _camera(d, "gate-digit", rotation_deg=180, noise_std=0.05),
    lambda d: _camera(d, "lobby-high", rotation_deg=90, blur_sigma=0.8, brightness=-0.1),
)
#: Three models on one camera with tasks that cut the digits differently.
CROWD: Patch = _all(
    lambda d: _task(d, "gate-digit", "mod3", 3),
    lambda d: _camera(d, "gate-digit", blur_sigma=0.8, brightness=-0.1),
    lambda d: _task(d, "dock-loops", "prime", 2),
)

#: A task about the picture, not the digit: lobby-high tells how the picture is turned.
TURNS: Patch = lambda d: _task(d, "lobby-high", "turns", 4)  # noqa: E731
#: Two of them: the dock camera's VGG as well.
TURNS2: Patch = _all(TURNS, lambda d: _task(d, "dock-loops", "turns", 4))

VARIANTS: dict[str, Patch] = {
    "shipped": lambda d: None,
    "narrow": NARROW,
    "tiny": TINY,
    "epochs3": lambda d: _evaluator(d, max_epochs=3),
    "narrow-epochs4": _all(NARROW, lambda d: _evaluator(d, max_epochs=4)),
    "diverged": lambda d: d.update(finetune={"epochs": 12, "lr": 0.01}),
    "weak-backbone": lambda d: d.update(pretrain={"task": "loops", "epochs": 4, "lr": 0.003}),
    "target97": lambda d: d.update(target=0.97),
    "narrow-target97": _all(NARROW, lambda d: d.update(target=0.97)),
    "turned": TURNED,
    "narrow-turned": _all(NARROW, TURNED),
    "average": lambda d: _evaluator(d, init="average"),
    "narrow-diverged": _all(NARROW, lambda d: d.update(finetune={"epochs": 12, "lr": 0.01})),
    "narrow-quarter": _all(NARROW, lambda d: _evaluator(d, fraction=0.25)),
    "narrow-crowd": _all(NARROW, CROWD),
    "tiny-epochs5": _all(TINY, lambda d: _evaluator(d, max_epochs=5)),
    "tiny-turned": _all(TINY, TURNED),
    "narrow-all-data-3": lambda d: _evaluator(d, fraction=1.0, max_epochs=3, checks_per_epoch=2),
    "narrow-half-3": lambda d: _evaluator(d, fraction=0.5, max_epochs=3, checks_per_epoch=2),
    "narrow-half-3-often": lambda d: _evaluator(d, fraction=0.5, max_epochs=3, checks_per_epoch=4),
    "narrow-half-3-strict": lambda d: _evaluator(d, fraction=0.5, max_epochs=3, checks_per_epoch=2, optimism=1.0),
    "narrow-all-data-3-often": lambda d: _evaluator(d, fraction=1.0, max_epochs=3, checks_per_epoch=4),
    "narrow-turns": TURNS,
    "narrow-turns2": TURNS2,
    "tiny-turns": _all(TINY, TURNS),
}


def variant_document(base: Path, name: str) -> dict[str, Any]:
    document = yaml.safe_load(base.read_text())
    patched = copy.deepcopy(document)
    VARIANTS[name](patched)
    patched["name"] = f"{document['name']}-{name}"
    return patched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default=str(ROOT / "studies" / "digits-edge.yaml"))
    parser.add_argument("--variant", default="shipped", choices=sorted(VARIANTS))
    parser.add_argument("--plans", type=int, default=10, help="random plans besides share-all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="folder for VARIANT.json")
    parser.add_argument("--list", action="store_true", help="list the variants and exit")
    parser.add_argument("--full", action="store_true", help="full retraining: all data, no early exit")
    parser.add_argument("--only", type=int, default=None, help="evaluate only this plan (0 is share-all)")
    args = parser.parse_args()
    if args.list:
        print("\n".join(sorted(VARIANTS)))
        return

    folder = Path(tempfile.mkdtemp(prefix="searchmerge-calibrate-"))
    path = folder / f"{args.variant}.yaml"
    path.write_text(yaml.safe_dump(variant_document(Path(args.study), args.variant), sort_keys=False))
    study = open_study_file(path, storage=f"sqlite:///{folder}/calibrate.db")
    start = time.perf_counter()
    prepared = prepare_study(study, progress=print)
    prepare_seconds = time.perf_counter() - start
    settings = study.settings.with_evaluator(fraction=1.0, early_exit=False) if args.full else study.settings
    evaluator = Evaluator(prepared, settings.evaluator, settings.target)
    names = [g.name for g in evaluator.analysis.groups]
    rng = random.Random(args.seed)
    plans = [SharingPlan.of(names)]
    while len(plans) < args.plans + 1:
        plan = SharingPlan.of([n for n in names if rng.random() < 0.5])
        if plan not in plans:
            plans.append(plan)

    bound = evaluator.analysis.max_sharing_saved_bytes
    rows = []
    for index, plan in enumerate(plans):
        if args.only is not None and index != args.only:
            continue
        evaluation, _ = evaluator.evaluate(plan, seed=args.seed)
        row = {
            "plan": "all" if index == 0 else f"random-{index}",
            "groups": len(plan),
            "saved_share": evaluation.saved_bytes / bound,
            "feasible": evaluation.feasible,
            "worst_ratio": evaluation.worst_ratio,
            "first_check": evaluation.curve[0],
            "stop_reason": evaluation.stop_reason,
            "seconds": evaluation.cost.seconds,
            "ratios": {m.name: round(m.ratio, 3) for m in evaluation.models},
        }
        rows.append(row)
        print(f"{row['plan']:>9} {row['groups']:>3} groups {100 * row['saved_share']:>4.0f}% saved"
              f"  {'feasible' if row['feasible'] else 'infeasible':>10} worst {row['worst_ratio']:.3f}"
              f" (first check {row['first_check']:.3f}) {row['stop_reason']:>8} {row['seconds']:5.1f} s", flush=True)
        summary = _summary(args.variant, prepared, rows, prepare_seconds)
        if args.out:  # after every plan, so a sweep cut short still tells what it saw
            Path(args.out).mkdir(parents=True, exist_ok=True)
            suffix = ("-full" if args.full else "") + ("" if args.only is None else f"-{args.only}")
            (Path(args.out) / f"{args.variant}{suffix}.json").write_text(json.dumps({"summary": summary, "plans": rows}, indent=1))
    print(json.dumps(summary))


def _summary(variant: str, prepared: Any, rows: list[dict[str, Any]], prepare_seconds: float) -> dict[str, Any]:
    share_all = next((r for r in rows if r["plan"] == "all"), None)  # absent with --only N > 0
    random_rows = [r for r in rows if r["plan"] != "all"]
    return {
        "variant": variant,
        "baselines": {n: round(b.val_accuracy, 3) for n, b in prepared.baselines.items()},
        "share_all_feasible": None if share_all is None else share_all["feasible"],
        "random_feasible": sum(r["feasible"] for r in random_rows),
        "random_plans": len(random_rows),
        "best_feasible_share": max([r["saved_share"] for r in rows if r["feasible"]], default=0.0),
        "prepare_seconds": prepare_seconds,
        "evaluate_seconds": sum(r["seconds"] for r in rows),
    }


if __name__ == "__main__":
    main()
