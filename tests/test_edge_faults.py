"""The edge never dies silently: whatever a round of its sync thread meets (an HTML page
answering a poll, a body that does not decode, a full disk, a bug, thousands of failures in
a row) is logged and retried, /healthz tells the thread's state and how old the last poll
is, refused versions are not downloaded again, old versions are pruned and the predictions
file rotates. Against a stand-in service on loopback (tests/fake_edge_service.py)."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from searchmerge.service.edge.agent import retry_delay
from searchmerge.service.edge.local import LocalVersions
from searchmerge.service.edge.predictions import PredictionLog
from tests.edge_cloud_support import wait_for
from tests.fake_edge_service import Agent, FakeServer, FakeService, make_version


@pytest.fixture()
def fake(tmp_path: Path) -> Iterator[FakeServer]:
    state = FakeService()
    state.publish(1, make_version(tmp_path / "v1", seed=1))
    server = FakeServer(state)
    yield server
    server.close()


def test_retry_delay_is_capped_jittered_and_never_overflows() -> None:
    assert retry_delay(1, base=0.5, cap=4) == 0.5 and retry_delay(3, base=0.5, cap=4) == 2.0
    assert retry_delay(1025, base=5, cap=30) == 30  # 2 ** 1024 overflowed a float here before
    assert retry_delay(10**9, base=5, cap=30) == 30
    delays = {retry_delay(50, base=5, cap=30, jitter=0.2) for _ in range(50)}
    assert all(24 <= d <= 30 for d in delays) and len(delays) > 1


def test_the_sync_thread_survives_every_kind_of_failure_and_says_so(fake: FakeServer, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    state = fake.state
    edge = Agent(fake.url, tmp_path / "edge")
    try:
        assert edge.agent.active.info.version == 1
        wait_for(lambda: edge.agent.sync_state == "ok", what="a first good round")

        def fails_with(answer: tuple[int, dict[str, str], bytes] | None, text: str) -> None:
            errors = edge.agent.metrics.sync_errors._value.get()
            with state.lock:
                state.version_answer = answer
            wait_for(lambda: edge.agent.metrics.sync_errors._value.get() >= errors + 2
                     and text in (edge.agent.last_error or ""), what=f"the sync thread to report {text!r}")
            assert edge.agent._sync.is_alive()
            code, document = edge.healthz()
            assert document["sync"]["state"] == "retrying" and text in document["sync"]["last_error"]
            assert code == 200  # still serving, and the last good poll is recent

        # A proxy's login page answering 200, and a body that does not decode.
        fails_with((200, {"Content-Type": "text/html"}, b"<html>please log in</html>"), "is not a version document")
        fails_with((200, {"Content-Encoding": "gzip"}, b"this is not gzip"), "cannot be read")
        # Thousands of failures in a row: the backoff stays capped (it overflowed at 1,025).
        edge.agent.sync_failures = 5000
        fails_with((200, {"Content-Type": "text/html"}, b"<html>again</html>"), "is not a version document")
        assert edge.agent.sync_failures > 5000

        # A bug in one round (not an error the code expects): logged with its type, retried.
        original = edge.agent._upload_samples
        calls = iter([RuntimeError("a bug")])

        def buggy() -> None:
            error = next(calls, None)
            if error is not None:
                raise error
            original()

        monkeypatch.setattr(edge.agent, "_upload_samples", buggy)
        with state.lock:
            state.version_answer = None
        wait_for(lambda: edge.said("RuntimeError: a bug"), what="the bug to be logged")

        # A full disk while a new version downloads: not the version's fault, so not a refusal.
        real_install = LocalVersions.install

        def full_disk(self: LocalVersions, client: object, info: object) -> Path:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(LocalVersions, "install", full_disk)
        state.publish(2, make_version(tmp_path / "v2", seed=2))
        wait_for(lambda: "No space left on device" in (edge.agent.last_error or ""), what="the full disk")
        assert edge.agent.refused == 0 and edge.agent.active.info.version == 1
        monkeypatch.setattr(LocalVersions, "install", real_install)  # room again: the version is taken
        wait_for(lambda: edge.agent.active.info.version == 2, what="version 2 once the disk has room")
        wait_for(lambda: edge.agent.sync_state == "ok", what="a good round again")
        assert edge.healthz()[1]["sync"]["failures_in_a_row"] == 0
        assert edge.agent._sync.is_alive()
    finally:
        edge.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_healthz_is_503_when_the_last_poll_is_stale_or_the_sync_thread_is_gone(fake: FakeServer,
                                                                              tmp_path: Path) -> None:
    edge = Agent(fake.url, tmp_path / "edge", stale_after=1.0)
    try:
        wait_for(lambda: edge.healthz()[1]["sync"]["polled"], what="a first poll")
        with fake.state.lock:
            fake.state.version_answer = (503, {}, b"down for maintenance")
        wait_for(lambda: edge.healthz()[0] == 503, what="healthz to turn 503")
        code, document = edge.healthz()
        assert document["status"] == "stale" and document["sync"]["last_poll_age_s"] > 1.0
        assert document["version"] == 1  # the old version serves on meanwhile
        with fake.state.lock:
            fake.state.version_answer = None
        wait_for(lambda: edge.healthz()[0] == 200, what="healthz to recover")
        # A sync thread that is gone (whatever ended it) is reported, not hidden.
        edge.agent._sync_round = lambda: (_ for _ in ()).throw(SystemExit())  # type: ignore[method-assign]
        wait_for(lambda: not edge.agent._sync.is_alive(), what="the sync thread to end")
        code, document = edge.healthz()
        assert code == 503 and document["status"] == "sync-stopped" and document["sync"]["state"] == "dead"
    finally:
        edge.close()


def test_a_refused_version_is_remembered_by_its_digests_and_not_downloaded_again(fake: FakeServer,
                                                                                 tmp_path: Path) -> None:
    state = fake.state
    edge = Agent(fake.url, tmp_path / "edge")
    try:
        # Version 2's bytes verify, but its weights do not fit the architecture its manifest names.
        folder = make_version(tmp_path / "v2", seed=2)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["workload"]["models"][0]["kwargs"]["widths"] = [8, 8, 8]
        (folder / "manifest.json").write_text(json.dumps(manifest))
        state.publish(2, folder)
        wait_for(lambda: edge.agent.refused == 1, what="version 2 to be refused")
        polls = state.polls
        wait_for(lambda: state.polls >= polls + 8, what="more polls")
        assert state.downloads[(2, "manifest.json")] == 1 and edge.agent.refused == 1
        assert edge.said("version 2 refused, version 1 keeps serving") and edge.said("it is not downloaded again")
        # A download that does not match its digests may be damage on the way: tried again, ever less often.
        state.publish(3, make_version(tmp_path / "v3", seed=3))
        good = state.versions[3].files["weights.safetensors"]
        state.tampered[(3, "weights.safetensors")] = good[:-8] + bytes(8)
        wait_for(lambda: edge.agent.refused >= 4, what="version 3 to be refused three times")
        waits = [float(line.rsplit("tried again in ", 1)[1].split()[0]) for line in edge.lines
                 if "version 3 refused" in line]
        assert waits[:3] == sorted(waits[:3]) and waits[2] > waits[0]
        del state.tampered[(3, "weights.safetensors")]
        wait_for(lambda: edge.agent.active.info.version == 3, what="version 3 once its bytes are right")
    finally:
        edge.close()


def test_old_versions_are_pruned_keeping_the_newest(tmp_path: Path) -> None:
    local = LocalVersions(tmp_path / "edge")
    for number in (1, 2, 3, 4, 5):
        (local.path(number)).mkdir()
        os.utime(local.path(number), (1000 + number, 1000 + number))
    os.utime(local.path(2), (2000, 2000))  # used again lately (a rollback to it)
    assert local.installed() == [2, 5, 4, 3, 1]
    assert sorted(local.prune(2, protect={1})) == [3, 4]
    assert sorted(local.installed()) == [1, 2, 5]


def test_an_agent_keeps_only_the_newest_versions_on_disk(fake: FakeServer, tmp_path: Path) -> None:
    state = fake.state
    edge = Agent(fake.url, tmp_path / "edge", keep_versions=1)
    try:
        for number in (2, 3, 4):
            state.publish(number, make_version(tmp_path / f"v{number}", seed=number))
            wait_for(lambda n=number: edge.agent.active.info.version == n, what=f"version {number}")
        # The one serving and the newest (here one and the same) stay; 1 and 2 went with the switches.
        wait_for(lambda: set(edge.agent.local.installed()) <= {3, 4}, what="old versions to be pruned")
        assert edge.said("removed old version(s)")
    finally:
        edge.close()


def test_the_predictions_file_rotates_by_size_and_a_full_disk_does_not_stop_serving(tmp_path: Path) -> None:
    path = tmp_path / "predictions.jsonl"
    errors: list[OSError] = []
    log = PredictionLog(path, max_bytes=300, backups=2, on_error=errors.append)
    for index in range(100):
        log.write({"stream": "gate", "frame": index, "prediction": index % 10})
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["predictions.jsonl", "predictions.jsonl.1", "predictions.jsonl.2"]
    lines = [json.loads(line) for name in reversed(files) for line in (tmp_path / name).read_text().splitlines()]
    assert all((tmp_path / name).stat().st_size <= 300 for name in files)
    assert [line["frame"] for line in lines] == list(range(100 - len(lines), 100))  # the newest, in order
    assert log.rotations > 2 and not errors

    # The folder gone (as a full disk would): counted and told, never raised.
    broken = PredictionLog(tmp_path / "gone" / "p.jsonl", max_bytes=300, backups=1, on_error=errors.append)
    for index in range(5):
        broken.write({"frame": index})
    assert broken.errors == 5 and errors and isinstance(errors[0], OSError)


def test_an_agent_whose_predictions_cannot_be_written_serves_on(fake: FakeServer, tmp_path: Path) -> None:
    edge = Agent(fake.url, tmp_path / "edge", predictions=tmp_path / "missing" / "p.jsonl")
    try:
        before = sum(s.processed for s in edge.agent.streams)
        wait_for(lambda: sum(s.processed for s in edge.agent.streams) > before + 10, what="frames served")
        assert edge.said("cannot write predictions")
        assert edge.agent.metrics.prediction_errors._value.get() > 0
    finally:
        edge.close()
