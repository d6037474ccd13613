"""The edge-cloud loop on one machine: drift injected at the edge -> detected -> re-searched -> published -> switched.

Run by hand from the repository root:

    python benchmarks/bench_edge_cloud.py --study studies/digits-edge.yaml --work bench-edge/

It copies the study's SQLite database and checkpoint blobs into ``--work`` (so the run starts
with no service state), makes sure the parent search has a feasible plan (``--search-trials``
greedy trials otherwise), starts ``searchmerge serve`` and ``searchmerge edge`` as real
processes on loopback, switches the edge's digits streams to ``--scenario`` after
``--drift-after`` seconds, and waits until the edge serves the re-searched version. From the
edge's predictions (JSON lines with times, versions and the generator's truth), the service's
job and version records and the edge's ``/healthz`` it prints:

* seconds from the drift's first frame to detection (the job's record), to publication (the
  version's record) and to the switch (the first frame the new version ran);
* frames dropped during the switch (from publication to one frame interval after the first
  frame of the new version) at the demo's frame rate, and over the whole run;
* bytes the switch copied to the device against the bytes of the whole deployment;
* per model, the accuracy on the drifted frames before and after the switch over its
  original's validation accuracy, against the target.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import optuna

from searchmerge.config.study import open_study_file
from searchmerge.search.merge_search import default_study_name, open_search
from searchmerge.service.cloud.db import open_engine
from searchmerge.service.cloud.jobs import list_jobs
from searchmerge.service.cloud.tokens import create_edge_token
from searchmerge.service.cloud.versions import list_versions
from searchmerge.service.signing import init_keys
from searchmerge.training.prepare import prepare_study


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _json(url: str, **options: object) -> dict | None:
    try:
        return dict(httpx.get(url, timeout=5, **options).json())  # type: ignore[arg-type]
    except (httpx.TransportError, ValueError):
        return None


def _process(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "searchmerge.cli", *args], stdout=out, stderr=subprocess.STDOUT)


def _until(condition, process: subprocess.Popen[bytes], log: Path, limit: float):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process.poll() is not None:
            sys.exit(f"a process exited ({process.returncode}); see {log}")
        time.sleep(0.2)
    sys.exit(f"gave up after {limit:.0f} s; see {log}")


def _copy_study(study_path: Path, work: Path) -> tuple[Path, str]:
    """The study file and its SQLite storage copied into ``work`` (service state starts empty); the storage URL."""
    study = open_study_file(study_path)
    database = Path(study.storage.removeprefix("sqlite:///"))
    if not study.storage.startswith("sqlite:///") or not database.exists():
        sys.exit(f"{study.storage}: the benchmark copies a SQLite storage; prepare and search the study first")
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy2(database, work / database.name)
    shutil.copytree(Path(f"{database}.checkpoints"), work / f"{database.name}.checkpoints")
    shutil.copy2(study_path, work / study_path.name)
    return work / study_path.name, f"sqlite:///{work / database.name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/digits-edge.yaml")
    parser.add_argument("--work", default="bench-edge", help="folder for the copy, logs and the edge's state")
    parser.add_argument("--search-trials", type=int, default=10, help="greedy trials if the parent has no feasible plan")
    parser.add_argument("--scenario", default="night")
    parser.add_argument("--research-trials", type=int, default=3)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--sample-every", type=int, default=2)
    parser.add_argument("--drift-after", type=float, default=10.0)
    parser.add_argument("--min-samples", type=int, default=32)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--observe", type=float, default=30.0, help="seconds served by the new version")
    parser.add_argument("--limit", type=float, default=7200.0, help="give up after this many seconds")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    work = Path(args.work).resolve()
    if work.exists():
        shutil.rmtree(work)
    path, storage = _copy_study(Path(args.study), work)
    study = open_study_file(path, storage=storage)
    parent = default_study_name(study, "greedy")
    search = open_search(study, strategy="greedy")
    if search.best() is None:
        search.run(len(search.finished_trials()) + args.search_trials)
    child = f"{parent}-samples:{study.workload.name}"  # the service re-searches on the samples it labelled
    if child in optuna.get_all_study_names(storage):
        optuna.delete_study(study_name=child, storage=storage)  # a re-search of an earlier run is not reused
    baselines = {name: b.val_accuracy for name, b in prepare_study(study).baselines.items()}
    token = create_edge_token(storage, study.workload.name, "bench")
    private, public = init_keys(work / "keys")  # versions signed by the service, checked by the edge

    port, metrics = _port(), _port()
    service_log, edge_log = work / "service.log", work / "edge.log"
    service = _process(["serve", str(path), "--storage", storage, "--port", str(port), "--research-trials",
                        str(args.research_trials), "--min-samples", str(args.min_samples), "--window",
                        str(args.window), "--signing-key", str(private)], service_log)
    edge = None
    try:
        _until(lambda: _json(f"http://127.0.0.1:{port}/healthz"), service, service_log, args.limit)
        edge = _process(["edge", "--server", f"http://127.0.0.1:{port}", "--token", token, "--state-dir",
                         str(work / "edge"), "--fps", str(args.fps), "--sample-every", str(args.sample_every),
                         "--poll", "1", "--drift", args.scenario, "--drift-after", str(args.drift_after),
                         "--metrics-port", str(metrics), "--trust", str(public)], edge_log)
        health = _until(lambda: (h := _json(f"http://127.0.0.1:{metrics}/healthz")) and h["version"] == 2 and h,
                        edge, edge_log, args.limit)
        time.sleep(args.observe)  # frames of the new version on the drifted streams
    finally:
        for process in (edge, service):
            if process is not None:
                process.terminate()
                process.wait()
    report(work, study, storage, baselines, health, args)


def report(work: Path, study, storage: str, baselines: dict[str, float], health: dict, args) -> None:  # type: ignore[no-untyped-def]
    engine = open_engine(storage)
    job = list_jobs(engine, study.workload.name)[0]
    version = list_versions(engine, study.workload.name)[1]
    lines = [json.loads(line) for line in (work / "edge" / "predictions.jsonl").read_text().splitlines()]
    frames = [line for line in lines if "prediction" in line]
    drops = [line for line in lines if "dropped" in line]
    drift = min(line["t"] for line in frames if line["scenario"] == args.scenario)
    switch = min(line["t"] for line in frames if line["version"] == 2)
    detected, published = job.detected_at.timestamp(), version.created_at.timestamp()
    during = sum(d["dropped"] for d in drops if published <= d["t"] <= switch + 1 / args.fps)
    trials = optuna.load_study(study_name=job.study_name, storage=storage).trials
    print(f"study {study.path.name}: {len(study.workload.models)} models, {args.fps:g} fps per stream,"
          f" 1 in {args.sample_every} frames sampled, drift {args.scenario!r} after {args.drift_after:g} s")
    print(f"re-search {job.study_name!r}: {len(trials)} trial(s), {sum(bool(t.user_attrs.get('from_store')) for t in trials)}"
          f" answered from the checkpoint store; published trial {version.trial} as version 2")
    print(f"drift -> detected  {detected - drift:8.1f} s")
    print(f"drift -> published {published - drift:8.1f} s")
    print(f"drift -> switched  {switch - drift:8.1f} s  (publication -> switch {switch - published:.1f} s)")
    print(f"frames dropped during the switch: {during}; over the whole run: {sum(d['dropped'] for d in drops)}"
          f" of {len(frames) + sum(d['dropped'] for d in drops)}")
    print(f"bytes copied to the device by the switch: {health['last_switch_bytes']} of"
          f" {health['deployment_bytes']} ({health['last_switch_bytes'] / health['deployment_bytes']:.1%})")
    target = study.settings.target
    print(f"accuracy on the drifted frames over the original's validation accuracy (target {target}):")
    for model, baseline in baselines.items():
        ratios = []
        for number in (1, 2):
            chosen = [f for f in frames if f["model"] == model and f["scenario"] == args.scenario and f["version"] == number]
            ratios.append(sum(f["prediction"] == f["truth"] for f in chosen) / len(chosen) / baseline if chosen else 0.0)
        print(f"  {model:14s} version 1: {ratios[0]:.3f}  version 2: {ratios[1]:.3f}"
              f"  {'meets' if ratios[1] >= target else 'MISSES'} the target")
    print(f"(run at {datetime.now().isoformat(timespec='seconds')}; logs in {work})")


if __name__ == "__main__":
    main()
