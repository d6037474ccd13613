"""An edge process and a service process with a TCP proxy between them (tests/tcp_proxy.py): when the
link drops, the edge serves on and /healthz says it is stale; over a slow link, and when the link
is back, it recovers and its samples reach the service."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from searchmerge.service.cloud.db import open_engine, samples
from searchmerge.service.cloud.tokens import create_edge_token
from tests.edge_cloud_support import (
    free_port,
    health,
    searched_copy,
    searchmerge_process,
    start_service,
    stop,
    wait_for,
)
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


@pytest.fixture()
def proxy(prepared_tiny: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Iterator[tuple]:
    """A service process (unsigned versions), a proxy in front of it, and an edge token."""
    study = searched_copy(prepared_tiny, tmp_path_factory, "proxy")
    service = start_service(study, free_port(), tmp_path / "service.log")
    token = create_edge_token(study.storage, study.workload.name, "gate")
    port = int(service.args[service.args.index("--port") + 1])  # type: ignore[union-attr]
    between = TcpProxy(port)
    yield study, between, token
    between.close()
    stop(service)


def frames(document: dict[str, object]) -> int:
    return sum(int(s["processed"]) for s in document["streams"].values())  # type: ignore[attr-defined]


def test_an_edge_behind_a_failing_link_serves_on_tells_and_recovers(proxy: tuple, tmp_path: Path) -> None:
    study, between, token = proxy
    (tmp_path / "token").write_text(token)
    metrics, log = free_port(), tmp_path / "edge.log"
    edge = searchmerge_process(["edge", "--server", f"http://127.0.0.1:{between.port}", "--token-file",
                                str(tmp_path / "token"), "--allow-unsigned", "--state-dir", str(tmp_path / "edge"),
                                "--fps", "10", "--sample-every", "2", "--poll", "0.3", "--stale-after", "3",
                                "--metrics-port", str(metrics)], log, cwd=tmp_path)
    engine = open_engine(study.storage)

    def stored() -> int:
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(samples)).scalar() or 0)

    try:
        wait_for(lambda: (h := health(metrics)) and h["status"] == "ok" and h["version"] == 1, alive=edge,
                 what="version 1 served", log=log)
        wait_for(lambda: stored() > 0, alive=edge, what="samples to reach the service", log=log)

        between.set("drop")
        down = wait_for(lambda: (h := health(metrics)) and h["status"] == "stale" and h, alive=edge,
                        what="healthz to say stale", log=log)
        assert down["server"]["reachable"] is False and down["sync"]["state"] == "retrying"  # type: ignore[index]
        wait_for(lambda: frames(health(metrics) or down) > frames(down) + 20, alive=edge,  # type: ignore[arg-type]
                 what="frames served while cut off", log=log)
        assert (health(metrics) or {}).get("version") == 1
        before = stored()

        between.set("delay", 0.2)  # a slow link: polls take longer, but succeed
        wait_for(lambda: (h := health(metrics)) and h["status"] == "ok" and h["server"]["reachable"]
                 and h["sync"]["failures_in_a_row"] == 0, alive=edge, what="a whole round over a slow link", log=log)
        wait_for(lambda: stored() > before, alive=edge, what="the kept samples to arrive", log=log)
        between.set("pass")
        wait_for(lambda: (h := health(metrics)) and h["status"] == "ok" and h["sync"]["last_poll_age_s"] < 3,
                 alive=edge, what="polls on the restored link", log=log)
    finally:
        stop(edge)
    assert "unreachable" in log.read_text()  # the edge's log says what happened
