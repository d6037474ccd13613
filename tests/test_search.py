"""The search as an Optuna study: resume after SIGKILL, PostgreSQL workers, the dashboard, the API."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pytest

from searchmerge.config.study import open_study_file
from searchmerge.core.errors import SearchmergeError
from searchmerge.core.space import SharingPlan
from searchmerge.search.merge_search import open_search
from searchmerge.training.prepare import prepare_study
from tests.conftest import TINY_STUDY, copy_prepared

EVALUATOR_LINE = "evaluator: {fraction: 0.5, max_epochs: 2, lr: 0.003, init: first}"

REPO = Path(__file__).resolve().parents[1]
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture()
def tiny(prepared_tiny: Path, tmp_path: Path) -> tuple[Path, str]:
    """A tiny study file whose originals are already prepared in a SQLite file (a copy of its own)."""
    return copy_prepared(prepared_tiny, tmp_path)


def cli(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "searchmerge.cli", *arguments]


def finished(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=storage)
    return study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))


def assert_no_plan_retrained_twice(trials: list[optuna.trial.FrozenTrial]) -> None:
    retrained = Counter(t.user_attrs["plan_hash"] for t in trials if not t.user_attrs["from_store"])
    assert all(count == 1 for count in retrained.values()), retrained


def test_python_api_best_history_pareto_and_export(tiny: tuple[Path, str], tmp_path: Path) -> None:
    path, storage = tiny
    search = open_search(open_study_file(path, storage=storage), strategy="greedy")
    search.optuna_study.enqueue_trial(search.space.params_from_plan(SharingPlan.of(())))  # surely feasible
    search.run(4)
    history = search.history()
    assert len(history) == 4
    trial = search.optuna_study.trials[0]
    assert {"feasible", "constraint", "unique_bytes", "saved_mb", "cost_seconds", "checkpoint"} <= set(trial.user_attrs)
    assert any(key.startswith("ratio:") for key in trial.user_attrs)
    assert trial.system_attrs.get("constraints") is not None
    assert search.pareto_front()
    best = search.best()
    assert best is not None and best.feasible
    exported = search.export_best(tmp_path / "deploy")
    assert json.loads((exported / "manifest.json").read_text())["plan"] == sorted(best.plan.shared)
    # Running again with the same total does nothing more.
    search.run(4)
    assert len(search.history()) == 4


def test_a_study_name_of_another_workload_is_refused(tiny: tuple[Path, str], tmp_path: Path) -> None:
    path, storage = tiny
    open_search(open_study_file(path, storage=storage), strategy="random", study_name="shared-name")
    other = tmp_path / "other.yaml"
    other.write_text(TINY_STUDY.replace("target: 0.9", "target: 0.8"))
    with pytest.raises(SearchmergeError, match="refusing to mix trials"):
        open_search(open_study_file(other, storage=storage), strategy="random", study_name="shared-name")


def test_bad_search_input(tiny: tuple[Path, str]) -> None:
    path, storage = tiny
    with pytest.raises(SearchmergeError, match="unknown strategy"):
        open_search(open_study_file(path, storage=storage), strategy="annealing")
    search = open_search(open_study_file(path, storage=storage), strategy="random")
    with pytest.raises(SearchmergeError, match="at least 1"):
        search.run(0)
    completed = subprocess.run(
        cli("search", str(path), "--storage", "postgresql+psycopg://nobody@127.0.0.1:1/none", "--blob-dir", "x"),
        capture_output=True, text=True, cwd=REPO,
    )
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    assert "searchmerge: error:" in completed.stderr


def _kill_mid_trial(command: list[str], storage: str, name: str) -> int | None:
    """Start ``command`` and SIGKILL it while a trial's plan is chosen and being evaluated.

    Returns the number of the trial killed mid-evaluation, or ``None`` when the trial
    finished between the look and the kill (tiny trials take a second), or the search
    finished first.
    """
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = None
    while process.poll() is None:  # pytest-timeout guards against a hang; load only makes this slower
        try:
            study = optuna.load_study(study_name=name, storage=storage)
            done = len([t for t in study.trials if t.state.is_finished()])
            running = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
        except KeyError:
            done, running = 0, []
        # Mid-evaluation: the plan is fully chosen (every group's parameter is written).
        if done >= 1 and running and len(running[0].params) == len(study.trials[0].params):
            os.kill(process.pid, signal.SIGKILL)
            seen = running[0].number
            break
        time.sleep(0.2)
    process.wait()
    if seen is None:
        return None
    state = optuna.load_study(study_name=name, storage=storage).trials[seen].state
    return seen if state == optuna.trial.TrialState.RUNNING else None


def test_sigkill_mid_trial_then_resume_completes_exactly_n(tiny: tuple[Path, str]) -> None:
    path, storage = tiny
    # Trials of a few seconds (no early exit, a longer budget), so that a kill lands mid-trial.
    slow = path.parent / "tiny-slow.yaml"
    slow.write_text(path.read_text().replace(EVALUATOR_LINE, "evaluator: {fraction: 0.5, max_epochs: 12, lr: 0.003,"
                                             " init: first, early_exit: false}"))
    path = slow
    name = "killed"
    command = cli("search", str(path), "--storage", storage, "--strategy", "random", "--n-trials", "6",
                  "--study-name", name, "--heartbeat", "1")
    killed = None
    for _ in range(3):  # a kill can land just after a trial finished: then try on a later trial
        killed = _kill_mid_trial(command, storage, name)
        if killed is not None:
            break
    assert killed is not None, "the search could not be killed mid-trial"
    time.sleep(2.5)  # let the killed trial's heartbeat go stale

    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    study = optuna.load_study(study_name=name, storage=storage)
    states = Counter(t.state for t in study.trials)
    trials = finished(storage, name)
    assert len(trials) == 6
    assert states[optuna.trial.TrialState.FAIL] >= 1
    assert states[optuna.trial.TrialState.RUNNING] == 0
    failed = study.trials[killed]
    assert failed.state == optuna.trial.TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == failed.number]
    assert retried and retried[0].params == failed.params  # the killed plan was retried
    assert_no_plan_retrained_twice(trials)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_trial_abandoned_before_its_first_heartbeat_is_failed_and_retried(
    tiny: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed while its sampler proposes leaves a RUNNING trial with no heartbeat.

    How long such a trial waits is a parameter (``abandoned_after_s``), and the worker a
    trial records is the process that ran its search, asked when the search opens.
    """
    import searchmerge.search.merge_search as search_module

    path, storage = tiny
    monkeypatch.setattr(search_module.socket, "gethostname", lambda: "worker-7")
    search = open_search(open_study_file(path, storage=storage), strategy="random", study_name="abandoned",
                         heartbeat_interval=1, abandoned_after_s=0.0)
    search.optuna_study.enqueue_trial({name: True for name in search.space.names[:1]})
    abandoned = search.optuna_study.ask()  # RUNNING, no heartbeat, no params written: its process "died"
    time.sleep(2.1)
    search.run(1)  # would wait for the abandoned trial for ever if it were left RUNNING
    trials = search.optuna_study.trials
    assert trials[abandoned.number].state == optuna.trial.TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == abandoned.number]
    assert retried and retried[0].state == optuna.trial.TrialState.COMPLETE
    assert retried[0].params[search.space.names[0]] is True  # the enqueued plan survived the retry
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    assert retried[0].user_attrs["worker"] == f"worker-7:{os.getpid()}"


def _postgres_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not _postgres_available(), reason="no PostgreSQL server on 127.0.0.1:5432")
def test_workers_starting_together_on_a_fresh_postgres_database_all_open_it() -> None:
    """PostgreSQL's CREATE TABLE IF NOT EXISTS races; the losers must retry, not fail."""
    import sqlalchemy as sa

    database = f"fresh_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(POSTGRES.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f"CREATE DATABASE {database}"))
    url = POSTGRES.rsplit("/", 1)[0] + f"/{database}"
    code = f"from searchmerge.search.merge_search import _open_storage; _open_storage({url!r}, 60, 120)"
    try:
        openers = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stderr=subprocess.PIPE, text=True)
                   for _ in range(4)]
        errors = [opener.communicate()[1] for opener in openers]
        assert all(opener.returncode == 0 for opener in openers), [e[-500:] for e in errors if e]
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        admin.dispose()


@pytest.mark.skipif(not _postgres_available(), reason="no PostgreSQL server on 127.0.0.1:5432")
def test_two_workers_share_one_postgres_study(tmp_path: Path) -> None:
    # A workload name of its own: the PostgreSQL database outlives this test's blob folder.
    (tmp_path / "tiny.yaml").write_text(TINY_STUDY.replace("name: tiny-digits", f"name: tiny-{uuid.uuid4().hex[:8]}"))
    blobs = tmp_path / "blobs"
    prepare_study(open_study_file(tmp_path / "tiny.yaml", storage=POSTGRES, blob_dir=blobs))
    name = f"workers-{uuid.uuid4().hex[:8]}"
    command = cli("worker", str(tmp_path / "tiny.yaml"), "--storage", POSTGRES, "--blob-dir", str(blobs),
                  "--strategy", "random", "--n-trials", "6", "--study-name", name)
    try:
        workers = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for _ in range(2)]
        outputs = [w.communicate() for w in workers]
        assert all(w.returncode == 0 for w in workers), [o[1][-2000:] for o in outputs]
        study = optuna.load_study(study_name=name, storage=POSTGRES)
        trials = finished(POSTGRES, name)
        assert len(trials) == 6
        assert len({t.number for t in trials}) == 6
        assert all(t.state != optuna.trial.TrialState.RUNNING for t in study.trials)
        # Every trial names the worker process that ran it: one of these two.
        ran = {t.user_attrs["worker"] for t in trials}
        assert ran and ran <= {f"{socket.gethostname()}:{w.pid}" for w in workers}
        assert_no_plan_retrained_twice(trials)
    finally:
        try:
            optuna.delete_study(study_name=name, storage=POSTGRES)
        except KeyError:
            pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_dashboard_shows_user_attributes_and_constraints(tiny: tuple[Path, str]) -> None:
    path, storage = tiny
    search = open_search(open_study_file(path, storage=storage), strategy="greedy", study_name="shown")
    search.run(2)
    port = _free_port()
    server = subprocess.Popen(cli("dashboard", "--storage", storage, "--port", str(port)), cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        studies = None
        while studies is None and server.poll() is None:  # however long a loaded machine takes to start it
            try:
                with urllib.request.urlopen(f"{base}/api/studies", timeout=10) as response:
                    studies = json.load(response)["study_summaries"]
            except OSError:
                time.sleep(0.3)
        assert studies is not None, "the dashboard did not start"
        study_id = next(s["study_id"] for s in studies if s["study_name"] == "shown")
        with urllib.request.urlopen(f"{base}/api/studies/{study_id}", timeout=10) as response:
            detail = json.load(response)
        trials = detail["trials"]
        assert len(trials) == 2
        for trial in trials:
            attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
            assert {"feasible", "saved_mb", "worst_ratio", "checkpoint"} <= set(attrs)
            assert len(trial["constraints"]) == 1
            # Its artifacts: the per-model table, and a feasible plan's deployment manifest.
            names = {a["filename"]: a["artifact_id"] for a in trial["artifacts"]}
            assert ("manifest.json" in names) == (str(attrs["feasible"]) == "True")
            url = f"{base}/artifacts/{study_id}/{trial['trial_id']}/{names['models.csv']}"
            with urllib.request.urlopen(url, timeout=10) as response:
                table = response.read().decode()
            assert table.startswith("model,accuracy,baseline,ratio") and table.count("\n") == 4  # header + 3 models
        assert optuna.load_study(study_name="shown", storage=storage).metric_names == ["bytes saved (B)"]
        study_attrs = {a["key"]: a["value"] for a in detail["user_attrs"]}
        assert "worst accuracy ratio" in study_attrs["searchmerge:intermediate_values"]
    finally:
        server.kill()
        server.wait()


def test_report_prints_best_plan_and_writes_plots(tiny: tuple[Path, str], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from searchmerge.cli.commands import main

    path, storage = tiny
    open_search(open_study_file(path, storage=storage), strategy="random").run(2)
    out = tmp_path / "report"
    assert main(["report", str(path), "--storage", storage, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tiny-digits-random" in printed and "best feasible plan" in printed
    assert (out / "savings_vs_trials.png").stat().st_size > 0
    assert (out / "accuracy_vs_memory.png").stat().st_size > 0
    assert main(["report", str(path), "--storage", storage, "--study-name", "nope"]) == 2
    assert "no study named 'nope'" in capsys.readouterr().err


def test_default_pruner_leaves_early_exit_to_the_evaluator(tiny: tuple[Path, str]) -> None:
    path, storage = tiny
    search = open_search(open_study_file(path, storage=storage), strategy="random", study_name="no-pruner")
    search.run(6)
    # Check 0 is before any retraining; a median pruner would stop most plans there.
    stopped = [t for t in search.optuna_study.trials if t.user_attrs.get("stop_reason") == "pruned"]
    assert stopped == []
    assert isinstance(search.optuna_study.pruner, optuna.pruners.NopPruner)


def test_a_failed_confirmation_is_infeasible_for_every_reader(tiny: tuple[Path, str]) -> None:
    """Validation passes, the test split does not: the constraint, the samplers and best() all say infeasible."""
    import dataclasses

    import torch

    from searchmerge.data.sources.digits import Split
    from searchmerge.search.merge_search import MergeSearch, constraint_of
    from searchmerge.search.strategies import history, trial_feasible

    path, storage = tiny
    # Every pass is confirmed on the test split (margin 1); the test labels are scrambled, so it fails there.
    path.write_text(path.read_text().replace("init: first}", "init: first, confirm_margin: 1.0}"))
    study = open_study_file(path, storage=storage)
    prepared = prepare_study(study)
    generator = torch.Generator().manual_seed(0)
    scrambled = {
        name: dataclasses.replace(
            data, test=Split(data.test.x, (data.test.y + 1 + torch.randint(0, data.num_classes - 1, data.test.y.shape,
                                                                            generator=generator)) % data.num_classes)
        )
        for name, data in prepared.data.items()
    }
    search = MergeSearch(study, dataclasses.replace(prepared, data=scrambled), strategy="greedy")
    search.optuna_study.enqueue_trial(search.space.params_from_plan(SharingPlan.of(())))
    search.run(1)

    trial = search.optuna_study.trials[0]
    assert trial.user_attrs["worst_ratio"] >= 0.9  # validation passes at every check, to the end of the budget
    assert trial.user_attrs["stop_reason"] == "budget"
    assert trial.user_attrs["constraint"] > 0 and trial.user_attrs["feasible"] is False
    assert all(value > 0 for value in trial.system_attrs["constraints"])  # what Optuna's samplers read
    assert not trial_feasible(trial, constraint_of)
    assert [record.feasible for record in history(search.optuna_study, search.space, constraint_of)] == [False]
    assert search.best() is None and search.history()[0].feasible is False
    with pytest.raises(SearchmergeError, match="no feasible plan"):
        search.export_best(path.parent / "deploy")


def test_checkpoints_never_dangle_after_other_seeds_and_evaluate(tiny: tuple[Path, str], tmp_path: Path) -> None:
    """The same plans evaluated again (another seed, the evaluate command) leave the first study's ids intact."""
    from searchmerge.training.evaluate import evaluate_plan

    path, storage = tiny
    study = open_study_file(path, storage=storage)
    first = open_search(study, strategy="greedy", study_name="first", seed=0)
    first.optuna_study.enqueue_trial(first.space.params_from_plan(SharingPlan.of(())))  # feasible for sure
    first.run(3)
    named = {t.number: t.checkpoint for t in first.history()}

    second = open_search(study, strategy="greedy", study_name="second", seed=1)
    second.optuna_study.enqueue_trial(second.space.params_from_plan(SharingPlan.of(())))
    second.run(3)
    for plan in {t.plan for t in first.history()}:
        evaluate_plan(study, plan, seed=7)
    again, checkpoint = evaluate_plan(study, first.history()[1].plan, seed=0)

    assert checkpoint == named[1]  # the same evaluation is the same record
    assert {t.checkpoint for t in second.history()}.isdisjoint(named.values())  # another seed: records of its own
    for checkpoint_id in named.values():
        study.store.verify(checkpoint_id)
    exported = open_search(study, study_name="first").export_best(tmp_path / "deploy")
    assert json.loads((exported / "manifest.json").read_text())["metadata"]["trial"] == first.best().number


def test_export_command(tiny: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from searchmerge.cli.commands import main

    path, storage = tiny
    search = open_search(open_study_file(path, storage=storage), strategy="greedy", study_name="to-export")
    search.optuna_study.enqueue_trial(search.space.params_from_plan(SharingPlan.of(())))
    search.run(2)
    common = ["export", str(path), "--storage", storage, "--study-name", "to-export"]
    assert main([*common, "--out", str(tmp_path / "best")]) == 0
    manifest = json.loads((tmp_path / "best" / "manifest.json").read_text())
    assert manifest["metadata"]["trial"] == search.best().number and manifest["metadata"]["feasible"] is True
    assert main([*common, "--trial", "1", "--out", str(tmp_path / "one")]) == 0
    assert json.loads((tmp_path / "one" / "manifest.json").read_text())["metadata"]["trial"] == 1
    assert main([*common, "--trial", "7", "--out", str(tmp_path / "none")]) == 2
    assert "no finished trial 7" in capsys.readouterr().err

    open_search(open_study_file(path, storage=storage), strategy="random", study_name="empty")
    assert main(["export", str(path), "--storage", storage, "--study-name", "empty", "--out", str(tmp_path / "x")]) == 2
    assert "has no feasible plan yet" in capsys.readouterr().err and not (tmp_path / "x").exists()


class _PruneTrialZero(optuna.pruners.BasePruner):
    """Stops trial 0 at its first failing check and never any other trial."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number == 0


def test_a_plan_pruned_then_evaluated_in_full_points_to_the_full_runs_weights(tiny: tuple[Path, str]) -> None:
    """Issue 21: the pruned weights of a plan must not answer for its later full evaluation."""
    import torch

    path, storage = tiny
    study = open_study_file(path, storage=storage)
    search = open_search(study, strategy="random", study_name="pruned-then-full", pruner=_PruneTrialZero())
    everything = search.space.params_from_plan(SharingPlan.of(search.space.names))  # fails early: prunable
    search.optuna_study.enqueue_trial(everything)
    search.optuna_study.enqueue_trial(everything)
    search.run(2)
    pruned, full = search.optuna_study.trials[:2]
    assert pruned.state == optuna.trial.TrialState.PRUNED and pruned.user_attrs["stop_reason"] == "pruned"
    assert full.state == optuna.trial.TrialState.COMPLETE and full.user_attrs["stop_reason"] != "pruned"
    assert full.user_attrs["from_store"] is False  # a pruned record is never a cached result

    # Each trial's record holds its own evaluation: the full run's metrics with the full run's weights.
    assert full.user_attrs["checkpoint"] != pruned.user_attrs["checkpoint"]
    for trial in (pruned, full):
        stored = study.store.record(trial.user_attrs["checkpoint"]).metadata["evaluation"]
        assert stored["stop_reason"] == trial.user_attrs["stop_reason"]
        assert stored["cost"]["steps"] == trial.user_attrs["cost_steps"]
    assert full.user_attrs["cost_steps"] > pruned.user_attrs["cost_steps"]
    pruned_weights = study.store.load(pruned.user_attrs["checkpoint"])
    full_weights = study.store.load(full.user_attrs["checkpoint"])
    assert any(not torch.equal(pruned_weights[name], full_weights[name]) for name in full_weights)
