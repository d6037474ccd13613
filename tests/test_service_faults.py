"""Faults of the cloud side, with real processes on loopback: a service killed (kill -9) at each step
of publishing a version never serves half of one and publishes it once after a restart; a job
worker killed mid-trial is resumed by another; two services and two workers on one PostgreSQL
database run each job once."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import httpx
import optuna
import pytest
import sqlalchemy as sa

from searchmerge.config.study import StudyFile, open_study_file
from searchmerge.service.cloud.db import open_engine
from searchmerge.service.cloud.db import samples as samples_table
from searchmerge.service.cloud.gate import GATE_MIN_SAMPLES
from searchmerge.service.cloud.jobs import list_jobs, request_research
from searchmerge.service.cloud.labelling import Labeller
from searchmerge.service.cloud.samples import (
    HOLDOUT_EVERY,
    held_out_clause,
    store_samples,
)
from searchmerge.service.cloud.tokens import create_edge_token
from searchmerge.service.cloud.versions import list_versions, publish_files
from searchmerge.service.protocol import SampleBatch
from tests.conftest import TINY_STUDY
from tests.edge_cloud_support import (
    PARENT,
    answers,
    free_port,
    kill,
    python_process,
    searched_copy,
    searchmerge_process,
    stop,
    wait_for,
)
from tests.fake_edge_service import files_of, make_version
from tests.test_service import digits_samples

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

#: A service whose re-search is a stand-in (the parent's trials copied into the job's study, so its
#: best plan is a new version of known weights) and which, with a step named, stalls for ever right
#: after that step of publishing the job's version: the test kills it there.
PUBLISHING_SERVICE = """
import threading, time
import optuna
from searchmerge.cli.progress import log_to_stderr
from searchmerge.config.study import open_study_file
from searchmerge.search.merge_search import MergeSearch, load_search
from searchmerge.service.cloud import jobs, versions
from searchmerge.service.cloud.server import serve
from searchmerge.service.cloud.service import ServiceSettings

step = {step!r}
armed = threading.Event()  # only the job's publishing stalls, not version 1's

def research(study, *, study_name, parent_study, progress, **kwargs):
    progress("stand-in re-search: the parent's trials copied")
    try:
        optuna.copy_study(from_study_name=parent_study, from_storage=study.storage, to_storage=study.storage,
                          to_study_name=study_name)
    except optuna.exceptions.DuplicatedStudyError:
        pass  # copied by the attempt that was killed
    armed.set()
    return load_search(study, study_name=study_name)

def stall_after(name, original, calls=1):
    count = [0]
    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        count[0] += armed.is_set()
        if armed.is_set() and name == step and count[0] == calls:
            print("STALLED after", name, flush=True)
            time.sleep(3600)
        return result
    return wrapper

jobs.research = research
MergeSearch.export = stall_after("export", MergeSearch.export)
write_bytes = versions.write_bytes
versions.write_bytes = stall_after("manifest", stall_after("weights", write_bytes, calls=2))
jobs.publish = stall_after("row", jobs.publish)
log_to_stderr()
serve(open_study_file({path!r}, storage={storage!r}), ServiceSettings(heartbeat_interval=1), port={port})
"""

STEPS = ["export", "manifest", "weights", "row"]


def served_version(port: int, token: str) -> int:
    """The version the service answers with, after checking that every byte of its files is the version's."""
    headers = {"Authorization": f"Bearer {token}"}
    base = f"http://127.0.0.1:{port}/v1/edges/gate"
    info = httpx.get(f"{base}/version", headers=headers, timeout=30).json()
    for name, key in (("manifest.json", "manifest_sha256"), ("weights.safetensors", "weights_sha256")):
        answer = httpx.get(f"{base}/versions/{info['version']}/{name}", headers=headers, timeout=60)
        assert answer.status_code == 200 and hashlib.sha256(answer.content).hexdigest() == info[key], name
    return int(info["version"])


def store_held_out_samples(study: StudyFile) -> None:
    """Undrifted samples of every model, received after version 1, until the publish gate holds out at least
    GATE_MIN_SAMPLES of each: enough for it to judge each model; the deployed plan the stand-in re-search
    copies holds its target on them (tests/test_publish_gate.py)."""
    engine, labeller = open_engine(study.storage), Labeller(study)
    for model in ("a", "b", "c"):
        held, start = 0, 0
        while held < GATE_MIN_SAMPLES:  # about one in HOLDOUT_EVERY is held out
            count = HOLDOUT_EVERY * (GATE_MIN_SAMPLES - held)
            batch = SampleBatch(samples=digits_samples(labeller.footage, model, None, start + count)[start:])
            store_samples(engine, study.workload.name, "gate", batch, labeller)
            with engine.connect() as conn:
                held = int(conn.execute(sa.select(sa.func.count()).select_from(samples_table).where(
                    samples_table.c.deployment == study.workload.name, samples_table.c.model == model,
                    held_out_clause(samples_table.c.id))).scalar() or 0)
            start += count


def publishing_service(study: StudyFile, port: int, log: Path, step: str | None) -> object:
    code = PUBLISHING_SERVICE.format(step=step, path=str(study.path), storage=study.storage, port=port)
    process = python_process(code, log, cwd=study.path.parent)
    wait_for(lambda: answers(f"http://127.0.0.1:{port}/healthz"), alive=process, what="the service", log=log)
    return process


@pytest.mark.parametrize("step", STEPS)
def test_a_service_killed_at_each_step_of_publishing_never_serves_half_a_version(
    prepared_tiny: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, step: str
) -> None:
    study = searched_copy(prepared_tiny, tmp_path_factory, f"publish-{step}")
    engine = open_engine(study.storage)
    deployment = study.workload.name
    port, log = free_port(), tmp_path / "service.log"
    stalling = publishing_service(study, port, log, step)
    token = create_edge_token(study.storage, deployment, "gate")
    try:
        assert served_version(port, token) == 1
        store_held_out_samples(study)  # the publish gate judges the job's plan on them (it holds on them)
        job, _ = request_research(engine, deployment, parent_study=PARENT, scenario="night", n_trials=1)
        wait_for(lambda: "STALLED" in log.read_text(), alive=stalling, what=f"the stall after {step}", log=log)
        # Stalled right after the step: version 2 is served only once its row exists, and then whole.
        assert served_version(port, token) == (2 if step == "row" else 1)
    finally:
        kill(stalling)
    assert [v.version for v in list_versions(engine, deployment)] == ([1, 2] if step == "row" else [1])

    restarted = publishing_service(study, port, tmp_path / "restarted.log", None)
    try:
        wait_for(lambda: list_jobs(engine, deployment)[0].state == "published", alive=restarted,
                 what="the job to be resumed and published", log=tmp_path / "restarted.log")
        (resumed,) = list_jobs(engine, deployment)
        assert (resumed.id, resumed.version, resumed.attempts) == (job.id, 2, 2)
        assert [v.version for v in list_versions(engine, deployment)] == [1, 2]  # published once
        assert served_version(port, token) == 2
    finally:
        stop(restarted)


def test_a_job_worker_killed_mid_trial_is_resumed_by_another(
    prepared_tiny: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    study = searched_copy(prepared_tiny, tmp_path_factory, "worker-kill")
    engine = open_engine(study.storage)
    deployment = study.workload.name
    job, _ = request_research(engine, deployment, parent_study=PARENT, scenario="night", n_trials=1)
    publish_files(engine, study, files_of(make_version(tmp_path / "v1", seed=1)), source_study=PARENT, trial=-1,
                  checkpoint="c")  # a version 1, so the worker's version is 2
    worker = ["worker", str(study.path), "--storage", study.storage, "--jobs", "--heartbeat", "1", "--poll", "0.2"]

    def running_trials() -> int:
        try:
            trials = optuna.load_study(study_name=job.study_name, storage=study.storage).get_trials(deepcopy=False)
        except KeyError:  # the re-search has not made its study yet
            return 0
        return sum(t.state == optuna.trial.TrialState.RUNNING for t in trials)

    first = searchmerge_process(worker, tmp_path / "first.log", cwd=tmp_path)
    try:
        wait_for(running_trials, alive=first, what="a trial to be running", log=tmp_path / "first.log")
    finally:
        kill(first)
    second = searchmerge_process(worker, tmp_path / "second.log", cwd=tmp_path)
    try:
        ended = wait_for(lambda: (j := list_jobs(engine, deployment)[0]).state not in ("queued", "running") and j,
                         alive=second, what="the job to end", log=tmp_path / "second.log")
    finally:
        stop(second)
    # No edge sent samples: the publish gate can judge no model, so the plan is held back (or none was found).
    why = {"held-back": "no model had enough held-out samples to be judged", "no-feasible-plan": "found no feasible plan"}
    assert ended.state in why and why[ended.state] in ended.message, ended.message  # type: ignore[attr-defined]
    assert ended.attempts == 2  # type: ignore[attr-defined]
    assert "resuming the re-search" in (tmp_path / "second.log").read_text()
    states = [t.state for t in optuna.load_study(study_name=job.study_name, storage=study.storage).get_trials()]
    assert optuna.trial.TrialState.FAIL in states  # the killed worker's trial, failed by its heartbeat
    assert len(list_versions(engine, deployment)) == 1


#: A service (``serve``) or a job worker (``worker``) on PostgreSQL whose re-search is a stand-in:
#: it writes which process ran which job to a file, takes a moment, and publishes stand-in files.
SHARED_DATABASE_PROCESS = """
import os, sys, time
from pathlib import Path
from types import SimpleNamespace
from searchmerge.cli.progress import log_to_stderr
from searchmerge.config.study import open_study_file
from searchmerge.service.cloud import jobs
from searchmerge.service.cloud.gate import GateVerdict
from searchmerge.service.cloud.monitor import ModelCheck
from searchmerge.service.cloud.server import serve
from searchmerge.service.cloud.service import ServiceSettings
from searchmerge.service.cloud.versions import publish_files
from searchmerge.service.cloud.worker import run_worker
from tests.fake_edge_service import files_of, make_version

role = {role!r}
study = open_study_file({path!r}, storage={storage!r}, blob_dir={blobs!r})

def research(study, *, study_name, progress, **kwargs):
    with open({record!r}, "a") as record:
        record.write(f"{{study_name}} {{role}}:{{os.getpid()}}\\n")
    for _ in range(10):
        time.sleep(0.1)
        progress(f"{{study_name}}: working")
    plan = SimpleNamespace(number=0, worst_ratio=1.0, saved_bytes=1, checkpoint="c")
    return SimpleNamespace(study_name=study_name, best=lambda: plan, ranked=lambda: [plan])

def publish(engine, study, search, best, *, scenario=None, signer=None):
    folder = Path({blobs!r}) / f"made-{{os.getpid()}}-{{search.study_name}}"
    files = files_of(make_version(folder, seed=abs(hash(search.study_name)) % 1000))
    return publish_files(engine, study, files, source_study=search.study_name, trial=best.number,
                         checkpoint=best.checkpoint, scenario=scenario)

def check_held_out(engine, search, best, *, since, min_samples):
    # The stand-in plan has no models to run: its one model is judged on stand-in held-out samples, all right,
    # so the job's real gate logic (at least one model judged, none missing) passes it.
    model = ModelCheck(name="a", samples=min_samples, correct=min_samples, baseline=1.0, target=0.95, upper=1.0,
                       scenario=None, judged=True)
    return GateVerdict(best.number, search.study_name, (model,), min_samples)

jobs.research, jobs.publish, jobs.check_held_out = research, publish, check_held_out
log_to_stderr()
if role == "worker":
    run_worker(study, heartbeat_interval=1, poll=0.2)
else:
    serve(study, ServiceSettings(heartbeat_interval=1, run_jobs=role == "serve"), port={port})
"""


@pytest.fixture()
def postgres_study(tmp_path: Path) -> StudyFile:
    """The tiny study as a deployment of its own in the shared PostgreSQL database, with a version 1."""
    try:
        sa.create_engine(POSTGRES).connect().close()
    except sa.exc.OperationalError as exc:
        pytest.fail(f"these tests need PostgreSQL at 127.0.0.1:5432 (database 'test'): {exc}")
    name = f"faults-{uuid.uuid4().hex[:10]}"
    (tmp_path / "tiny.yaml").write_text(TINY_STUDY.replace("name: tiny-digits", f"name: {name}"))
    study = open_study_file(tmp_path / "tiny.yaml", storage=POSTGRES, blob_dir=str(tmp_path / "blobs"))
    publish_files(open_engine(POSTGRES), study, files_of(make_version(tmp_path / "v1", seed=1)),
                  source_study="parent", trial=0, checkpoint="c")
    return study


def test_two_services_and_two_workers_on_one_postgresql_database_run_each_job_once(
    postgres_study: StudyFile, tmp_path: Path
) -> None:
    study, record = postgres_study, tmp_path / "ran.txt"
    engine = open_engine(study.storage)
    deployment = study.workload.name
    scenarios = ["night", "rain", "moved", "dusk", "fog", "snow"]
    for scenario in scenarios:
        request_research(engine, deployment, parent_study="parent", scenario=scenario, n_trials=1)
    processes = []
    try:
        for index, role in enumerate(["serve", "serve", "worker", "worker", "serve-no-jobs"]):
            port = free_port()
            code = SHARED_DATABASE_PROCESS.format(role=role, path=str(study.path), storage=study.storage,
                                                  blobs=str(tmp_path / "blobs"), record=str(record), port=port)
            processes.append(python_process(code, tmp_path / f"{index}-{role}.log", cwd=Path(__file__).parents[1]))
        wait_for(lambda: all(j.state == "published" for j in list_jobs(engine, deployment)),
                 what="every job to be published")
    finally:
        for process in processes:
            kill(process)
    runs = [line.split() for line in record.read_text().splitlines()]
    assert sorted(name for name, _ in runs) == sorted(f"parent-{s}" for s in scenarios)  # each job ran once
    assert not any(by.startswith("serve-no-jobs") for _, by in runs)  # serve --no-jobs ran none
    published = list_jobs(engine, deployment)
    assert all(j.attempts == 1 for j in published)
    assert sorted(j.version for j in published) == list(range(2, 2 + len(scenarios)))  # one version each
