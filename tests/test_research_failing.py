"""Which models the re-search's back-off blames for a failed plan (issue 21), without training.

The back-off must read the failing models by the one feasibility rule from the exact
ratios the evaluator measured, test-split confirmation included: a trial's ``ratio:``
attributes are rounded validation ratios only, and reading them stopped the back-off on
a plan that was infeasible.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution

from searchmerge.core.space import GroupInfo, SearchSpace, SharingPlan
from searchmerge.search.research import WARM_ATTR, failing_models, next_warm_plan
from searchmerge.training.evaluate import Cost, Evaluation, ModelOutcome

TARGET = 0.9
SPACE = SearchSpace([
    GroupInfo(name="big", saved_bytes=4000, models=("a", "b")),
    GroupInfo(name="small", saved_bytes=1000, models=("b", "c")),
])
PLAN = SharingPlan.of(["big", "small"])


def evaluation(ratios: dict[str, float], test_ratios: dict[str, float] | None = None) -> Evaluation:
    """An evaluation of ``PLAN`` with these exact validation (and test) ratios."""
    tests = test_ratios or {}
    models = tuple(
        ModelOutcome(name=n, accuracy=r, baseline=1.0, ratio=r, meets_target=False, test_ratio=tests.get(n))
        for n, r in ratios.items()
    )
    return Evaluation(plan=PLAN, stop_reason="budget", target=TARGET, models=models, unique_bytes=1,
                      saved_bytes=5000, cost=Cost(steps=1, samples=1, seconds=0.0, checks=1))


def search_after(deployed: Evaluation) -> Any:
    """A re-search whose one finished trial, the deployed plan's re-validation, gave ``deployed``.

    The trial carries what the search records (rounded ``ratio:`` attributes, the exact
    constraint, the checkpoint id); the store keeps the evaluation with the checkpoint.
    """
    attrs = {
        WARM_ATTR: "deployed",
        "constraint": deployed.constraint,
        "feasible": deployed.feasible,
        "checkpoint": "ckpt-0",
        **{f"ratio:{m.name}": round(m.ratio, 5) for m in deployed.models},
    }
    trial = optuna.trial.create_trial(
        params=SPACE.params_from_plan(PLAN),
        distributions={n: CategoricalDistribution((False, True)) for n in SPACE.names},
        value=float(deployed.saved_bytes),
        user_attrs=attrs,
    )
    records = {"ckpt-0": SimpleNamespace(id="ckpt-0", metadata={"evaluation": deployed.to_dict()})}
    store = SimpleNamespace(record=records.__getitem__)
    return SimpleNamespace(
        finished_trials=lambda: [trial],
        space=SPACE,
        study_file=SimpleNamespace(settings=SimpleNamespace(target=TARGET), store=store),
    )


def test_a_ratio_that_rounds_to_the_target_still_fails_and_backs_off() -> None:
    deployed = evaluation({"a": 0.899996, "b": 0.95, "c": 0.95})  # recorded as ratio:a = 0.9
    assert not deployed.feasible
    assert next_warm_plan(search_after(deployed), PLAN) == (SharingPlan.of(["small"]), "backoff")
    assert failing_models(deployed) == ["a"]


def test_a_failed_test_split_confirmation_fails_and_backs_off() -> None:
    deployed = evaluation({"a": 0.95, "b": 0.91, "c": 0.95}, test_ratios={"b": 0.85})  # passes on validation
    assert not deployed.feasible
    assert next_warm_plan(search_after(deployed), PLAN) == (SharingPlan.of(["small"]), "backoff")
    assert failing_models(deployed) == ["b"]
