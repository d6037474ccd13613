"""Workers that start together prepare the originals once; a killed preparer's lease is taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from searchmerge.storage.lease import LEASE_TABLE, hold_lease
from tests.conftest import TINY_STUDY
from tests.test_search import POSTGRES, REPO, _postgres_available


def test_a_lease_is_held_by_one_holder_at_a_time(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lease.db'}"
    with hold_lease(url, "work"):
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            holder = conn.execute(sa.text(f"SELECT holder FROM {LEASE_TABLE} WHERE name = 'work'")).scalar()
        assert holder and holder.startswith(f"{os.uname().nodename}:{os.getpid()}:")
        # A second worker can only wait while the lease is held (renewal is tested below).
        code = ("from searchmerge.storage.lease import hold_lease\n"
                f"with hold_lease({url!r}, 'work', poll=0.1, say=print): print('held')")
        waiter = subprocess.Popen([sys.executable, "-u", "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert waiter.stdout is not None
        assert "waiting for" in waiter.stdout.readline()  # it tried, found the lease held, and waits
        assert waiter.poll() is None, "the waiter took a lease that is held"
    out, _ = waiter.communicate()
    assert out.strip() == "held"
    with engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT COUNT(*) FROM {LEASE_TABLE}")).scalar() == 0
    engine.dispose()



def _expiry(engine: sa.Engine, name: str) -> datetime:
    with engine.connect() as conn:
        value = conn.execute(sa.text(f"SELECT expires_at FROM {LEASE_TABLE} WHERE name = :name"), {"name": name}).scalar()
    return datetime.fromisoformat(str(value))


def test_a_held_lease_is_renewed_past_its_first_expiry(tmp_path: Path) -> None:
    """The holder pushes its claim's expiry forward while it works, so only a dead holder's claim expires.

    A claim of 0.6 s is renewed every 0.2 s; the test waits (up to a minute, however loaded the
    machine) until the stored expiry moves past the first one. Without renewal it never does.
    """
    url = f"sqlite:///{tmp_path / 'lease.db'}"
    engine = sa.create_engine(url)
    with hold_lease(url, "work", seconds=0.6):
        first = _expiry(engine, "work")
        deadline = time.monotonic() + 60
        while _expiry(engine, "work") == first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _expiry(engine, "work") > first, "the holder never renewed its claim"
    engine.dispose()

def _prepare_command(study: Path, storage: str, blobs: Path, lease_seconds: float) -> list[str]:
    code = (
        "from searchmerge.training.prepare import prepare\n"
        "from searchmerge.config.study import open_study_file\n"
        f"s = open_study_file({str(study)!r}, storage={storage!r}, blob_dir={str(blobs)!r})\n"
        f"prepare(s.workload, s.settings, s.store, progress=lambda line: print(line, flush=True),"
        f" lease_seconds={lease_seconds})\n"
    )
    return [sys.executable, "-c", code]


def test_a_killed_preparer_is_taken_over(tmp_path: Path) -> None:
    study = tmp_path / "tiny.yaml"
    study.write_text(TINY_STUDY)
    storage = f"sqlite:///{tmp_path / 'tiny.db'}"
    command = _prepare_command(study, storage, tmp_path / "blobs", lease_seconds=2)
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    engine = sa.create_engine(storage)
    held = False
    while not held and first.poll() is None:
        try:
            with engine.connect() as conn:
                held = bool(conn.execute(sa.text(f"SELECT COUNT(*) FROM {LEASE_TABLE}")).scalar())
        except sa.exc.OperationalError:
            pass  # the table is not there yet
        time.sleep(0.1)
    assert held, "the first preparer finished before it could be killed"
    os.kill(first.pid, signal.SIGKILL)
    first.wait()

    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.count("fine-tuned") == 3  # it took the dead worker's lease and trained everything
    with engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT COUNT(*) FROM {LEASE_TABLE}")).scalar() == 0
    engine.dispose()


@pytest.mark.skipif(not _postgres_available(), reason="no PostgreSQL server on 127.0.0.1:5432")
def test_workers_starting_together_prepare_once(tmp_path: Path) -> None:
    study = tmp_path / "tiny.yaml"
    study.write_text(TINY_STUDY.replace("name: tiny-digits", f"name: tiny-{uuid.uuid4().hex[:8]}"))
    command = _prepare_command(study, POSTGRES, tmp_path / "blobs", lease_seconds=60)
    workers = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    outputs = [w.communicate() for w in workers]
    assert all(w.returncode == 0 for w in workers), [err[-2000:] for _, err in outputs]
    trained = sorted(out.count("fine-tuned") for out, _ in outputs)
    reused = sorted(out.count("reusing stored original") for out, _ in outputs)
    assert trained == [0, 3] and reused == [0, 3]  # one trained all three, the other reused all three
