"""The publish gate (issue 24 item 2): a re-searched version goes out only if it holds on held-out samples."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from searchmerge.config.study import StudyFile
from searchmerge.search.merge_search import load_search
from searchmerge.service.cloud import jobs as jobs_module
from searchmerge.service.cloud.gate import GATE_MIN_SAMPLES, check_held_out
from searchmerge.service.cloud.jobs import request_research, run_job
from searchmerge.service.cloud.samples import HOLDOUT_EVERY, recent_samples
from searchmerge.service.cloud.service import MergingService, ServiceSettings
from searchmerge.service.cloud.versions import current_version
from searchmerge.service.protocol import SampleBatch
from tests.edge_cloud_support import PARENT, searched_copy
from tests.test_service import digits_samples

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


@pytest.fixture
def service(prepared_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> MergingService:
    study = searched_copy(prepared_tiny, tmp_path_factory, "gate")
    service = MergingService(study, ServiceSettings(min_samples=8, window=64, heartbeat_interval=1, research_trials=1))
    service.publish_first()
    return service


def store(service: MergingService, scenario: str | None, count: int = 4 * GATE_MIN_SAMPLES) -> None:
    for model in ("a", "b", "c"):
        service.store_samples("gate", SampleBatch(samples=digits_samples(service.footage, model, scenario, count)))


def test_the_drift_check_never_reads_the_held_out_samples_and_the_gate_reads_only_them(
    service: MergingService,
) -> None:
    store(service, None)
    current = current_version(service.engine, service.deployment)
    assert current is not None
    checked = recent_samples(service.engine, service.deployment, since=current.created_at, window=1000, held_out=False)
    held = recent_samples(service.engine, service.deployment, since=current.created_at, window=1000, held_out=True)
    for model in ("a", "b", "c"):
        assert len(held[model]) == GATE_MIN_SAMPLES and len(checked[model]) == 3 * GATE_MIN_SAMPLES
        assert all(s.id % HOLDOUT_EVERY == 0 for s in held[model])
        assert not {s.id for s in held[model]} & {s.id for s in checked[model]}
    check = service.check()
    assert check is not None and all(m.samples == 3 * GATE_MIN_SAMPLES for m in check.models)
    # The deployed plan on the footage it was made for passes the gate.
    search = load_search(service.study, study_name=PARENT)
    verdict = check_held_out(service.engine, search, search.best(), since=current.created_at)  # type: ignore[arg-type]
    assert verdict.passes and len(verdict.judged) == 3, verdict.describe()


def test_a_version_that_misses_on_held_out_samples_is_not_published_and_the_current_one_is_kept(
    service: MergingService, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    study: StudyFile = service.study
    store(service, "night")  # the undrifted plan misses at night (test_service's stale-version case)
    before = current_version(service.engine, service.deployment)
    assert before is not None
    job, _ = request_research(service.engine, service.deployment, parent_study=PARENT, scenario="night", n_trials=1)
    # A "re-search" whose best plan is the undrifted one: feasible on its own data, wrong for the night.
    monkeypatch.setattr(jobs_module, "research", lambda *_a, **_k: load_search(study, study_name=PARENT))
    with caplog.at_level(logging.WARNING, logger="searchmerge.service"):
        ended = run_job(service.engine, study, job, heartbeat_interval=1)
    assert ended.state == "held-back" and ended.version is None
    assert current_version(service.engine, service.deployment) == before  # kept
    (line,) = [r.getMessage() for r in caplog.records if "not published" in r.getMessage()]
    assert f"version {before.version} kept" in line and "held-out samples" in line and "MISSES" in line
    assert f"on {GATE_MIN_SAMPLES} held-out samples" in line and "95% CI" in line
