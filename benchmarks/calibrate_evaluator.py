"""Set the cheap evaluator's early-exit rules on recorded learning curves, for tuning seeds only.

Run by hand from the repository root::

    python benchmarks/calibrate_evaluator.py record --seeds 0,1,2,3,4 --out curves.json
    python benchmarks/calibrate_evaluator.py simulate curves.json

``record`` draws the plans of ``bench_evaluator.py`` for each plan seed (none, all and
random plans), and for each plan
- retrains it as the cheap evaluator does (the study's subsample, learning rate and
  checks) but without early exit and for ``--max-epochs`` of the subsample, scoring
  every model on validation *and* test at every check (its whole learning curve), and
- retrains it as full retraining does (all data, the study's epochs, judged at the end),
and writes the curves, the full verdicts and the measured cost of a step and of a
score to a JSON file.

``simulate`` replays candidate rules (retraining budget, checks before a plan may be
given up, how fast curves are expected to flatten, optimism, the near-miss margin) on
the recorded curves exactly as :class:`~searchmerge.training.evaluate.Evaluator` would apply
them (scoring only the models near or below target, confirming marginal passes on the
test split), and prints each rule's agreement with full retraining, its false
rejections and false acceptances, and its estimated time against full retraining.

The rules are set on the curves of *tuning* seeds; a claim about them holds only on
plan seeds drawn afterwards, measured for real with ``bench_evaluator.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench_evaluator import draw_plans

from searchmerge.config.study import open_study_file
from searchmerge.training.evaluate import Evaluator
from searchmerge.training.prepare import prepare_study
from searchmerge.training.train import accuracy

ROOT = Path(__file__).resolve().parents[1]
#: The widest confirmation margin the replay tries; test ratios are recorded within it.
MAX_MARGIN = 0.04


def record(study_path: str, seeds: list[int], plans: int, max_epochs: int, storage: str | None, out: Path) -> None:
    folder = tempfile.mkdtemp(prefix="searchmerge-calibrate-")
    study = open_study_file(study_path, storage=storage or f"sqlite:///{folder}/calibrate.db")
    prepared = prepare_study(study, progress=print)
    settings = study.settings
    target = settings.target
    watch = dataclasses.replace(settings.evaluator, early_exit=False, max_epochs=max_epochs)
    watcher = Evaluator(prepared, watch, target)
    full = Evaluator(prepared, settings.with_evaluator(fraction=1.0, early_exit=False).evaluator, target,
                     analysis=watcher.analysis)
    names = [g.name for g in watcher.analysis.groups]
    models = list(prepared.models)
    bound = watcher.analysis.max_sharing_saved_bytes
    rows = []
    for seed in seeds:
        for index, plan in enumerate(draw_plans(names, plans, seed)):
            curve: list[dict[str, dict[str, float]]] = []
            spent = {"observing": 0.0, "one_score": 0.0}

            def observe(check: int, ratios: dict, merged: dict) -> None:
                # Test ratios decide only a confirmation: when every model passes on validation, for the
                # models within the widest margin replayed. A test split costs what a validation split does.
                if check == 0:  # what scoring one model on validation costs
                    first = next(iter(merged))
                    timed = time.perf_counter()
                    accuracy(merged[first], prepared.data[first].val, device=watcher.device)
                    spent["one_score"] = time.perf_counter() - timed
                start = time.perf_counter()
                tests = {}
                if all(r >= target for r in ratios.values()):
                    for n, m in merged.items():
                        if ratios[n] < target + MAX_MARGIN:
                            tests[n] = accuracy(m, prepared.data[n].test, device=watcher.device) / (
                                prepared.baselines[n].test_accuracy)
                curve.append({"val": dict(ratios), "test": tests})
                spent["observing"] += time.perf_counter() - start

            watched, _ = watcher.evaluate(plan, seed=seed, observe=observe)
            reference, _ = full.evaluate(plan, seed=seed)
            scoring = spent["one_score"] * len(models) * len(curve)  # every model is scored at every check here
            training = max(0.0, watched.cost.seconds - spent["observing"] - scoring)
            rows.append({
                "seed": seed, "index": index, "groups": sorted(plan.shared), "saved": watched.saved_bytes / bound,
                "steps_per_check": watched.cost.steps // max(1, len(curve) - 1), "curve": curve,
                "full": {"feasible": reference.feasible, "worst_ratio": reference.worst_ratio,
                         "seconds": reference.cost.seconds, "steps": reference.cost.steps},
                "step_seconds": training / max(1, watched.cost.steps), "score_seconds": spent["one_score"],
            })
            print(f"seed {seed} plan {index}: {len(plan)} groups, full {reference.feasible} "
                  f"({reference.worst_ratio:.3f}, {reference.cost.seconds:.1f} s), curve "
                  + " ".join(f"{min(c['val'].values()):.2f}" for c in curve), flush=True)
    document = {"study": study_path, "target": target, "evaluator": dataclasses.asdict(watch),
                "models": list(prepared.models), "seeds": seeds, "rows": rows}
    out.write_text(json.dumps(document, indent=1))
    print(f"wrote {out}")


@dataclass(frozen=True)
class Rule:
    """One candidate set of early-exit settings (see ``EvaluatorSettings``)."""

    max_epochs: int
    min_checks: int
    pace_decay: float
    optimism: float
    confirm_margin: float = 0.02


@dataclass(frozen=True)
class Outcome:
    feasible: bool
    steps: int
    scores: int
    checks: int


def replay(row: dict, rule: Rule, target: float, checks_per_epoch: int) -> Outcome:
    """What the evaluator would decide on this recorded curve under ``rule`` (see ``_Scoreboard``)."""
    curve = row["curve"]
    last = min(len(curve) - 1, rule.max_epochs * checks_per_epoch)
    names = list(curve[0]["val"])
    untouched = {n for n in names if curve[0]["val"][n] == 1.0}  # scored 1 without a pass: its original weights
    points: dict[str, list[tuple[int, float]]] = {n: [(0, 1.0)] if n in untouched else [] for n in names}
    scores = 0
    margin = target + rule.confirm_margin
    for check in range(last + 1):
        final = check == last

        def measure(due: list[str]) -> None:
            nonlocal scores
            for n in due:
                if points[n] and points[n][-1][0] == check:
                    continue
                points[n].append((check, curve[check]["val"][n]))
                scores += 1

        measure([n for n, p in points.items() if final or not p or p[-1][1] < margin])
        if all(p[-1][1] >= target for p in points.values()):
            measure([n for n, p in points.items() if p[-1][0] != check])
        ratios = {n: p[-1][1] for n, p in points.items()}
        if all(r >= target for r in ratios.values()):
            marginal = [n for n, r in ratios.items() if r < margin]
            scores += len(marginal)
            if all(curve[check]["test"][n] >= target for n in marginal):
                return Outcome(True, check * row["steps_per_check"], scores, check + 1)
        if final:
            return Outcome(False, check * row["steps_per_check"], scores, check + 1)
        if _hopeless(points, check, last, rule, target):
            return Outcome(False, check * row["steps_per_check"], scores, check + 1)
    raise AssertionError("unreachable")


def _hopeless(points: dict[str, list[tuple[int, float]]], check: int, total: int, rule: Rule, target: float) -> bool:
    """``_Scoreboard.hopeless``, on recorded points."""
    if check < rule.min_checks:
        return False
    remaining = total - check
    decay = rule.pace_decay
    horizon = remaining if decay >= 1 else decay * (1 - decay**remaining) / (1 - decay)
    for curve in points.values():
        best = max((r for _, r in curve), default=target)
        if best >= target - rule.confirm_margin or len(curve) < 2:
            continue
        recent = curve[-3:]
        pace = max([(rb - ra) / (cb - ca) * decay ** (check - cb) for (ca, ra), (cb, rb) in zip(recent, recent[1:])]
                   + [0.0])
        if best + rule.optimism * pace * horizon < target:
            return True
    return False


def simulate(path: Path, top: int) -> None:
    document = json.loads(path.read_text())
    rows, target = document["rows"], document["target"]
    per_epoch = document["evaluator"]["checks_per_epoch"]
    # Costs measured in the recording: a step of every model, and scoring one model; full retraining's own time.
    full_seconds = sum(r["full"]["seconds"] for r in rows)
    step_s = sum(r["step_seconds"] for r in rows) / len(rows)
    score_s = sum(r["score_seconds"] for r in rows) / len(rows)
    results = []
    grid = itertools.product((3, 4, 5, 6), (1, 2, 3, 4, 6), (0.5, 0.7, 0.85, 1.0), (1.0, 1.5, 2.0), (0.02, MAX_MARGIN))
    for epochs, min_checks, decay, optimism, margin in grid:
        rule = Rule(epochs, min_checks, decay, optimism, margin)
        outcomes = [replay(r, rule, target, per_epoch) for r in rows]
        agree = sum(o.feasible == r["full"]["feasible"] for o, r in zip(outcomes, rows))
        false_rejections = sum(not o.feasible and r["full"]["feasible"] for o, r in zip(outcomes, rows))
        false_acceptances = sum(o.feasible and not r["full"]["feasible"] for o, r in zip(outcomes, rows))
        seconds = sum(o.steps * step_s + o.scores * score_s for o in outcomes)
        results.append((agree / len(rows), full_seconds / max(seconds, 1e-9), false_rejections,
                        false_acceptances, rule))
    results.sort(key=lambda item: (-item[0], -item[1]))
    print(f"{len(rows)} plans from seeds {document['seeds']}; full retraining {full_seconds:.0f} s;"
          f" a cheap step {step_s * 1000:.0f} ms, scoring one model {score_s * 1000:.0f} ms")
    print(f"{'agree':>6} {'ratio':>6} {'FR':>3} {'FA':>3}  rule")
    for agree, ratio, rejections, acceptances, rule in results[:top]:
        print(f"{100 * agree:>5.1f}% {ratio:>5.1f}x {rejections:>3} {acceptances:>3}  {rule}")
    print("the Pareto frontier (no rule agrees more at a higher ratio):")
    frontier = [r for r in results if not any(o[0] >= r[0] and o[1] > r[1] for o in results)]
    for agree, ratio, rejections, acceptances, rule in sorted(frontier, key=lambda item: -item[1]):
        print(f"{100 * agree:>5.1f}% {ratio:>5.1f}x {rejections:>3} {acceptances:>3}  {rule}")
    good = [r for r in results if r[0] >= 0.95 and r[1] >= 10]
    print(f"rules with >= 95% agreement at >= 10x: {len(good)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("record")
    rec.add_argument("--study", default=str(ROOT / "studies" / "digits-edge.yaml"))
    rec.add_argument("--seeds", default="0,1,2,3,4", help="tuning plan seeds, comma-separated")
    rec.add_argument("--plans", type=int, default=12)
    rec.add_argument("--max-epochs", type=int, default=6, help="epochs of the subsample to record")
    rec.add_argument("--storage", default=None)
    rec.add_argument("--out", type=Path, required=True)
    sim = commands.add_parser("simulate")
    sim.add_argument("curves", type=Path)
    sim.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    if args.command == "record":
        record(args.study, [int(s) for s in args.seeds.split(",")], args.plans, args.max_epochs, args.storage, args.out)
    else:
        simulate(args.curves, args.top)


if __name__ == "__main__":
    main()
