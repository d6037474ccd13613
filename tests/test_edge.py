"""The edge agent: switches that copy only changed tensors, refused tampering, an absent service,
kill -9 in the middle of a switch, and the whole loop (drift injected -> new version served)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from searchmerge.config.study import StudyFile
from searchmerge.search.merge_search import load_search
from searchmerge.service.cloud.db import open_engine
from searchmerge.service.cloud.tokens import create_edge_token
from searchmerge.service.cloud.versions import (
    artifact_store,
    current_version,
    publish,
    rollback,
)
from searchmerge.service.edge.agent import EdgeAgent, EdgeSettings, retry_delay
from searchmerge.service.edge.serving import ServingVersion
from searchmerge.service.protocol import VersionInfo
from searchmerge.service.signing import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, Signer, init_keys
from searchmerge.training.deployment import export_deployment, load_deployment
from tests.edge_cloud_support import (
    PARENT,
    free_port,
    health,
    kill,
    python_process,
    searched_copy,
    searchmerge_process,
    start_service,
    stop,
    wait_for,
)

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def version_info(number: int, folder: Path) -> VersionInfo:
    manifest = json.loads((folder / "manifest.json").read_text())
    return VersionInfo(version=number, created_at="2026-01-01T00:00:00Z", source_study="s", trial=number,
                       scenario=None, manifest_sha256="", manifest_size=0,
                       weights_sha256=manifest["weights"]["sha256"], weights_size=manifest["weights"]["size"])


def test_a_switch_copies_only_the_tensors_that_changed(prepared_tiny: Path, tmp_path_factory: pytest.TempPathFactory,
                                                       tmp_path: Path) -> None:
    study = searched_copy(prepared_tiny, tmp_path_factory, "edge-switch")
    first = load_search(study, study_name=PARENT).export(tmp_path / "v1")
    deployment = load_deployment(first)
    with torch.no_grad():
        deployment.models["a"].fc.weight.add_(1.0)  # one private tensor changes
    second = export_deployment(tmp_path / "v2", deployment.workload, deployment.models, plan=deployment.plan,
                               settings=deployment.settings)

    old = ServingVersion.prepare(version_info(1, first), first, gpu_memory="1GiB", device="simulated")
    assert old.bytes_copied == old.bytes_total  # a first load copies everything
    same = ServingVersion.prepare(version_info(1, first), first, gpu_memory="1GiB", device="simulated", previous=old)
    assert same.bytes_copied == 0
    new = ServingVersion.prepare(version_info(2, second), second, gpu_memory="1GiB", device="simulated", previous=old)
    assert new.bytes_copied == deployment.models["a"].fc.weight.numel() * 4
    changed = [i for i, (a, b) in enumerate(zip(old.digests, new.digests)) if a != b]
    assert [new.runtime.layout.keys[i] for i in changed] == ["a/fc.weight"]
    # Adopted tensors are the old version's device memory; the new version still computes its own outputs.
    kept = next(i for i in range(len(new.digests)) if i not in changed)
    assert new.runtime.resident_tensor(kept) is old.runtime.resident_tensor(kept)
    frame = torch.randn(1, 16, 16)
    with torch.inference_mode():
        expected = int(deployment.models["a"](frame[None]).argmax(dim=1)[0])
    assert new.predict("a", frame) == expected
    assert retry_delay(1, base=0.5, cap=4) == 0.5 and retry_delay(3, base=0.5, cap=4) == 2.0
    assert retry_delay(10, base=0.5, cap=4) == 4


@pytest.fixture()
def served(prepared_tiny: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Iterator[tuple]:
    """A study copy, its service process (version 1 published, versions signed with the key in
    ``tmp_path/keys``) and an edge token."""
    study = searched_copy(prepared_tiny, tmp_path_factory, "edge")
    port = free_port()
    private, _ = init_keys(tmp_path / "keys")
    process = start_service(study, port, tmp_path / "service.log", "--signing-key", str(private))
    token = create_edge_token(study.storage, study.workload.name, "gate")
    yield study, port, token, process
    stop(process)


class AgentThread:
    """An agent running in a thread of the test process (its state read directly)."""

    def __init__(self, port: int, token: str, state: Path, trust: Path) -> None:
        settings = EdgeSettings(state_dir=state, fps=20, sample_every=2, poll_seconds=0.3, max_backoff=1.0,
                                metrics_port=0, trust=trust)
        self.lines: list[str] = []
        self.agent = EdgeAgent(f"http://127.0.0.1:{port}", token, settings, progress=self.lines.append)
        self.thread = threading.Thread(target=self.agent.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.agent.metrics_port, what="the agent to serve")

    def processed(self) -> int:
        return sum(s.processed for s in self.agent.streams)

    def metric(self, name: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.agent.metrics_port}/metrics").text
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)

    def close(self) -> None:
        self.agent.stop()
        self.thread.join()


def second_version(study: StudyFile, keys: Path) -> VersionInfo:
    """Another feasible trial of the parent search, published (signed with the key in ``keys``) as the next version."""
    search = load_search(study, study_name=PARENT)
    other = next(t for t in search.history() if t.feasible and t.number != search.best().number)
    return publish(open_engine(study.storage), study, search, other, signer=Signer.load(keys / PRIVATE_KEY_FILE))


def test_a_tampered_blob_is_not_served_and_the_old_version_keeps_serving(served: tuple, tmp_path: Path) -> None:
    """A blob altered in the store: the service checks it before serving it and answers 503 (the
    edge's own check of bytes altered on the way is in test_edge_faults and test_edge_trust)."""
    study, port, token, _ = served
    agent = AgentThread(port, token, tmp_path / "edge", tmp_path / "keys" / PUBLIC_KEY_FILE)
    try:
        assert agent.agent.active.info.version == 1
        v2 = second_version(study, tmp_path / "keys")
        blob = Path(artifact_store(study).location) / f"{v2.weights_sha256}.safetensors"
        original = blob.read_bytes()
        blob.write_bytes(original[:-64] + bytes(64))  # same size, other bytes
        wait_for(lambda: agent.metric("searchmerge_edge_server_unreachable_total") >= 2,
                 what="the service to refuse the damaged file (and the edge to retry)")
        before = agent.processed()
        wait_for(lambda: agent.processed() > before + 20, what="frames served by the old version")
        assert agent.agent.active.info.version == 1 and agent.agent.health()["version"] == 1
        assert not (tmp_path / "edge" / "versions" / "2").exists()
        assert json.loads((tmp_path / "edge" / "current.json").read_text())["version"] == 1
        assert "the stored weights.safetensors" in (tmp_path / "service.log").read_text()  # the operator is told
        assert agent.agent.refused == 0  # the version is not at fault, its stored copy is
        # Put right, the same version is taken at the next poll.
        blob.write_bytes(original)
        wait_for(lambda: agent.agent.active.info.version == 2, what="the repaired version")
        assert agent.metric("searchmerge_edge_version") == 2
        assert agent.metric("searchmerge_edge_version_switches_total") == 1
    finally:
        agent.close()


def test_the_edge_keeps_serving_while_the_service_is_unreachable(served: tuple, tmp_path: Path) -> None:
    study, port, token, process = served
    agent = AgentThread(port, token, tmp_path / "edge", tmp_path / "keys" / PUBLIC_KEY_FILE)
    try:
        wait_for(lambda: agent.metric("searchmerge_edge_samples_sent_total") > 0, what="samples to reach the service")
        kill(process)
        wait_for(lambda: agent.metric("searchmerge_edge_server_unreachable_total") >= 3,
                 what="the agent to notice (and retry)")
        assert agent.agent.health()["server"]["reachable"] is False
        before = agent.processed()
        wait_for(lambda: agent.processed() > before + 40, what="frames served without the service")
        assert agent.agent.health()["status"] == "ok" and agent.agent.active.info.version == 1
        waiting = len(agent.agent._samples)
        assert waiting > 0  # samples wait for the service
        sent = agent.metric("searchmerge_edge_samples_sent_total")
        restarted = start_service(study, port, tmp_path / "service2.log")
        try:
            wait_for(lambda: agent.metric("searchmerge_edge_samples_sent_total") >= sent + waiting,
                     what="the waiting samples to be sent")
            assert agent.agent.health()["server"]["reachable"] is True
        finally:
            stop(restarted)
    finally:
        agent.close()


#: An agent that stops for ever at one step of a switch to version 2 (the test kills it there).
STALLING_AGENT = """
import sys, time
from pathlib import Path
from searchmerge.service.edge import client, local, serving
from searchmerge.service.edge.agent import EdgeAgent, EdgeSettings

step = sys.argv[1] if len(sys.argv) > 1 else {step!r}

def stall(name, original):
    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        version = next(a for a in args if hasattr(a, "version")).version
        if version == 2 and (name != "download" or args[2] == "weights.safetensors"):
            print("STALLED at", name, flush=True)
            time.sleep(3600)
        return result
    return wrapper

if step == "download":      # the weights downloaded into the hidden part folder, not yet renamed
    client.ServiceClient.download = stall("download", client.ServiceClient.download)
elif step == "prepare":     # verified and renamed, loaded beside version 1, current.json still 1
    serving.ServingVersion.prepare = classmethod(stall("prepare", serving.ServingVersion.prepare.__func__))
elif step == "current":     # current.json names 2, the serving loop not yet switched
    local.LocalVersions.set_current = stall("current", local.LocalVersions.set_current)
settings = EdgeSettings(state_dir=Path({state!r}), fps=20, poll_seconds=0.3, metrics_port={metrics},
                        trust=Path({trust!r}))
EdgeAgent({server!r}, {token!r}, settings, progress=print).run()
"""


@pytest.mark.parametrize("step", ["download", "prepare", "current"])
def test_an_edge_killed_during_a_switch_restarts_on_a_complete_verified_version(
    served: tuple, tmp_path: Path, step: str
) -> None:
    study, port, token, _ = served
    state, metrics = tmp_path / "edge", free_port()
    code = STALLING_AGENT.format(step=step, state=str(state), metrics=metrics, server=f"http://127.0.0.1:{port}",
                                 token=token, trust=str(tmp_path / "keys" / PUBLIC_KEY_FILE))
    log = tmp_path / "edge.log"
    edge = python_process(code, log, cwd=tmp_path)
    try:
        wait_for(lambda: (health(metrics) or {}).get("version") == 1, alive=edge, what="version 1", log=log)
        v2 = second_version(study, tmp_path / "keys")
        wait_for(lambda: "STALLED" in log.read_text(), alive=edge, what="the switch to stall", log=log)
    finally:
        kill(edge)
    named = json.loads((state / "current.json").read_text())["version"]
    assert named == (2 if step == "current" else 1)
    assert (state / "versions" / "2").is_dir() == (step != "download")
    assert list((state / "versions").glob(".2.part-*")) if step == "download" else True

    log2 = tmp_path / "edge2.log"
    restarted = searchmerge_process(["edge", "--server", f"http://127.0.0.1:{port}", "--token", token, "--state-dir",
                                     str(state), "--fps", "20", "--poll", "0.3", "--metrics-port", str(metrics),
                                     "--trust", str(tmp_path / "keys" / PUBLIC_KEY_FILE)],
                                    log2, cwd=tmp_path)
    try:
        first = wait_for(lambda: health(metrics), alive=restarted, what="the restarted edge", log=log2)
        assert first["status"] == "ok" and first["verified"]  # type: ignore[index]
        # The version current.json named (logged just after /healthz starts answering: waited for, not raced).
        wait_for(lambda: f"serving version {named} on" in log2.read_text(), alive=restarted,
                 what=f"the restarted edge to log version {named}", log=log2)
        served_now = wait_for(lambda: (h := health(metrics)) and h["version"] == 2 and h, alive=restarted,
                              what="version 2", log=log2)
        assert served_now["weights_sha256"] == v2.weights_sha256  # type: ignore[index]
        assert not list((state / "versions").glob(".*.part-*"))  # the half-downloaded copy is gone
    finally:
        stop(restarted)
    engine = open_engine(study.storage)
    rollback(engine, study.workload.name, 1)  # the next parameter starts from version 1 again
    assert current_version(engine, study.workload.name).version == 1


#: Frames per model that the new version serves before the end-to-end test compares accuracies
#: (with a handful, one wrong frame decided the comparison).
V2_FRAMES = 60


def _frames_served(state: Path, *, version: int, at_least: int) -> bool:
    """Whether every model has written ``at_least`` predictions of ``version`` (complete lines only)."""
    path = state / "predictions.jsonl"
    if not path.exists():
        return False
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines(keepends=True):
        if line.endswith("\n") and '"prediction"' in line:
            record = json.loads(line)
            if record["version"] == version:
                counts[record["model"]] = counts.get(record["model"], 0) + 1
    return len(counts) == 3 and min(counts.values()) >= at_least


def test_drift_injected_at_the_edge_is_repaired_by_a_new_version_end_to_end(
    prepared_tiny: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """Service and agent as real processes on loopback: night falls, the service sees it in the
    samples, re-searches, publishes; the agent switches, and does better on the night footage."""
    study = searched_copy(prepared_tiny, tmp_path_factory, "edge-e2e")
    port, metrics = free_port(), free_port()
    private, public = init_keys(tmp_path / "keys")  # version 2, published by the re-search job, is signed too
    # The re-search trains on the night samples the edge sends: it waits for 1200 of each model (not held out),
    # which the edge sends within about three minutes at 10 frames a second, each one sampled.
    service = start_service(study, port, tmp_path / "service.log", "--research-trials", "4", "--min-samples", "16",
                            "--window", "32", "--signing-key", str(private), "--research-samples", "1200",
                            "--samples-per-minute", "12000")
    token = create_edge_token(study.storage, study.workload.name, "gate")
    state = tmp_path / "edge"
    log = tmp_path / "edge.log"
    edge = searchmerge_process(["edge", "--server", f"http://127.0.0.1:{port}", "--token", token, "--state-dir",
                                str(state), "--fps", "10", "--sample-every", "1", "--poll", "0.5", "--drift", "night",
                                "--drift-after", "3", "--metrics-port", str(metrics), "--trust", str(public)],
                               log, cwd=tmp_path)
    try:
        final = wait_for(lambda: (h := health(metrics)) and h["version"] == 2 and h, alive=edge,
                         what="the new version to be served", log=log)
        # Enough night frames of version 2 that the accuracy comparison below is not a coin toss.
        wait_for(lambda: _frames_served(state, version=2, at_least=V2_FRAMES), alive=edge,
                 what=f"{V2_FRAMES} frames of version 2 per model", log=log)
        status = httpx.get(f"http://127.0.0.1:{port}/v1/edges/gate/status",
                           headers={"Authorization": f"Bearer {token}"}).json()
    finally:
        stop(edge)
        stop(service)
    job = status["jobs"][0]
    # The service judged the drift from the samples it labelled, and re-searched on them: no scenario named.
    assert (job["scenario"], job["state"], job["version"]) == (f"samples:{study.workload.name}", "published", 2)
    lines = [json.loads(line) for line in (state / "predictions.jsonl").read_text().splitlines()]
    frames = [line for line in lines if "prediction" in line]
    drifted = min(line["t"] for line in frames if line["scenario"] == "night")
    assert datetime.fromisoformat(job["detected_at"].replace("Z", "+00:00")).timestamp() > drifted
    assert all(line["scenario"] == "night" for line in frames if line["version"] == 2)
    def accuracy(model: str, version: int) -> float:
        chosen = [l for l in frames if l["model"] == model and l["scenario"] == "night" and l["version"] == version]
        return sum(l["prediction"] == l["truth"] for l in chosen) / len(chosen)
    before = {model: accuracy(model, 1) for model in ("a", "b", "c")}
    after = {model: accuracy(model, 2) for model in ("a", "b", "c")}
    # The model the night hurts most is repaired, and the models do better on average. A model the
    # night barely touches need not improve: the re-search only has to bring every model back to its
    # target, and such a model's two accuracies differ by sampling noise (b: 0.82 on 34 frames, 0.79 on 62).
    hurt = min(before, key=before.__getitem__)
    assert after[hurt] > before[hurt], (hurt, before, after)
    assert sum(after.values()) > sum(before.values()), (before, after)
    # The switch copied exactly the tensors whose bytes changed.
    old, new = (ServingVersion.prepare(version_info(n, state / "versions" / str(n)), state / "versions" / str(n),
                                       gpu_memory="1GiB", device="simulated") for n in (1, 2))
    changed = sum(size for size, digest in zip(new.runtime.layout.sizes, new.digests) if digest not in old.digests)
    assert final["last_switch_bytes"] == changed <= final["deployment_bytes"]  # type: ignore[index]


def test_an_edge_runs_a_detector_and_its_prediction_is_the_number_of_objects_it_found(tmp_path: Path) -> None:
    """A video study's detector (campus: the Faster R-CNN over the road) is served like a classifier: the
    edge logs and samples how many objects it found at a score of at least DETECTION_SCORE."""
    from searchmerge.config.workload import ModelSpec, Workload
    from searchmerge.service.edge.serving import DETECTION_SCORE

    specs = [ModelSpec("people", arch="tests.user_data:tiny_detector", input_shape=(3, 32, 32),
                       options={"task": "detection"}),
             ModelSpec("kind", arch="tests.user_data:tiny_classifier", kwargs={"num_classes": 3},
                       input_shape=(3, 32, 32), options={"task": "classification"})]
    workload = Workload(specs, name="boxes")
    torch.manual_seed(0)
    models = {spec.name: spec.build().eval() for spec in specs}
    folder = export_deployment(tmp_path / "v1", workload, models)
    version = ServingVersion.prepare(version_info(1, folder), folder, gpu_memory="1GiB", device="simulated")
    frame = torch.rand(3, 32, 32)
    with torch.inference_mode():
        found = models["people"]([frame])[0]
        expected_class = int(models["kind"](frame[None]).argmax(dim=1)[0])
    assert version.predict("people", frame) == int((found["scores"] >= DETECTION_SCORE).sum())
    assert version.predict("kind", frame) == expected_class
