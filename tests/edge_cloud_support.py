"""Shared by the edge and service tests: a searched tiny study, service processes, waiting on conditions."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from searchmerge.config.study import StudyFile, open_study_file
from searchmerge.data.sources.base import pixels_of
from searchmerge.data.sources.digits import NORM_MEAN, NORM_STD
from searchmerge.search.merge_search import open_search
from searchmerge.service.protocol import Frame, encode_frame
from tests.conftest import TINY_STUDY, copy_prepared

#: The tiny study at a target its drifted re-search reaches in one short retraining
#: (at 0.9, night costs more trials than a test should take), with the budget a re-search on
#: the edges' samples needs (half its training frames are replayed day frames; 2 epochs left
#: the edge loop's re-search at ratio 0.79 on the night samples).
EDGE_STUDY = TINY_STUDY.replace("target: 0.9", "target: 0.8").replace(
    "evaluator: {", "drift_evaluator: {max_epochs: 6}\nevaluator: {", 1)
PARENT = "tiny-digits-greedy"

_searched: dict[Path, Path] = {}


def searched_copy(prepared_tiny: Path, tmp_path_factory: pytest.TempPathFactory, name: str) -> StudyFile:
    """A copy of the tiny study with a finished parent search (version 1's plan), made once per session."""
    if prepared_tiny not in _searched:
        base = tmp_path_factory.mktemp("searched-edge")
        path, storage = copy_prepared(prepared_tiny, base, EDGE_STUDY)
        open_search(open_study_file(path, storage=storage), strategy="greedy").run(4)
        _searched[prepared_tiny] = base
    path, storage = copy_prepared(_searched[prepared_tiny], tmp_path_factory.mktemp(name))
    return open_study_file(path, storage=storage)


def digits_frame(image: object) -> Frame:
    """A digits frame (a normalised C x H x W tensor or array) as an edge sends it: 8-bit PNG."""
    values = image.numpy() if hasattr(image, "numpy") else image  # type: ignore[union-attr]
    return encode_frame(pixels_of(values, (NORM_MEAN, NORM_STD)))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(condition: Callable[[], object], *, alive: subprocess.Popen[bytes] | None = None,
             what: str = "the condition", log: Path | None = None) -> object:
    """Poll ``condition`` until it is true (no time limit: pytest-timeout guards a hang).

    Fails at once when the process ``alive`` has exited, showing its log.
    """
    while True:
        value = condition()
        if value:
            return value
        if alive is not None and alive.poll() is not None:
            shown = log.read_text()[-3000:] if log is not None and log.exists() else ""
            pytest.fail(f"the process exited ({alive.returncode}) while waiting for {what}:\n{shown}")
        time.sleep(0.2)


def searchmerge_process(args: list[str], log: Path, *, cwd: Path) -> subprocess.Popen[bytes]:
    """``searchmerge ARGS`` as a process of its own, its output in ``log``."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "searchmerge.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                                cwd=cwd, env=environment)


def python_process(code: str, log: Path, *, cwd: Path) -> subprocess.Popen[bytes]:
    """A Python process running ``code`` (fault injection around the library), its output in ``log``."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1",
                   "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                env=environment)


def start_service(study: StudyFile, port: int, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    """``searchmerge serve`` on ``port``, returned once it answers."""
    process = searchmerge_process(["serve", str(study.path), "--storage", study.storage, "--port", str(port),
                                   "--heartbeat", "1", *extra], log, cwd=study.path.parent)
    wait_for(lambda: answers(f"http://127.0.0.1:{port}/healthz"), alive=process, what="the service", log=log)
    return process


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def health(port: int) -> dict[str, object] | None:
    try:
        return dict(httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json())
    except (httpx.TransportError, ValueError):
        return None


def kill(process: subprocess.Popen[bytes]) -> None:
    """kill -9, and reap it."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()


def stop(process: subprocess.Popen[bytes]) -> None:
    """Ask a process to stop (SIGTERM), then make sure it has."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            kill(process)


