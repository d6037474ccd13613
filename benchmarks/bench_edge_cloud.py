"""The edge-cloud loop on one machine: drift injected at the edge -> detected -> re-searched -> published -> switched.

Run by hand from the repository root:

    python benchmarks/bench_edge_cloud.py --study studies/digits-edge.yaml --work bench-edge/

It copies the study's SQLite database and checkpoint blobs into ``--work`` (so the run starts
with no service state; the study file stays where it is), makes sure the parent search has a feasible plan (``--search-trials``
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
  original's validation accuracy, against the target;
* per version the edge served and per model, the ratio the search judged the version's plan by
  (its trial's accuracy on its validation data over the original's validation accuracy) beside
  the ratio on the edge: the edge's own predictions (``predictions.jsonl``) scored against the
  labels the service gives those frames (its ``Labeller``; for digits, the generator's label by
  provenance), over the same baseline, split into undrifted and drifted frames, with sample
  counts and 95% Wilson intervals (:func:`score_versions`). ``--json`` prints it all as one
  JSON document.

The service and the edge run at their own defaults (``searchmerge serve`` and ``searchmerge
edge`` as the README runs them: 10 re-search trials, a window of 64, 32 samples to judge, 512
samples to re-search on, 10 fps, every 10th frame sampled, a poll every 5 s) unless an option
below is given; the drift comes after 60 s, as in the README.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import optuna

from searchmerge.config.data_request import model_request
from searchmerge.config.study import open_study_file
from searchmerge.core.uncertainty import wilson
from searchmerge.search.merge_search import default_study_name, open_search
from searchmerge.search.research import research
from searchmerge.search.scenarios import SAMPLES_PREFIX
from searchmerge.service.cloud.db import open_engine
from searchmerge.service.cloud.db import samples as samples_table
from searchmerge.service.cloud.jobs import list_jobs
from searchmerge.service.cloud.labelling import ImageTeacher, Labeller
from searchmerge.service.cloud.samples import HOLDOUT_EVERY, held_out_clause
from searchmerge.service.cloud.tokens import create_edge_token
from searchmerge.service.cloud.versions import list_versions
from searchmerge.service.edge.agent import EdgeSettings, camera_drifts
from searchmerge.service.edge.streams import CameraStream
from searchmerge.service.protocol import DigitsSource, Frame, Sample
from searchmerge.service.signing import init_keys
from searchmerge.training.prepare import prepare_study

from bench_drift import baselines_seconds, compare, measure, trials_outcome  # the sibling benchmark's measures (run as a script)


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _json(url: str, **options: object) -> dict | None:
    try:
        return dict(httpx.get(url, timeout=5, **options).json())  # type: ignore[arg-type]
    except (httpx.TransportError, ValueError):
        return None


def _process(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "searchmerge.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                                env=env)


def _until(condition, process: subprocess.Popen[bytes], log: Path, limit: float, *, give_up: bool = True):  # type: ignore[no-untyped-def]
    """``condition()``'s first true value; past ``limit`` seconds an exit, or (``give_up=False``) ``None``."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process.poll() is not None:
            sys.exit(f"a process exited ({process.returncode}); see {log}")
        time.sleep(0.2)
    if give_up:
        sys.exit(f"gave up after {limit:.0f} s; see {log}")
    print(f"no new version after {limit:.0f} s; reporting what was served", file=sys.stderr)
    return None


def _copy_study(study_path: Path, work: Path) -> tuple[Path, str]:
    """The study file and the storage URL of a copy of its SQLite storage in ``work`` (so the service state
    starts empty). The study file is used where it is, so that its footage and teacher are found."""
    study = open_study_file(study_path)
    database = Path(study.storage.removeprefix("sqlite:///"))
    if not study.storage.startswith("sqlite:///") or not database.exists():
        sys.exit(f"{study.storage}: the benchmark copies a SQLite storage; prepare and search the study first")
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy2(database, work / database.name)
    shutil.copytree(Path(f"{database}.checkpoints"), work / f"{database.name}.checkpoints")
    return study_path, f"sqlite:///{work / database.name}"


def _edge_default(name: str) -> object:
    """The edge agent's default for one of its settings (what ``searchmerge edge`` runs with)."""
    return next(f.default for f in dataclasses.fields(EdgeSettings) if f.name == name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/digits-edge.yaml")
    parser.add_argument("--work", default="bench-edge", help="folder for the copy, logs and the edge's state")
    parser.add_argument("--search-trials", type=int, default=10, help="greedy trials if the parent has no feasible plan")
    parser.add_argument("--scenario", default="night")
    parser.add_argument("--drift-after", type=float, default=60.0, help="seconds (the README's 60)")
    service = parser.add_argument_group("the service's settings (default: those of searchmerge serve)")
    service.add_argument("--research-trials", type=int)
    service.add_argument("--min-samples", type=int)
    service.add_argument("--window", type=int)
    service.add_argument("--research-samples", type=int)
    edge = parser.add_argument_group("the edge's settings (default: those of searchmerge edge)")
    edge.add_argument("--fps", type=float, default=_edge_default("fps"))
    edge.add_argument("--sample-every", type=int, default=_edge_default("sample_every"))
    edge.add_argument("--poll", type=float, default=_edge_default("poll_seconds"))
    parser.add_argument("--observe", type=float, default=60.0, help="seconds served by the new version")
    parser.add_argument("--limit", type=float, default=7200.0,
                        help="stop waiting for a new version after this many seconds, and report what was served")
    parser.add_argument("--from-frame", type=int, default=None,
                        help="a video study's edges stream its footage from this frame on (default: the first frame"
                        " after the study's training share, which no model trained on)")
    parser.add_argument("--compare-trials", type=int, default=0,
                        help="afterwards, on the samples the service holds: a re-search from the deployed version and"
                        " a search from scratch of this many trials each (0: skip)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON document")
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
    video = all(model_request(spec).format == "video" for spec in study.workload.models)
    folder = camera_frames(study, work / "frames", args.from_frame) if video else None
    token = create_edge_token(storage, study.workload.name, "bench")
    private, public = init_keys(work / "keys")  # versions signed by the service, checked by the edge

    port, metrics = _port(), _port()
    service_log, edge_log = work / "service.log", work / "edge.log"
    options = [f"--{name.replace('_', '-')}={value}" for name in ("research_trials", "min_samples", "window", "research_samples")
               if (value := getattr(args, name)) is not None]
    service = _process(["serve", str(path), "--storage", storage, "--port", str(port), *options,
                        "--signing-key", str(private)], service_log)
    edge = None
    engine = open_engine(storage)

    snapshots: list[Path] = []  # the database as the first re-search job started (for --compare-trials)

    def settled() -> dict | None:
        """The edge's health once it serves a re-searched version, or once every job ended without one."""
        health = _json(f"http://127.0.0.1:{metrics}/healthz")
        if health and health["version"] >= 2:
            return health
        jobs = list_jobs(engine, study.workload.name)
        if args.compare_trials and not snapshots and any(job.started_at for job in jobs):
            snapshots.append(_snapshot(storage, work / "at-job-start"))  # the samples the job had, before pruning
        if health and jobs and all(job.state in ("held-back", "no-feasible-plan", "failed") for job in jobs):
            return health
        return None

    try:
        _until(lambda: _json(f"http://127.0.0.1:{port}/healthz"), service, service_log, args.limit)
        environment = {**os.environ, "SEARCHMERGE_EDGE_TOKEN": token}  # as the README passes it
        streams = ["--streams", *(f"{name}={folder}" for name in study.workload.names)] if folder else []
        edge = _process(["edge", "--server", f"http://127.0.0.1:{port}", "--state-dir", str(work / "edge"), *streams,
                         "--fps", str(args.fps), "--sample-every", str(args.sample_every),
                         "--poll", str(args.poll), "--drift", args.scenario, "--drift-after", str(args.drift_after),
                         "--metrics-port", str(metrics), "--trust", str(public)], edge_log, env=environment)
        health = _until(settled, edge, edge_log, args.limit, give_up=False)
        time.sleep(args.observe)  # frames of the new version on the drifted streams
        health = _json(f"http://127.0.0.1:{metrics}/healthz") or health
    finally:
        for process in (edge, service):
            if process is not None:
                process.terminate()
                process.wait()
    result = report(work, study, storage, baselines, health or {}, args, folder)
    if args.compare_trials:
        started = [job.started_at for job in list_jobs(engine, study.workload.name) if job.started_at]
        if not snapshots:
            sys.exit("--compare-trials: no re-search job started, so there are no samples to compare on")
        copy = open_study_file(args.study, storage=f"sqlite:///{snapshots[0]}",
                               blob_dir=str(Path(storage.removeprefix("sqlite:///")).with_suffix(".db.checkpoints")))
        result["compared"] = compare_on_samples(copy, parent, args.compare_trials, min(started))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)


def camera_frames(study, folder: Path, first: int | None) -> Path:  # type: ignore[no-untyped-def]
    """The study's footage from frame ``first`` on, as JPEG files of its frames (the edge's camera streams).

    By default the footage after the share of it the study trains on (``video: split: train``,
    0.6 by default), so the edges show frames no model was trained on.
    """
    from PIL import Image

    from searchmerge.data.sources.frames import Footage

    section = study.settings.video
    footage = Footage.probe(Path(study.path).parent / section["source"])
    if first is None:
        split = section.get("split") or {}
        first = round(footage.frame_count * float(split.get("train", 0.6) if isinstance(split, dict) else 0.6))
    folder.mkdir(parents=True, exist_ok=True)
    for index, pixels in enumerate(footage.frames()):
        if index >= first:
            Image.fromarray(pixels).save(folder / f"{index:05d}.jpg", quality=95)
    return folder


def camera_labels(study, folder: Path, frames: list[dict]) -> list[int | None]:  # type: ignore[no-untyped-def]
    """The label the service's teacher gives each frame the edge served, as the edge showed it.

    Each logged frame (model, index in ``folder``, scenario) is made again by a camera stream of
    the same folder, drifted as the edge drifted it, and labelled by the study's teacher exactly
    as the service labels a sample. A detector's frames get ``None`` (its edge prediction is a
    count of boxes, not scored here).
    """
    teacher = ImageTeacher(study)
    names = study.workload.names
    requests = {name: model_request(study.workload.spec(name)) for name in names}
    streams: dict[tuple[str, str | None], CameraStream] = {}
    wanted = sorted({(f["scenario"] or "", f["frame"], f["model"]) for f in frames})
    labels: dict[tuple[str, int, str], int | None] = {}
    for scenario, index, model in wanted:  # in frame order, so that the teacher's cache serves the models of a frame
        if requests[model].task == "detection":
            labels[(scenario, index, model)] = None
            continue
        if (model, scenario) not in streams:
            spec = study.workload.spec(model)
            stream = CameraStream(folder, tuple(spec.input_shape), tuple(requests[model].options["region"]),
                                  seed=study.settings.seed)
            if scenario:
                stream.drift(scenario, camera_drifts(scenario, {model: model}, study.settings)[model])
            streams[(model, scenario)] = stream
        shown = streams[(model, scenario)].frame(index)
        labels[(scenario, index, model)] = teacher.label(Sample(model=model, frame=shown.sample),
                                                         requests[model]).label
    return [labels[(f["scenario"] or "", f["frame"], f["model"])] for f in frames]


def _snapshot(storage: str, folder: Path) -> Path:
    """A consistent copy of the run's SQLite database (SQLite's backup API) in ``folder``, while the service writes."""
    import sqlite3

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / Path(storage.removeprefix("sqlite:///")).name
    with sqlite3.connect(storage.removeprefix("sqlite:///")) as source, sqlite3.connect(target) as copy:
        source.backup(copy)
    return target


def compare_on_samples(study, parent: str, n_trials: int, until: datetime) -> dict:  # type: ignore[no-untyped-def]
    """A re-search from the deployed version against a search from scratch, on the samples the first job had.

    ``study`` opens a copy of the database taken as the first re-search job started (the service
    prunes old samples while the edge keeps sending, and on short footage the later samples repeat
    earlier frames); the few samples that arrived between the job's start and the copy
    (``until``) are deleted from it first, so both searches read what that job read. Both use the
    study's drift evaluator; reported as bench_drift.py reports its pairs (retraining seconds to the
    first feasible plan, to a good one, and the best saving).
    """
    import sqlalchemy as sa

    data = f"{SAMPLES_PREFIX}{study.workload.name}"
    storage = study.storage
    with open_engine(storage).begin() as conn:
        conn.execute(sa.delete(samples_table).where(samples_table.c.deployment == study.workload.name,
                                                    samples_table.c.received_at > until))
        kept = dict(conn.execute(sa.select(samples_table.c.model, sa.func.count())
                                 .where(samples_table.c.deployment == study.workload.name)
                                 .group_by(samples_table.c.model)).all())
    incremental = measure(storage, "bench-samples-incremental", lambda name: research(
        study, scenario=data, parent_study=parent, n_trials=n_trials, study_name=name, strategy="greedy"))
    scratch = measure(storage, "bench-samples-scratch", lambda name: _searched(study, name, data, n_trials))
    return {"trials": n_trials, "samples_until": until.isoformat(), "samples": kept,
            "outcomes": [dataclasses.asdict(o) for o in (incremental, scratch)],
            "comparison": compare("samples", incremental, scratch)}


def _searched(study, name: str, data: str, n_trials: int):  # type: ignore[no-untyped-def]
    search = open_search(study, study_name=name, scenario=data, strategy="greedy")
    search.run(n_trials)
    return search


def _read_predictions(folder: Path) -> list[dict]:
    """The edge's prediction lines, oldest first (rotated files ``.N`` ... ``.1`` before the current one)."""
    files = sorted(folder.glob("predictions.jsonl.*"), key=lambda f: -int(f.suffix[1:])) + [folder / "predictions.jsonl"]
    return [json.loads(line) for file in files if file.exists() for line in file.read_text().splitlines()]


def teacher_labels(study, frames: list[dict]) -> tuple[list[int], int, int]:  # type: ignore[no-untyped-def]
    """The label the service gives each frame the edge served; and how many disagree with the edge's ``truth``
    and with the frame index the edge logged (both should be 0).

    The edge logs a digits frame's index in its split and its scenario, not the split: a stream
    shows ``test`` undrifted, and in a drift scenario ``train``, ``val`` and ``test`` in turn
    (:class:`~searchmerge.service.edge.streams.DigitsStream`), and dropped frames are never
    taken from the stream, so the n-th frame a stream served in a scenario names its split. Each
    frame is then labelled by the service's own :class:`Labeller` (for digits, by provenance:
    :meth:`Footage.label`), as if the edge had sent it as a sample.
    """
    footage = Labeller(study).footage
    blank = Frame(encoding="png", data="")
    served: dict[tuple[str, str | None], int] = {}
    cache: dict[tuple[str, str | None, str, int], int] = {}
    labels, untrue, misplaced = [], 0, 0
    for frame in frames:
        model, scenario = frame["model"], frame["scenario"]
        order = ("test",) if scenario is None else ("train", "val", "test")
        data = footage.data(scenario)[model]
        lengths = [len(getattr(data, split)) for split in order]
        position = served.get((frame["stream"], scenario), 0) % sum(lengths)
        served[(frame["stream"], scenario)] = served.get((frame["stream"], scenario), 0) + 1
        for split, length in zip(order, lengths):
            if position < length:
                break
            position -= length
        misplaced += position != frame["frame"]
        key = (model, scenario, split, position)
        if key not in cache:
            source = DigitsSource(kind="digits", scenario=scenario, split=split, index=position)  # type: ignore[arg-type]
            cache[key] = footage.label(Sample(model=model, frame=blank, source=source))
        labels.append(cache[key])
        untrue += cache[key] != frame["truth"]
    return labels, untrue, misplaced


def _ratio(correct: int, samples: int, baseline: float) -> dict:
    """An accuracy on ``samples`` frames over ``baseline``, with the 95% Wilson interval of the accuracy, scaled."""
    accuracy = correct / samples if samples else 0.0
    interval = wilson(accuracy, samples)
    return {"samples": samples, "correct": correct, "accuracy": accuracy, "ratio": accuracy / baseline,
            "ci95": [interval.low / baseline, interval.high / baseline]}


def score_versions(study, storage: str, baselines: dict[str, float], frames: list[dict],  # type: ignore[no-untyped-def]
                   labels: list[int | None]) -> list[dict]:
    """Per version the edge served and per model: the ratio its search judged it by, beside the edge's.

    The search's ratio is its trial's (``ratio:MODEL``: the plan's accuracy on the validation
    data of that search, over the original's validation accuracy), with the validation samples
    and interval the trial recorded. The edge's is the accuracy of the edge's predictions under
    that version against ``labels``, over ``baselines`` (the original's validation accuracy,
    the search's baseline), for the undrifted and the drifted frames apart.
    """
    engine = open_engine(storage)
    rows = []
    for version in list_versions(engine, study.workload.name):
        mine = [(f, label) for f, label in zip(frames, labels) if f["version"] == version.version]
        if not mine:
            continue
        attrs = optuna.load_study(study_name=version.source_study, storage=storage).trials[version.trial].user_attrs
        for model, baseline in baselines.items():
            row = {"version": version.version, "study": version.source_study, "trial": version.trial, "model": model,
                   "baseline": baseline, "search": {
                       "ratio": attrs.get(f"ratio:{model}"), "samples": attrs.get(f"samples:{model}"),
                       "ci95": attrs.get(f"ratio_ci95:{model}"), "baseline": attrs.get(f"baseline_ci95:{model}"),
                       "worst_ratio": attrs.get("worst_ratio"), "worst_model": attrs.get("worst_model")}}
            for part in ("undrifted", "drifted"):
                chosen = [(f, label) for f, label in mine if label is not None
                          and f["model"] == model and (f["scenario"] is None) == (part == "undrifted")]
                row[part] = _ratio(sum(f["prediction"] == label for f, label in chosen), len(chosen), baseline)
            rows.append(row)
    return rows


def _stored_samples(storage: str, deployment: str) -> dict[str, dict[str, int]]:
    """Per model, the labelled samples the service still holds (it prunes old ones), by version and scenario,
    and how many of them are held out for the publish gate (about one in ``HOLDOUT_EVERY``, by a hash of the id) or not."""
    import sqlalchemy as sa

    engine = open_engine(storage)
    held = held_out_clause(samples_table.c.id)
    with engine.connect() as conn:
        found = conn.execute(sa.select(samples_table.c.model, samples_table.c.edge_version, samples_table.c.scenario,
                                       held.label("held"), sa.func.count())
                             .where(samples_table.c.deployment == deployment)
                             .group_by(samples_table.c.model, samples_table.c.edge_version, samples_table.c.scenario,
                                       "held")).all()
    counts: dict[str, dict[str, int]] = {}
    for model, version, scenario, is_held, n in found:
        mine = counts.setdefault(model, {})
        key = f"version {version} {scenario or 'undrifted'}"
        mine[key] = mine.get(key, 0) + int(n)
        part = "held out" if is_held else "drift check and re-search"
        mine[part] = mine.get(part, 0) + int(n)
    return counts


def report(work: Path, study, storage: str, baselines: dict[str, float], health: dict, args,  # type: ignore[no-untyped-def]
           folder: Path | None) -> dict:
    engine = open_engine(storage)
    jobs = list_jobs(engine, study.workload.name)
    versions = list_versions(engine, study.workload.name)
    lines = _read_predictions(work / "edge")
    frames = [line for line in lines if "prediction" in line]
    drops = [line for line in lines if "dropped" in line]
    drifted = [line["t"] for line in frames if line["scenario"] == args.scenario]
    drift = min(drifted) if drifted else None
    switches = []
    for job in jobs:
        version = next((v for v in versions if v.version == job.version), None)
        job_study = optuna.load_study(study_name=job.study_name, storage=storage) if job.started_at else None
        trials = job_study.trials if job_study is not None else []
        finished = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        saved = [int(t.user_attrs.get("saved_bytes", 0)) for t in finished if t.user_attrs.get("feasible")]
        cost = trials_outcome(job.study_name, finished, max(saved, default=0), 0.0,
                              before_trials=baselines_seconds(job_study.user_attrs) if job_study is not None else 0.0)
        entry = {"job": job.id, "state": job.state, "study": job.study_name, "trials": len(trials),
                 "first_feasible_trial": cost.first_feasible_trial,  # 1 = its first trial
                 "retraining_s_to_feasible": cost.seconds_to_feasible,
                 "retraining_s": cost.total_seconds, "best_saved": cost.best_saved,
                 "from_store": sum(bool(t.user_attrs.get("from_store")) for t in trials),
                 "detected": job.detected_at.timestamp() - drift if drift else None, "message": job.message}
        if version is not None:
            served = [line["t"] for line in frames if line["version"] == version.version]
            published = version.created_at.timestamp()
            switch = min(served) if served else None
            entry.update(version=version.version, trial=version.trial,
                         published=published - drift if drift else None,
                         switched=switch - drift if drift and switch else None,
                         dropped_during_switch=sum(d["dropped"] for d in drops if switch and published <= d["t"] <= switch + 1 / args.fps))
        switches.append(entry)
    if folder is None:
        labels, untrue, misplaced = teacher_labels(study, frames)
    else:
        labels, untrue, misplaced = camera_labels(study, folder, frames), 0, 0
    return {
        "study": study.path.name, "models": len(study.workload.models), "fps": args.fps, "sample_every": args.sample_every,
        "scenario": args.scenario, "drift_after": args.drift_after, "target": study.settings.target,
        "seed": study.settings.seed, "jobs": switches,
        "frames": len(frames), "dropped": sum(d["dropped"] for d in drops),
        "switch_bytes": health.get("last_switch_bytes"), "deployment_bytes": health.get("deployment_bytes"),
        "labels_disagreeing_with_edge_truth": untrue, "frames_out_of_place": misplaced,
        "stored_samples": _stored_samples(storage, study.workload.name),
        "versions": score_versions(study, storage, baselines, frames, labels),
        "run_at": datetime.now().isoformat(timespec="seconds"), "work": str(work),
        "load_average": os.getloadavg(),
    }


def _interval(part: dict) -> str:
    return f"{part['ratio']:.3f} [{part['ci95'][0]:.3f}, {part['ci95'][1]:.3f}] n={part['samples']}" if part["samples"] else "-"


def print_report(result: dict) -> None:
    print(f"study {result['study']}: {result['models']} models, {result['fps']:g} fps per stream, 1 in"
          f" {result['sample_every']} frames sampled, drift {result['scenario']!r} after {result['drift_after']:g} s,"
          f" seed {result['seed']}")
    for job in result["jobs"]:
        print(f"re-search job {job['job']} {job['study']!r}: {job['state']}, {job['trials']} trial(s),"
              f" {job['from_store']} answered from the checkpoint store"
              + (f"; published trial {job['trial']} as version {job['version']}" if "version" in job else f"; {job['message']}"))
        if job["first_feasible_trial"] is not None:
            print(f"  retraining to its first feasible plan (trial {job['first_feasible_trial'] - 1}):"
                  f" {job['retraining_s_to_feasible']:.0f} s; all trials {job['retraining_s']:.0f} s;"
                  f" best saving {job['best_saved'] / 1e6:.2f} MB")
        print(f"  drift -> detected  {job['detected']:8.1f} s" if job["detected"] is not None else "  (no drift served)")
        if job.get("published") is not None:
            print(f"  drift -> published {job['published']:8.1f} s")
        if job.get("switched") is not None:
            print(f"  drift -> switched  {job['switched']:8.1f} s  (publication -> switch"
                  f" {job['switched'] - job['published']:.1f} s; frames dropped during it: {job['dropped_during_switch']})")
    print(f"frames dropped over the whole run: {result['dropped']} of {result['frames'] + result['dropped']}")
    if any(job.get("switched") is not None for job in result["jobs"]) and result["deployment_bytes"]:
        print(f"bytes copied to the device by the last switch: {result['switch_bytes']} of {result['deployment_bytes']}"
              f" ({result['switch_bytes'] / result['deployment_bytes']:.1%})")
    print(f"labels (the service's Labeller) that disagree with the edge's logged truth: {result['labels_disagreeing_with_edge_truth']};"
          f" frames whose split position disagrees with the logged index: {result['frames_out_of_place']}")
    print(f"labelled samples the service still holds (about one in {HOLDOUT_EVERY}, by a hash of the id, held out for the publish gate):")
    for model, counts in result["stored_samples"].items():
        print(f"  {model:14s} " + ", ".join(f"{key}: {n}" for key, n in counts.items()))
    print(f"ratio = accuracy / the original's validation accuracy (target {result['target']}); edge: its predictions"
          " scored against the service's labels, 95% Wilson interval")
    print(f"{'version':>7s} {'model':14s} {'search (validation)':32s} {'edge, undrifted':30s} {'edge, ' + result['scenario']:30s}")
    for row in result["versions"]:
        search = row["search"]
        judged = f"{search['ratio']:.3f} {search['ci95'] or ''}" if search["ratio"] is not None else "-"
        drifted = row["drifted"]
        verdict = "" if not drifted["samples"] else ("meets" if drifted["ratio"] >= result["target"] else "MISSES")
        print(f"{row['version']:>7d} {row['model']:14s} {judged:32s} {_interval(row['undrifted']):30s}"
              f" {_interval(drifted):30s} {verdict}")
    if "compared" in result:
        compared = result["compared"]
        held = ", ".join(f"{model}: {count}" for model, count in compared["samples"].items())
        print(f"on the samples the service held when the first job started ({held}),"
              f" {compared['trials']} greedy trials each:")
        for outcome in compared["outcomes"]:
            to_feasible, first = outcome["seconds_to_feasible"], outcome["first_feasible_trial"]
            print(f"  {outcome['name']:28s} first feasible at trial {'-' if first is None else first - 1},"
                  f" retraining {to_feasible if to_feasible is None else round(to_feasible)} s to it,"
                  f" {outcome['total_seconds']:.0f} s in all, best saving {outcome['best_saved'] / 1e6:.2f} MB")
        label, first, samples, good, share = compared["comparison"]
        print(f"  re-search against scratch: {first} less retraining to a first feasible plan ({samples} in samples),"
              f" {good} to a good one; best saving {share} of scratch's")
    print(f"(run at {result['run_at']}, load average {', '.join(f'{x:.1f}' for x in result['load_average'])};"
          f" logs in {result['work']})")


if __name__ == "__main__":
    main()
