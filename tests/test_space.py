"""The search space: groups <-> Optuna parameters. Plain Python, no torch."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import optuna
import pytest
from optuna.distributions import CategoricalDistribution

from searchmerge.core.errors import SearchmergeError
from searchmerge.core.space import GroupInfo, SearchSpace, SharingPlan

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _space() -> SearchSpace:
    return SearchSpace(
        [
            GroupInfo(name="layer4.0.conv2", saved_bytes=4000, models=("a", "b")),
            GroupInfo(name="layer3.0.conv2", saved_bytes=1000, models=("a", "b", "c")),
            GroupInfo(name="fc", saved_bytes=50, models=("b", "c")),
        ]
    )


def test_group_info_is_frozen_and_validated() -> None:
    group = GroupInfo(name="fc", saved_bytes=10, models=["a", "b"])  # type: ignore[arg-type]
    assert group.models == ("a", "b")
    assert hash(group) == hash(GroupInfo(name="fc", saved_bytes=10, models=("a", "b")))
    with pytest.raises(dataclasses.FrozenInstanceError):
        group.name = "other"  # type: ignore[misc]
    with pytest.raises(SearchmergeError, match="non-empty"):
        GroupInfo(name="", saved_bytes=1)
    with pytest.raises(SearchmergeError, match="non-negative"):
        GroupInfo(name="fc", saved_bytes=-1)
    with pytest.raises(SearchmergeError, match="non-negative"):
        GroupInfo(name="fc", saved_bytes=1.5)  # type: ignore[arg-type]


def test_group_info_of_any_group_like_object() -> None:
    analysis_group = SimpleNamespace(name="stem", saved_bytes=864, models=("det", "cls"), bytes=864)
    assert GroupInfo.of(analysis_group) == GroupInfo(name="stem", saved_bytes=864, models=("det", "cls"))
    space = SearchSpace.from_groups([analysis_group, GroupInfo(name="fc", saved_bytes=1)])
    assert space.names == ("stem", "fc")


def test_space_names_distributions_and_bytes() -> None:
    space = _space()
    assert space.names == ("layer4.0.conv2", "layer3.0.conv2", "fc")
    assert len(space) == 3 and "fc" in space and "nope" not in space
    assert [group.name for group in space] == list(space.names)
    assert space.group("fc").saved_bytes == 50
    assert space.max_saved_bytes == 5050
    distributions = space.distributions()
    assert list(distributions) == list(space.names)
    assert all(d == CategoricalDistribution((False, True)) for d in distributions.values())
    assert "3 groups" in repr(space)
    with pytest.raises(SearchmergeError, match="no group is named"):
        space.group("nope")


def test_space_rejects_duplicates_and_foreign_records() -> None:
    with pytest.raises(SearchmergeError, match="repeated: fc"):
        SearchSpace([GroupInfo(name="fc", saved_bytes=1), GroupInfo(name="fc", saved_bytes=2)])
    with pytest.raises(SearchmergeError, match="GroupInfo"):
        SearchSpace([SimpleNamespace(name="fc", saved_bytes=1, models=())])  # type: ignore[list-item]


def test_plans_and_params_round_trip() -> None:
    space = _space()
    plan = space.plan_from_params({"fc": True, "layer3.0.conv2": False, "not_a_group": True})
    assert plan == SharingPlan.of(["fc"])  # missing = not shared, unknown ignored
    assert space.params_from_plan(plan) == {"layer4.0.conv2": False, "layer3.0.conv2": False, "fc": True}
    assert list(space.params_from_plan(plan)) == list(space.names)
    full = SharingPlan.of(space.names)
    assert space.plan_from_params(space.params_from_plan(full)) == full
    assert space.saved_bytes(full) == space.max_saved_bytes
    assert space.saved_bytes(SharingPlan.of(())) == 0
    with pytest.raises(SearchmergeError, match="do not exist"):
        space.params_from_plan(SharingPlan.of(["ghost"]))
    with pytest.raises(SearchmergeError, match="do not exist"):
        space.saved_bytes(SharingPlan.of(["ghost"]))


def test_fingerprint_is_stable_and_tells_workloads_apart() -> None:
    space = _space()
    assert len(space.fingerprint) == 64
    assert space.fingerprint == _space().fingerprint
    assert SearchSpace(reversed(space.groups)).fingerprint == space.fingerprint  # order does not matter
    changed = [dataclasses.replace(g, saved_bytes=g.saved_bytes + 1) if g.name == "fc" else g for g in space.groups]
    assert SearchSpace(changed).fingerprint != space.fingerprint
    assert SearchSpace(space.groups[:2]).fingerprint != space.fingerprint


def test_suggest_with_a_fixed_trial() -> None:
    space = _space()
    trial = optuna.trial.FixedTrial({"layer4.0.conv2": True, "layer3.0.conv2": False, "fc": True})
    assert space.suggest(trial) == SharingPlan.of(["layer4.0.conv2", "fc"])


def test_suggest_stores_readable_boolean_params(tmp_path) -> None:
    space = _space()
    storage = f"sqlite:///{tmp_path / 'space.db'}"
    study = optuna.create_study(storage=storage, direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    plans = []

    def objective(trial: optuna.Trial) -> float:
        plan = space.suggest(trial)
        plans.append(plan)
        return space.saved_bytes(plan)

    study.optimize(objective, n_trials=5)
    reloaded = optuna.load_study(study_name=study.study_name, storage=storage)
    for trial, plan in zip(reloaded.trials, plans):
        assert set(trial.params) == set(space.names)
        assert all(isinstance(value, bool) for value in trial.params.values())
        assert space.plan_from_params(trial.params) == plan
        assert trial.value == space.saved_bytes(plan)
