"""Search strategies on a synthetic feasibility oracle. Plain Python, no torch of our own."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable

import numpy as np
import optuna
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import (
    check_dont_overwrite_parameters,
    check_estimators_unfitted,
    check_fit_check_is_fitted,
    check_get_params_invariance,
    check_no_attributes_set_in_init,
    check_set_params,
)

from searchmerge.core.errors import SearchmergeError
from searchmerge.core.space import GroupInfo, SearchSpace, SharingPlan
from searchmerge.search.strategies import (
    STRATEGIES,
    FeasibilitySurrogate,
    GreedySampler,
    PlanSampler,
    RandomPlanSampler,
    SurrogateSampler,
    history,
    make_sampler,
    strategy_options,
    trial_feasible,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Optuna >= 5 deprecates `constraints_func` on its own samplers; the tests still pass it.
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::optuna.exceptions.ExperimentalWarning")


def constraints_func(trial: optuna.trial.FrozenTrial) -> tuple[float]:
    return (trial.user_attrs["constraint"],)


def make_space(n: int = 10, seed: int = 0) -> SearchSpace:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1_000, 100_000, size=n)
    groups = [GroupInfo(name=f"layer{i}.conv", saved_bytes=int(b), models=("a", "b")) for i, b in enumerate(sizes)]
    return SearchSpace(groups)


class Oracle:
    """Feasible iff the plan shares no poison group and saves at most ``limit`` bytes."""

    def __init__(self, space: SearchSpace, poison: Iterable[str] = (), limit: int | None = None) -> None:
        self.space = space
        self.poison = frozenset(poison)
        self.limit = limit

    def constraint(self, plan: SharingPlan) -> float:
        if plan.shared & self.poison:
            return 1.0
        if self.limit is None:
            return -1.0
        return (self.space.saved_bytes(plan) - self.limit) / self.limit

    def objective(self, trial: optuna.Trial) -> float:
        plan = self.space.suggest(trial)
        constraint = self.constraint(plan)
        trial.set_user_attr("constraint", constraint)
        trial.set_user_attr("feasible", constraint <= 0)
        return float(self.space.saved_bytes(plan))

    def optimum(self) -> int:
        """Best feasible saved bytes, by enumeration (small spaces only)."""
        names = self.space.names
        best = 0
        for bits in range(2 ** len(names)):
            plan = SharingPlan.of(name for i, name in enumerate(names) if bits >> i & 1)
            if self.constraint(plan) <= 0:
                best = max(best, self.space.saved_bytes(plan))
        return best


def run(
    strategy: str, oracle: Oracle, n_trials: int, seed: int = 0, storage: str | None = None, **options
) -> optuna.Study:
    sampler = make_sampler(strategy, oracle.space, seed=seed, constraints_func=constraints_func, **options)
    study = optuna.create_study(direction="maximize", sampler=sampler, storage=storage)
    study.optimize(oracle.objective, n_trials=n_trials)
    return study


def best_feasible_bytes(study: optuna.Study) -> int:
    values = [t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs["feasible"]]
    return int(max(values, default=0))


def plans(study: optuna.Study, space: SearchSpace) -> list[SharingPlan]:
    return [space.plan_from_params(t.params) for t in study.trials]


# --- every strategy -----------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_runs(strategy: str, record_property: Callable) -> None:
    space = make_space(10)
    oracle = Oracle(space, poison=["layer2.conv"], limit=space.max_saved_bytes // 2)
    n_trials = 12 if strategy == "gp" else 20
    study = run(strategy, oracle, n_trials, seed=0)
    assert len(study.trials) == n_trials
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert all(t.system_attrs["constraints"] == (t.user_attrs["constraint"],) for t in study.trials)
    # One feasibility rule: the stored constraint and the feasible attribute never disagree.
    assert all(t.user_attrs["feasible"] == (t.user_attrs["constraint"] <= 0) for t in study.trials)
    best = best_feasible_bytes(study)
    record_property("best_feasible_saved_bytes", best)
    record_property("optimum_saved_bytes", oracle.optimum())
    assert best > 0, f"{strategy} found no feasible plan that saves anything in {n_trials} trials"


def test_strategy_names_and_errors() -> None:
    assert STRATEGIES == ("greedy", "surrogate", "random", "tpe", "gp", "nsga2")
    space = make_space(4)
    known = "greedy, surrogate, random, tpe, gp, nsga2"
    with pytest.raises(SearchmergeError, match=rf"unknown strategy 'anneal'; known strategies: {known}$"):
        make_sampler("anneal", space)
    with pytest.raises(SearchmergeError, match=r"takes no option 'blok_size'.*block_size"):
        make_sampler("greedy", space, blok_size=2)
    with pytest.raises(SearchmergeError, match="block_size"):
        make_sampler("greedy", space, block_size=0)
    assert "confidence" in strategy_options("surrogate")
    assert "n_startup_trials" in strategy_options("tpe")
    assert isinstance(make_sampler("greedy", space), GreedySampler)
    assert isinstance(make_sampler("surrogate", space, confidence=0.9), SurrogateSampler)
    assert isinstance(make_sampler("random", space), RandomPlanSampler)
    assert isinstance(make_sampler("tpe", space, n_startup_trials=5), optuna.samplers.TPESampler)
    # Searches run tens of trials, so Optuna's model-based samplers start guiding after 3.
    assert make_sampler("tpe", space)._n_startup_trials == 3
    assert make_sampler("tpe", space, n_startup_trials=5)._n_startup_trials == 5
    assert isinstance(make_sampler("gp", space), optuna.samplers.GPSampler)
    nsga2 = make_sampler("nsga2", space, seed=1)
    assert isinstance(nsga2, optuna.samplers.NSGAIISampler)
    assert nsga2._population_size == 16
    assert make_sampler("nsga2", space, population_size=8)._population_size == 8


@pytest.mark.parametrize("strategy", ["greedy", "surrogate", "random", "tpe"])
def test_same_seed_same_plans(strategy: str) -> None:
    space = make_space(10)
    oracle = Oracle(space, poison=["layer3.conv"], limit=space.max_saved_bytes // 2)
    first = run(strategy, oracle, 15, seed=7)
    second = run(strategy, oracle, 15, seed=7)
    assert [t.params for t in first.trials] == [t.params for t in second.trials]


def test_different_seeds_differ_for_random() -> None:
    oracle = Oracle(make_space(10))
    first, second = run("random", oracle, 5, seed=1), run("random", oracle, 5, seed=2)
    assert plans(first, oracle.space) != plans(second, oracle.space)


@pytest.mark.parametrize("strategy", ["greedy", "surrogate", "random"])
def test_constraints_are_stored_like_optunas_samplers(strategy: str) -> None:
    space = make_space(6)
    oracle = Oracle(space, poison=["layer0.conv"])

    def objective(trial: optuna.Trial) -> float:
        value = oracle.objective(trial)
        if trial.number == 2:
            raise optuna.TrialPruned()
        return value

    sampler = make_sampler(strategy, space, seed=0, constraints_func=constraints_func)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=5)
    for trial in study.trials:
        assert trial.system_attrs["constraints"] == (trial.user_attrs["constraint"],)
        assert trial.constraints == {"0": trial.user_attrs["constraint"]}
    records = history(study, space, constraints_func)
    assert [r.number for r in records] == [0, 1, 2, 3, 4]
    assert records[2].feasible is False  # pruned = infeasible
    for record, trial in zip(records, study.trials):
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert record.feasible == trial.user_attrs["feasible"]
        assert record.saved_bytes == space.saved_bytes(record.plan)


def test_feasibility_sources() -> None:
    space = make_space(3)
    study = optuna.create_study(direction="maximize", sampler=RandomPlanSampler(space=space, seed=0))

    def objective(trial: optuna.Trial) -> float:
        plan = space.suggest(trial)
        if trial.number == 0:
            trial.set_constraint("accuracy", 0.5)  # Optuna >= 5: no constraints_func needed
        elif trial.number == 1:
            trial.set_user_attr("feasible", False)
        elif trial.number == 2:
            trial.set_user_attr("constraint", -0.1)
        return space.saved_bytes(plan)

    study.optimize(objective, n_trials=4)
    trials = study.trials
    assert trial_feasible(trials[0]) is False
    assert trial_feasible(trials[1]) is False
    assert trial_feasible(trials[2], constraints_func) is True  # computed, nothing stored
    assert trial_feasible(trials[3]) is True  # no information: feasible, as Optuna counts it
    assert [r.feasible for r in history(study, space)] == [False, False, True, True]


def test_params_outside_the_space_are_sampled_independently() -> None:
    space = make_space(4)

    def objective(trial: optuna.Trial) -> float:
        plan = space.suggest(trial)
        return space.saved_bytes(plan) + trial.suggest_int("extra", 0, 3)

    values = []
    for _ in range(2):
        study = optuna.create_study(direction="maximize", sampler=GreedySampler(space=space, seed=3))
        study.optimize(objective, n_trials=4)
        values.append([t.params["extra"] for t in study.trials])
    assert values[0] == values[1]


def test_plan_sampler_is_a_small_abstract_base() -> None:
    with pytest.raises(TypeError):
        PlanSampler(space=make_space(2))  # type: ignore[abstract]
    with pytest.raises(TypeError):
        GreedySampler(make_space(2))  # type: ignore[misc]  # keyword-only
    with pytest.raises(TypeError, match="SearchSpace"):
        GreedySampler(space=["a"])  # type: ignore[arg-type]


# --- greedy ------------------------------------------------------------------------


def test_greedy_finds_the_optimum_and_skips_the_poison_group() -> None:
    space = make_space(10)
    poison = "layer4.conv"
    oracle = Oracle(space, poison=[poison])
    study = run("greedy", oracle, len(space) + 3)
    assert best_feasible_bytes(study) == oracle.optimum() == space.max_saved_bytes - space.group(poison).saved_bytes
    state = study.sampler.state(study)
    assert state.done
    assert state.skipped == [poison]
    assert state.accepted == set(space.names) - {poison}
    assert len(set(plans(study, space))) == len(study.trials)  # no plan evaluated twice


def test_greedy_order_blocks_and_halving() -> None:
    space = SearchSpace([GroupInfo(name=n, saved_bytes=b) for n, b in [("s", 1), ("l", 100), ("m", 10), ("xl", 1000)]])
    oracle = Oracle(space, poison=["m"])
    study = run("greedy", oracle, 4, block_size=2)
    assert plans(study, space)[:3] == [
        SharingPlan.of(["xl", "l"]),  # the two largest
        SharingPlan.of(["xl", "l", "m", "s"]),  # fails: halve [m, s]
        SharingPlan.of(["xl", "l", "m"]),  # fails alone: m is skipped
    ]
    # [s] on top of the accepted set comes next; the whole block already failed, so the
    # half is tried, not the remembered failure.
    assert plans(study, space)[3] == SharingPlan.of(["xl", "l", "s"])
    assert study.sampler.block_size == 2
    assert GreedySampler(space=make_space(17)).block_size == 3  # ceil(17 / 8)


def test_greedy_reuses_a_known_outcome_instead_of_a_new_trial() -> None:
    space = SearchSpace([GroupInfo(name=n, saved_bytes=b) for n, b in [("a", 8), ("b", 4), ("c", 2), ("d", 1)]])
    oracle = Oracle(space, poison=["d"])
    study = run("greedy", oracle, 3, block_size=4)
    # [a b c d] fails -> [a b] ok -> [c d] would repeat the failed plan: known, so halved at once.
    assert plans(study, space) == [
        SharingPlan.of("abcd"),
        SharingPlan.of("ab"),
        SharingPlan.of("abc"),
    ]


def test_greedy_resumes_from_sqlite_in_a_new_sampler(tmp_path) -> None:
    space = make_space(12)
    oracle = Oracle(space, poison=["layer5.conv", "layer9.conv"], limit=int(space.max_saved_bytes * 0.6))
    uninterrupted = run("greedy", oracle, 10, seed=5)

    storage = f"sqlite:///{tmp_path / 'greedy.db'}"
    first = run("greedy", oracle, 4, seed=5, storage=storage)
    resumed = optuna.load_study(
        study_name=first.study_name,
        storage=optuna.storages.RDBStorage(storage),
        sampler=make_sampler("greedy", space, seed=5, constraints_func=constraints_func),
    )
    resumed.optimize(oracle.objective, n_trials=6)
    assert plans(resumed, space) == plans(uninterrupted, space)
    assert all(tuple(t.system_attrs["constraints"]) == (t.user_attrs["constraint"],) for t in resumed.trials)


def test_greedy_adopts_a_larger_feasible_warm_start() -> None:
    space = make_space(8)
    oracle = Oracle(space, poison=["layer0.conv"])
    sampler = make_sampler("greedy", space, seed=0, constraints_func=constraints_func, block_size=1)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    warm = SharingPlan.of(["layer1.conv", "layer2.conv", "layer3.conv"])
    study.enqueue_trial(space.params_from_plan(warm))
    study.optimize(oracle.objective, n_trials=3)
    tried = plans(study, space)
    assert tried[0] == warm
    assert all(warm.shared <= plan.shared for plan in tried[1:])
    assert all(len(plan.shared - warm.shared) == 1 for plan in tried[1:])
    # An infeasible foreign plan is ignored.
    study2 = optuna.create_study(direction="maximize", sampler=GreedySampler(space=space, block_size=1))
    study2.enqueue_trial(space.params_from_plan(SharingPlan.of(space.names)))
    study2.optimize(oracle.objective, n_trials=2)
    largest = max(space.groups, key=lambda g: g.saved_bytes).name
    assert plans(study2, space)[1] == SharingPlan.of([largest])


def test_greedy_workers_do_not_duplicate_a_running_plan() -> None:
    space = make_space(8)
    oracle = Oracle(space)
    study = optuna.create_study(direction="maximize", sampler=GreedySampler(space=space, seed=0, block_size=2))
    first, second = study.ask(), study.ask()
    plan1, plan2 = space.suggest(first), space.suggest(second)
    assert plan1 != plan2 and plan1.shared < plan2.shared  # looked past the running trial
    # The second worker finishes first; the replay still follows the search.
    for trial, plan in ((second, plan2), (first, plan1)):
        trial.set_user_attr("constraint", oracle.constraint(plan))
        study.tell(trial, space.saved_bytes(plan))
    state = study.sampler.state(study)
    assert state.accepted == plan2.shared


def test_greedy_after_the_search_tries_only_plans_that_could_beat_the_best() -> None:
    space = make_space(6)
    oracle = Oracle(space, limit=int(space.max_saved_bytes * 0.6))
    study = run("greedy", oracle, 30)
    tried = plans(study, space)
    assert best_feasible_bytes(study) == oracle.optimum()
    searched = study.sampler.state(study)
    assert searched.done
    best = 0
    for number, plan in enumerate(tried):
        saved = space.saved_bytes(plan)
        if plan in tried[:number]:
            # Nothing untried can beat the best any more: it is proposed again (no retraining).
            assert saved == best and oracle.constraint(plan) <= 0
        elif number >= 8:  # past greedy's own steps: only plans that could improve the result
            assert saved > best
        if oracle.constraint(plan) <= 0:
            best = max(best, saved)
    assert len(set(tried)) < len(tried)  # 64 plans, of which only a few save more than the best


# --- surrogate ---------------------------------------------------------------------


def test_surrogate_beats_random_on_average(record_property: Callable) -> None:
    space = make_space(16, seed=1)
    names = space.names
    oracle = Oracle(space, poison=[names[3], names[11]], limit=int(space.max_saved_bytes * 0.35))
    surrogate = [best_feasible_bytes(run("surrogate", oracle, 25, seed=seed)) for seed in range(4)]
    random = [best_feasible_bytes(run("random", oracle, 25, seed=seed)) for seed in range(4)]
    record_property("surrogate_mean", statistics.mean(surrogate))
    record_property("random_mean", statistics.mean(random))
    assert statistics.mean(surrogate) > statistics.mean(random)


def test_surrogate_never_repeats_a_plan_and_starts_greedy() -> None:
    space = make_space(10)
    oracle = Oracle(space, poison=["layer2.conv"], limit=space.max_saved_bytes // 2)
    study = run("surrogate", oracle, 30, seed=0, n_startup=4)
    tried = plans(study, space)
    assert len(set(tried)) == len(tried)
    greedy = run("greedy", oracle, 4, seed=0)
    assert tried[:4] == plans(greedy, space)


def test_surrogate_with_a_forest_and_no_startup() -> None:
    space = make_space(8)
    oracle = Oracle(space, poison=["layer2.conv"])
    estimator = FeasibilitySurrogate(method="forest", n_estimators=10)
    study = run("surrogate", oracle, 8, seed=0, n_startup=0, estimator=estimator, explore=0.0)
    assert len(study.trials) == 8
    assert isinstance(study.sampler.surrogate(study), FeasibilitySurrogate)


def test_surrogate_options_are_checked() -> None:
    space = make_space(3)
    for bad in ({"confidence": 1.5}, {"explore": -0.1}, {"n_startup": -1}, {"n_candidates": 0}):
        with pytest.raises(SearchmergeError):
            make_sampler("surrogate", space, **bad)


def test_feasibility_surrogate_follows_sklearn_conventions() -> None:
    surrogate = FeasibilitySurrogate(C=3.0, random_state=0)
    expected = {"method": "logistic", "C": 3.0, "n_estimators": 100, "smoothing": 1.0, "random_state": 0}
    assert surrogate.get_params() == expected
    copy = clone(surrogate)
    assert copy is not surrogate and copy.get_params() == surrogate.get_params()
    with pytest.raises(NotFittedError):
        surrogate.predict_proba([[0, 1]])
    rng = np.random.default_rng(0)
    X = rng.integers(0, 2, size=(40, 5))
    y = X[:, 2] == 0  # group 2 breaks accuracy
    assert surrogate.fit(X, y) is surrogate
    assert surrogate.n_features_in_ == 5 and list(surrogate.classes_) == [False, True]
    proba = surrogate.predict_proba([[1, 1, 0, 1, 1], [1, 1, 1, 1, 1]])
    assert proba.shape == (2, 2) and np.allclose(proba.sum(axis=1), 1.0)
    assert proba[0, 1] > 0.5 > proba[1, 1]
    assert surrogate.score(X, y) == 1.0
    with pytest.raises(ValueError, match="features"):
        surrogate.predict_proba([[0, 1]])
    with pytest.raises(ValueError, match="method"):
        FeasibilitySurrogate(method="svm").fit(X, y)
    forest = FeasibilitySurrogate(method="forest", n_estimators=5, random_state=0).fit(X, y)
    assert np.array_equal(forest.predict_proba(X), clone(forest).fit(X, y).predict_proba(X))


@pytest.mark.parametrize(
    "check",
    [
        check_no_attributes_set_in_init,
        check_get_params_invariance,
        check_set_params,
        check_dont_overwrite_parameters,
        check_fit_check_is_fitted,
        check_estimators_unfitted,
    ],
)
def test_feasibility_surrogate_passes_sklearn_checks(check: Callable) -> None:
    check("FeasibilitySurrogate", FeasibilitySurrogate())


@pytest.mark.parametrize("feasible", [True, False])
def test_feasibility_surrogate_one_class_predicts_the_smoothed_rate(feasible: bool) -> None:
    X = np.array([[0, 1], [1, 1], [1, 0]])
    surrogate = FeasibilitySurrogate(smoothing=1.0).fit(X, [feasible] * 3)
    assert surrogate.estimator_ is None
    expected = 4 / 5 if feasible else 1 / 5
    assert np.allclose(surrogate.predict_proba([[0, 0], [1, 1]])[:, 1], expected)


def test_surrogate_prior_records_inform_the_classifier_but_are_not_tried() -> None:
    from searchmerge.search.strategies import PlanRecord, SurrogateSampler

    space = SearchSpace([GroupInfo(name=f"g{i}", saved_bytes=10 + i) for i in range(4)])
    bad, good = SharingPlan.of(["g3"]), SharingPlan.of(["g0", "g1"])
    prior = [PlanRecord(bad, False, 13), PlanRecord(SharingPlan.of(["g3", "g0"]), False, 23), PlanRecord(good, True, 21)]
    sampler = SurrogateSampler(space=space, seed=0, n_startup=0, prior=prior)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    proba = sampler.surrogate(study).predict_proba([[0, 0, 0, 1], [1, 1, 0, 0]])[:, 1]
    without = SurrogateSampler(space=space, seed=0, n_startup=0).surrogate(study).predict_proba([[0, 0, 0, 1]])[0, 1]
    assert proba[0] < proba[1] and proba[0] < without  # g3 looks risky only thanks to the prior
    assert sampler.history(study) == []  # prior outcomes are not trials of this study
    with pytest.raises(SearchmergeError, match="do not exist"):
        SurrogateSampler(space=space, prior=[PlanRecord(SharingPlan.of(["zz"]), True, 1)])


def test_greedy_with_a_deploy_objective_tries_plans_saving_fewer_bytes() -> None:
    """Issue 21: with ``deploy:`` the study maximises frames processed, which a plan saving fewer bytes may win.

    Here sharing more makes the merged models swap as larger units, so fewer frames are
    processed in time: every plan is feasible and the plan sharing nothing is the best.
    Greedy must not limit itself to plans saving more bytes than its best plan.
    """
    from searchmerge.search.merge_search import DEPLOY_OBJECTIVE_NAME

    space = SearchSpace([GroupInfo(name=n, saved_bytes=b) for n, b in [("g0", 100), ("g1", 50), ("g2", 25)]])
    frames = 1000

    def objective(trial: optuna.Trial) -> float:
        plan = space.suggest(trial)
        trial.set_user_attr("constraint", -1.0)
        trial.set_user_attr("feasible", True)
        saved = space.saved_bytes(plan)
        processed = 1.0 - saved / frames  # the search's objective: frames processed, ties by bytes saved
        return processed + saved / space.max_saved_bytes / (frames + 1)

    sampler = make_sampler("greedy", space, seed=0, constraints_func=constraints_func, block_size=1)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.set_metric_names([DEPLOY_OBJECTIVE_NAME])
    study.optimize(objective, n_trials=2 ** len(space))
    tried = plans(study, space)
    assert tried[:3] == [SharingPlan.of(["g0"]), SharingPlan.of(["g0", "g1"]), SharingPlan.of(["g0", "g1", "g2"])]
    assert len(set(tried)) == len(tried)  # every plan once: any untried plan might process more frames
    assert space.plan_from_params(study.best_trial.params) == SharingPlan.of(())
