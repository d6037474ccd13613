"""Which search a command reads without --study-name: the best feasible plan of the workload's searches.

Trials are recorded by hand (no retraining): each stores the originals tied by its plan, which
is all that ``export`` reads, and the plan's bytes saved as its objective value.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import optuna
import pytest

from searchmerge.cli import main
from searchmerge.config.study import StudyFile, open_study_file
from searchmerge.core.errors import SearchmergeError
from searchmerge.core.space import SharingPlan
from searchmerge.search.merge_search import MergeSearch, open_search
from searchmerge.search.selection import select_search
from searchmerge.storage.store import CheckpointKey
from searchmerge.training.merge import merge_models, merged_state
from tests.conftest import copy_prepared

GREEDY, SURROGATE = "tiny-digits-greedy", "tiny-digits-surrogate"


@pytest.fixture()
def study(prepared_tiny: Path, tmp_path: Path) -> StudyFile:
    path, storage = copy_prepared(prepared_tiny, tmp_path / "study")
    return open_study_file(path, storage=storage)


def _record(search: MergeSearch, groups: Sequence[str], *, feasible: bool = True) -> None:
    """Add a finished trial sharing ``groups`` to ``search``, as a search would record it."""
    plan = SharingPlan.of(groups)
    merged = merge_models(search.prepared.models, search.evaluator.analysis.groups, plan)
    key = CheckpointKey(search.prepared.workload_fingerprint, plan.plan_hash, search.prepared.data_fingerprint,
                        "merged", f"test-{search.study_name}")
    checkpoint = search.study_file.store.put(key, merged_state(merged), {})
    saved = search.space.saved_bytes(plan)
    constraint = -0.05 if feasible else 0.2
    search.optuna_study.add_trial(optuna.trial.create_trial(
        params=search.space.params_from_plan(plan), distributions=search.space.distributions(), value=float(saved),
        user_attrs={"feasible": feasible, "constraint": constraint, "saved_bytes": saved, "checkpoint": checkpoint},
        system_attrs={"constraints": [constraint]},
    ))


def _groups_by_saving(search: MergeSearch) -> list[str]:
    return [g.name for g in sorted(search.space.groups, key=lambda g: g.saved_bytes)]


def _export(study: StudyFile, out: Path) -> int:
    return main(["export", str(study.path), "--storage", study.storage, "--out", str(out)])


def test_export_reads_the_only_search_whatever_its_strategy(
    study: StudyFile, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    surrogate = open_search(study, strategy="surrogate")
    _record(surrogate, _groups_by_saving(surrogate)[:1])

    assert _export(study, tmp_path / "deploy") == 0
    assert f"of {SURROGATE!r}" in capsys.readouterr().out
    assert json.loads((tmp_path / "deploy" / "manifest.json").read_text())["metadata"]["study"] == SURROGATE


def test_export_reads_the_search_with_the_best_feasible_plan(
    study: StudyFile, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    greedy, surrogate = open_search(study, strategy="greedy"), open_search(study, strategy="surrogate")
    groups = _groups_by_saving(greedy)
    _record(greedy, groups[:1])
    _record(greedy, groups[-2:], feasible=False)  # saves the most, but breaks a model
    _record(surrogate, groups[:2])

    assert _export(study, tmp_path / "deploy") == 0
    captured = capsys.readouterr()
    assert f"of {SURROGATE!r}" in captured.out and f"search {SURROGATE!r} has the best feasible plan" in captured.err
    manifest = json.loads((tmp_path / "deploy" / "manifest.json").read_text())
    assert manifest["metadata"]["study"] == SURROGATE and manifest["plan"] == sorted(groups[:2])
    # A name given is read, better or not.
    assert main(["export", str(study.path), "--storage", study.storage, "--study-name", GREEDY,
                 "--out", str(tmp_path / "greedy")]) == 0
    assert json.loads((tmp_path / "greedy" / "manifest.json").read_text())["metadata"]["study"] == GREEDY


def test_searches_on_a_drift_scenarios_data_are_not_ranked_with_the_rest(study: StudyFile) -> None:
    surrogate = open_search(study, strategy="surrogate")
    night = open_search(study, strategy="surrogate", study_name=f"{SURROGATE}-night", scenario="night",
                        prepared=surrogate.prepared)
    groups = _groups_by_saving(surrogate)
    _record(surrogate, groups[:1])
    _record(night, groups[:2])  # saves more, on other data
    assert select_search(study).study_name == SURROGATE


def test_the_same_best_plan_in_two_searches_is_no_ambiguity(study: StudyFile) -> None:
    tpe, surrogate = open_search(study, strategy="tpe"), open_search(study, strategy="surrogate")
    plan = _groups_by_saving(tpe)[:2]
    _record(tpe, plan)
    _record(surrogate, plan)
    assert select_search(study).study_name == SURROGATE  # the first by name


def _same_saving_pair(search: MergeSearch) -> tuple[str, str]:
    """Two groups that save the same bytes, so that plans of one each tie on the objective."""
    by_saving: dict[int, list[str]] = {}
    for group in search.space.groups:
        by_saving.setdefault(group.saved_bytes, []).append(group.name)
    pair = next(names for names in by_saving.values() if len(names) >= 2)
    return pair[0], pair[1]


def test_an_ambiguous_choice_fails_with_one_line_listing_the_searches(
    study: StudyFile, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    greedy, surrogate = open_search(study, strategy="greedy"), open_search(study, strategy="surrogate")
    first, second = _same_saving_pair(greedy)
    _record(greedy, [first])
    _record(surrogate, [second])  # another plan, the same bytes saved

    assert _export(study, tmp_path / "deploy") == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("searchmerge: error: 2 searches could be meant and their best feasible plans differ")
    assert GREEDY in error and SURROGATE in error and error.endswith("give --study-name NAME")
    assert not (tmp_path / "deploy").exists()


def test_several_searches_without_a_feasible_plan_are_ambiguous(study: StudyFile) -> None:
    greedy, surrogate = open_search(study, strategy="greedy"), open_search(study, strategy="surrogate")
    groups = _groups_by_saving(greedy)
    _record(greedy, groups[-1:], feasible=False)
    _record(surrogate, groups[-2:], feasible=False)
    with pytest.raises(SearchmergeError, match=f"none has a feasible plan: {GREEDY} .*{SURROGATE} .*--study-name"):
        select_search(study)
