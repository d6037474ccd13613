"""Load on one merging service: N simulated edges post samples and poll for versions.

Run by hand from the repository root:

    python benchmarks/bench_service_load.py --storage sqlite --edges 100 --duration 60
    python benchmarks/bench_service_load.py --storage postgresql+psycopg://postgres@127.0.0.1:5432/test --edges 100

It writes a tiny three-model digits study into ``--work`` (a deployment of its own, so runs on a
shared PostgreSQL database do not meet), prepares its originals, publishes them as version 1,
gives every simulated edge a token, and starts ``searchmerge serve`` as a real process on
loopback, with its defaults (drift checks on the samples as they come, the default quotas). Then,
from this process (asyncio and httpx, one client per edge), each edge posts ``--rate`` samples a
second (``--batch`` per request; frames of the generator's footage, so the service labels them)
and asks for the current version every ``--poll`` seconds, on a fixed schedule: a slow answer
does not slow the offered load. It prints, per kind of request, the requests, errors (any answer
but 2xx, or none), latency p50/p99, and for samples: offered and accepted per second, and lost
(accepted, by a 202, but not stored: rows inserted are counted by the samples table's ids, which
only grow); and the database's growth (the samples table's size on PostgreSQL, the file's on
SQLite) over the run, per hour. The machine's load average before and after is printed too:
the figures depend on what else runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import sqlalchemy as sa

from searchmerge.config.study import StudyFile, open_study_file
from searchmerge.data.sources.base import pixels_of
from searchmerge.data.sources.digits import NORM_MEAN, NORM_STD
from searchmerge.service.cloud.db import open_engine, samples
from searchmerge.service.cloud.tokens import create_edge_token
from searchmerge.service.cloud.versions import current_version, publish_files
from searchmerge.service.footage import Footage
from searchmerge.service.protocol import DigitsSource, Sample, SampleBatch, encode_frame
from searchmerge.training.deployment import MANIFEST_FILE, WEIGHTS_FILE
from searchmerge.training.evaluate import export_plan

#: Three small digits models (16 x 16 grey frames): the service's drift check runs them on every window.
STUDY = """
name: {name}
seed: 0
target: 0.9
data: {{image_size: 16, channels: 1}}
pretrain: {{task: digit, epochs: 2, lr: 0.01}}
finetune: {{epochs: 2, lr: 0.01}}
evaluator: {{fraction: 0.5, max_epochs: 2, lr: 0.003, init: first}}
models:
  - {{name: a, factory: "searchmerge.zoo:small_resnet", kwargs: {{num_classes: 10, widths: [4, 8, 8], in_channels: 1}},
     task: digit, camera: {{noise_std: 0.05}}}}
  - {{name: b, factory: "searchmerge.zoo:small_resnet", kwargs: {{num_classes: 2, widths: [4, 8, 8], in_channels: 1}},
     task: parity, camera: {{blur_sigma: 0.8}}}}
  - {{name: c, factory: "searchmerge.zoo:small_vgg", kwargs: {{num_classes: 2, widths: [4, 8, 8], in_channels: 1}},
     task: high}}
"""
MAX_EDGES, MAX_DURATION = 1000, 900


@dataclass
class Record:
    """What the simulated edges saw, per kind of request."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {"samples": [], "version": []})
    #: (when sent, latency) of every request: whether the slowest came together (a stall) or spread out.
    timeline: list[tuple[float, float, str]] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=lambda: {"samples": 0, "version": 0})
    error_kinds: dict[str, int] = field(default_factory=dict)
    offered: int = 0
    accepted: int = 0


def setup(storage: str, work: Path, reuse: str | None) -> StudyFile:
    """A fresh tiny study (its own deployment), prepared, with its originals published as version 1;
    or, with ``reuse``, the one an earlier run made under that name."""
    name = reuse or f"load-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{name}.yaml"
    url = f"sqlite:///{work / (name + '.db')}" if storage == "sqlite" else storage
    if reuse is not None:
        if not path.is_file():
            sys.exit(f"no study {path} from an earlier run to reuse")
        return open_study_file(path, storage=url, blob_dir=str(work / f"{name}.blobs"))
    path.write_text(STUDY.format(name=name))
    study = open_study_file(path, storage=url, blob_dir=str(work / f"{name}.blobs"))
    folder, _ = export_plan(study, "none", work / f"{name}-v1", progress=lambda line: print(line, file=sys.stderr))
    files = {file: (folder / file).read_bytes() for file in (MANIFEST_FILE, WEIGHTS_FILE)}
    publish_files(open_engine(url), study, files, source_study="originals", trial=0, checkpoint="originals")
    return study


def bodies(study: StudyFile, batch: int, count: int = 64) -> list[bytes]:
    """``count`` sample uploads of ``batch`` frames each, cycling through the models' test footage."""
    data = Footage(study.workload, study.settings).data(None)
    models = list(data)
    made = []
    for upload in range(count):
        chosen = []
        for k in range(batch):
            i = upload * batch + k
            model = models[i % len(models)]
            frame = pixels_of(data[model].test[i % len(data[model].test)][0].numpy(), (NORM_MEAN, NORM_STD))
            chosen.append(Sample(model=model, frame=encode_frame(frame),  # 8-bit PNG, as an edge sends it
                                 source=DigitsSource(kind="digits", split="test", index=i % len(data[model].test))))
        made.append(SampleBatch(samples=chosen).model_dump_json().encode())
    return made


async def one_edge(client: httpx.AsyncClient, edge: str, uploads: list[bytes], *, batch: int, rate: float,
                   poll: float, start: float, end: float, offset: float, record: Record) -> None:
    pending: set[asyncio.Task[None]] = set()

    async def call(kind: str, method: str, path: str, body: bytes | None = None) -> None:
        began = time.perf_counter()
        try:
            answer = await client.request(method, path, content=body)
            ok = 200 <= answer.status_code < 300
            reason = str(answer.status_code)
        except httpx.HTTPError as exc:
            ok, reason, answer = False, type(exc).__name__, None
        record.latencies[kind].append(time.perf_counter() - began)
        record.timeline.append((began, time.perf_counter() - began, kind))
        if not ok:
            record.errors[kind] += 1
            record.error_kinds[f"{kind} {reason}"] = record.error_kinds.get(f"{kind} {reason}", 0) + 1
        elif kind == "samples" and answer is not None:
            record.accepted += int(answer.json()["accepted"])

    next_upload, next_poll, sent = start + offset, start + offset * poll, 0
    while True:
        moment = min(next_upload, next_poll)
        if moment >= end:
            break
        await asyncio.sleep(max(0.0, moment - time.perf_counter()))
        if next_upload <= next_poll:
            record.offered += batch
            task = asyncio.create_task(call("samples", "POST", f"/v1/edges/{edge}/samples",
                                            uploads[sent % len(uploads)]))
            sent += 1
            next_upload += batch / rate
        else:
            task = asyncio.create_task(call("version", "GET", f"/v1/edges/{edge}/version"))
            next_poll += poll
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)


async def drive(url: str, tokens: dict[str, str], uploads: list[bytes], *, batch: int, rate: float, poll: float,
                duration: float) -> Record:
    record = Record()
    async with contextlib.AsyncExitStack() as stack:
        # Every edge's client is made before the clock starts: making one (its TLS context) takes this process
        # 10-20 ms, and 100 of them made inside the run stalled the first second's requests by as much.
        clients = [await stack.enter_async_context(httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}, timeout=60))
            for token in tokens.values()]
        start = time.perf_counter() + 1.0
        count = len(tokens)
        await asyncio.gather(*(
            one_edge(client, edge, uploads, batch=batch, rate=rate, poll=poll, start=start, end=start + duration,
                     offset=i / count * batch / rate, record=record)
            for i, (edge, client) in enumerate(zip(tokens, clients))
        ))
    return record


def database_bytes(study: StudyFile) -> int:
    """The samples table's size on PostgreSQL (with its indexes and TOAST), the file's on SQLite."""
    if study.storage.startswith("sqlite:///"):
        return Path(study.storage.removeprefix("sqlite:///")).stat().st_size
    with sa.create_engine(study.storage).connect() as conn:
        return int(conn.execute(sa.text(f"SELECT pg_total_relation_size('{samples.name}')")).scalar() or 0)


def stored_rows(study: StudyFile) -> int:
    """The deployment's samples in the table (the drift check prunes them to 4 x its window per model)."""
    with open_engine(study.storage).connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(samples)
                                .where(samples.c.deployment == study.workload.name)).scalar() or 0)


def newest_sample_id(study: StudyFile) -> int:
    with open_engine(study.storage).connect() as conn:
        return int(conn.execute(sa.select(sa.func.max(samples.c.id))).scalar() or 0)


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds a process used so far (Linux's /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def slow_seconds(timeline: list[tuple[float, float, str]]) -> tuple[int, list[int]]:
    """The slowest 1% of requests, and the seconds of the run (from its first request) they were sent in."""
    start = min((sent for sent, _, _ in timeline), default=0.0)
    slowest = sorted(timeline, key=lambda entry: entry[1])[-max(1, len(timeline) // 100):]
    return len(slowest), sorted({int(sent - start) for sent, _, _ in slowest})


def after_warmup(timeline: list[tuple[float, float, str]], kind: str, warmup: float) -> list[float]:
    """The latencies of ``kind`` sent after the first ``warmup`` seconds (every edge connecting at once)."""
    start = min((sent for sent, _, _ in timeline), default=0.0)
    return [latency for sent, latency, k in timeline if k == kind and sent - start >= warmup]


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", default="sqlite", help="'sqlite' (a file in --work) or a PostgreSQL URL")
    parser.add_argument("--work", type=Path, default=Path("bench-service-load"))
    parser.add_argument("--edges", type=int, default=100)
    parser.add_argument("--rate", type=float, default=1.0, help="samples per second per edge (default: 1)")
    parser.add_argument("--batch", type=int, default=1, help="samples per upload (default: 1)")
    parser.add_argument("--poll", type=float, default=5.0, help="seconds between version polls (default: 5)")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--reuse", default=None, metavar="NAME", help="the deployment an earlier run made in --work"
                        " (skips preparing the originals)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds at the start also reported apart"
                        " (default: 5)")
    parser.add_argument("--no-gc", action="store_true", help="no garbage collection in this process during the run")
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    args = parser.parse_args()
    if not 1 <= args.edges <= MAX_EDGES or not 1 <= args.duration <= MAX_DURATION or args.rate <= 0:
        sys.exit(f"give 1..{MAX_EDGES} edges, 1..{MAX_DURATION} s and a positive rate")

    study = setup(args.storage, args.work, args.reuse)
    print(f"deployment {study.workload.name} (--reuse {study.workload.name} runs on it again)", file=sys.stderr)
    engine = open_engine(study.storage)
    assert current_version(engine, study.workload.name) is not None
    tokens = {f"edge-{i}": create_edge_token(study.storage, study.workload.name, f"edge-{i}")
              for i in range(args.edges)}
    uploads = bodies(study, args.batch)
    port = 18000 + os.getpid() % 1000
    log = args.work / f"{study.workload.name}-service.log"
    with open(log, "ab") as out:
        service = subprocess.Popen([sys.executable, "-m", "searchmerge.cli", "serve", str(study.path), "--storage",
                                    study.storage, "--blob-dir", str(study.blob_dir), "--port", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if service.poll() is not None:
                sys.exit(f"the service exited; see {log}")
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        # The first drift check loads the version's models and the baselines, and holds the API up for
        # a second or two: one upload first, and the run starts once that check is done.
        first = next(iter(tokens.items()))
        headers = {"Authorization": f"Bearer {first[1]}", "Content-Type": "application/json"}
        httpx.post(f"{url}/v1/edges/{first[0]}/samples", content=uploads[0], headers=headers, timeout=60)
        while httpx.get(f"{url}/v1/edges/{first[0]}/status", headers=headers, timeout=60).json().get("check") is None:
            time.sleep(0.5)
        load_before, size_before, id_before = os.getloadavg()[0], database_bytes(study), newest_sample_id(study)
        service_cpu, client_cpu = cpu_seconds(service.pid), cpu_seconds(os.getpid())
        if args.no_gc:
            gc.disable()  # whether the client's own collections make the tail
        record = asyncio.run(drive(url, tokens, uploads, batch=args.batch, rate=args.rate, poll=args.poll,
                                   duration=args.duration))
        service_cpu, client_cpu = cpu_seconds(service.pid) - service_cpu, cpu_seconds(os.getpid()) - client_cpu
        time.sleep(1.0)
        load_after, size_after, id_after = os.getloadavg()[0], database_bytes(study), newest_sample_id(study)
    finally:
        service.terminate()
        service.wait(timeout=60)
    inserted, rows = id_after - id_before, stored_rows(study)
    slow, seconds = slow_seconds(record.timeline)
    backend = "sqlite" if study.storage.startswith("sqlite") else "postgresql"
    result = {
        "storage": backend, "edges": args.edges, "rate": args.rate, "batch": args.batch, "poll": args.poll,
        "duration_s": args.duration, "samples_offered_per_s": record.offered / args.duration,
        "samples_accepted_per_s": record.accepted / args.duration, "samples_lost": max(0, record.accepted - inserted),
        "samples_inserted": inserted,
        "errors": record.errors, "error_kinds": record.error_kinds,
        "samples_p50_ms": 1000 * percentile(record.latencies["samples"], 0.5),
        "samples_p99_ms": 1000 * percentile(record.latencies["samples"], 0.99),
        "version_p50_ms": 1000 * percentile(record.latencies["version"], 0.5),
        "version_p99_ms": 1000 * percentile(record.latencies["version"], 0.99),
        "requests": {kind: len(values) for kind, values in record.latencies.items()},
        "warmup_s": args.warmup,
        "samples_p50_ms_after_warmup": 1000 * percentile(after_warmup(record.timeline, "samples", args.warmup), 0.5),
        "samples_p99_ms_after_warmup": 1000 * percentile(after_warmup(record.timeline, "samples", args.warmup), 0.99),
        "version_p99_ms_after_warmup": 1000 * percentile(after_warmup(record.timeline, "version", args.warmup), 0.99),
        "mean_samples_ms": 1000 * statistics.fmean(record.latencies["samples"] or [0.0]),
        "db_growth_bytes_per_hour": (size_after - size_before) / args.duration * 3600,
        "db_bytes_after": size_after, "rows_after": rows, "load_average_before": load_before, "load_average_after": load_after,
        "slowest_1pct_sent_in_seconds": seconds, "service_cpu_s": service_cpu, "client_cpu_s": client_cpu,
        "service_cpu_ms_per_request": 1000 * service_cpu / max(1, sum(map(len, record.latencies.values()))),
    }
    print(f"{backend}: {args.edges} edges x {args.rate:g} samples/s ({args.batch} per upload), polls every"
          f" {args.poll:g} s, {args.duration:g} s; load average {load_before:.1f} -> {load_after:.1f}")
    print(f"  samples: offered {result['samples_offered_per_s']:.1f}/s, accepted {result['samples_accepted_per_s']:.1f}/s,"
          f" lost {result['samples_lost']} (inserted {inserted}); latency p50 {result['samples_p50_ms']:.0f} ms,"
          f" p99 {result['samples_p99_ms']:.0f} ms; errors {record.errors['samples']}")
    print(f"  version polls: {len(record.latencies['version'])}, p50 {result['version_p50_ms']:.0f} ms, p99"
          f" {result['version_p99_ms']:.0f} ms; errors {record.errors['version']}")
    print(f"  after the first {args.warmup:g} s (every edge connecting at once): samples p50"
          f" {result['samples_p50_ms_after_warmup']:.0f} ms, p99 {result['samples_p99_ms_after_warmup']:.0f} ms;"
          f" polls p99 {result['version_p99_ms_after_warmup']:.0f} ms")
    print(f"  the slowest {slow} requests (1%) were sent in second(s) {', '.join(map(str, seconds))} of the"
          f" {args.duration:g}")
    if record.error_kinds:
        print(f"  errors by kind: {record.error_kinds}")
    print(f"  CPU: the service {service_cpu:.1f} s ({result['service_cpu_ms_per_request']:.1f} ms a request, including"
          f" its drift checks), these simulated edges {client_cpu:.1f} s, over {args.duration:g} s on"
          f" {os.cpu_count()} cores")
    print(f"  database: {size_before / 1e6:.1f} MB -> {size_after / 1e6:.1f} MB, growth"
          f" {result['db_growth_bytes_per_hour'] / 1e6:.1f} MB per hour at this load; {rows} samples of this deployment"
          " stored at the end")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
