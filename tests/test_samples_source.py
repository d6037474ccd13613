"""``format: samples``: what the edges sent (or a folder of labelled frames), split by time, with replay."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from searchmerge.config.study import StudyFile, open_study_file
from searchmerge.core.errors import SearchmergeError
from searchmerge.data.sources.samples import held_out_clause, is_held_out
from searchmerge.search.scenarios import drifted_data, scenario_data
from searchmerge.service.cloud.db import open_engine, samples
from searchmerge.service.cloud.labelling import Labeller
from searchmerge.service.cloud.samples import store_samples
from searchmerge.service.protocol import DigitsSource, Sample, SampleBatch
from tests.conftest import TINY_STUDY
from tests.edge_cloud_support import digits_frame


@pytest.fixture()
def study(tmp_path: Path) -> StudyFile:
    (tmp_path / "tiny.yaml").write_text(TINY_STUDY)
    return open_study_file(tmp_path / "tiny.yaml", storage=f"sqlite:///{tmp_path / 'tiny.db'}")


def test_the_samples_of_a_deployment_are_split_by_time_with_original_frames_replayed(study: StudyFile) -> None:
    labeller = Labeller(study)
    night = labeller.footage.data("night")["a"].test
    batch = SampleBatch(samples=[Sample(model="a", frame=digits_frame(night[i][0]),
                                        source=DigitsSource(kind="digits", scenario="night", index=i))
                                 for i in range(40)])
    store_samples(open_engine(study.storage), study.workload.name, "gate", batch, labeller)
    data = drifted_data(study, f"samples:{study.workload.name}")
    a = data["a"]
    kept = [i for i in range(40) if not is_held_out(i + 1)]  # row ids count from 1; the gate's are left out
    labels = [int(night[i][1]) for i in kept]
    n_train, n_val = round(0.6 * len(kept)), round(0.8 * len(kept)) - round(0.6 * len(kept))
    assert list(a.class_labels("val")) == labels[n_train:n_train + n_val]  # later frames judge: split by time
    assert list(a.class_labels("test")) == labels[n_train + n_val:]
    assert len(a.train) == 2 * n_train  # REPLAY_SHARE 0.5: as many original frames as samples
    original = scenario_data(study.workload, study.settings, None)["a"]
    assert list(a.class_labels("train")[:n_train]) == labels[:n_train]
    frame, label = a.val[0]
    assert np.allclose(frame.numpy(), night[kept[n_train]][0].numpy(), atol=1.01 / 127.5)  # 8-bit PNG round trip
    assert label == labels[n_train] and a.num_classes == original.num_classes
    assert data["b"] is not None and data["b"].fingerprint == scenario_data(study.workload, study.settings,
                                                                           None)["b"].fingerprint  # not sampled
    assert "samples of model 'a'" in a.description


def test_a_folder_of_labelled_frames_is_read_the_same_way(study: StudyFile, tmp_path: Path) -> None:
    for index in range(20):
        label = index % 3
        folder = tmp_path / "frames" / "a" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((40, 40), 10 * index, dtype=np.uint8)).save(folder / f"{index:04d}.png")
    a = drifted_data(study, f"samples:{tmp_path / 'frames'}")["a"]
    assert list(a.class_labels("test")) == [index % 3 for index in range(16, 20)]
    frame, _ = a.test[0]
    assert tuple(frame.shape) == (1, 16, 16) and np.allclose(frame.numpy(), 160 / 127.5 - 1, atol=1e-5)
    with pytest.raises(SearchmergeError, match="name the deployment"):
        drifted_data(study, "samples:")


def test_samples_and_replayed_frames_batch_together(study: StudyFile) -> None:
    from searchmerge.data.loading import in_order
    from searchmerge.data.tasks import get_kind

    labeller = Labeller(study)
    test = labeller.footage.data(None)["a"].test
    store_samples(open_engine(study.storage), study.workload.name, "gate", SampleBatch(samples=[
        Sample(model="a", frame=digits_frame(test[i][0]), source=DigitsSource(kind="digits", index=i))
        for i in range(12)]), labeller)
    a = drifted_data(study, f"samples:{study.workload.name}")["a"]
    images, labels = next(in_order(a.train, get_kind("classification"), len(a.train)))
    assert images.shape[0] == labels.shape[0] == len(a.train) > 5  # samples first, then the replayed frames


def test_every_model_of_an_edge_that_uploads_them_in_turn_has_samples_held_out(study: StudyFile) -> None:
    """An edge sends one sample of each of its models in turn, so a model's row ids step by the number of
    models. Held out by ``id % 4`` (the old rule), an edge of four models had all of one model's samples held
    out and none of the others' (bench_edge_cloud); the hash gives every model about a quarter."""
    for models in range(1, 9):
        for first in range(1, models + 1):
            ids = range(first, first + 400 * models, models)
            share = sum(map(is_held_out, ids)) / len(ids)
            assert 0.2 <= share <= 0.3, (models, first, share)
    # The database applies the same rule (SQLite here; PostgreSQL below).
    engine = open_engine(study.storage)
    labeller = Labeller(study)
    night = labeller.footage.data("night")
    batch = SampleBatch(samples=[Sample(model=model, frame=digits_frame(night[model].test[i][0]),
                                        source=DigitsSource(kind="digits", scenario="night", index=i))
                                 for i in range(40) for model in ("a", "b", "c")])
    store_samples(engine, study.workload.name, "gate", batch, labeller)
    with engine.connect() as conn:
        ids = conn.execute(sa.select(samples.c.id)).scalars().all()
        held = set(conn.execute(sa.select(samples.c.id).where(held_out_clause(samples.c.id))).scalars())
    assert held == {i for i in ids if is_held_out(i)} and 0.2 * len(ids) <= len(held) <= 0.3 * len(ids)


def test_postgresql_holds_out_the_same_samples() -> None:
    """The rule in SQL on PostgreSQL (64-bit arithmetic on an int4 id) agrees with Python, up to the largest id."""
    engine = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test")
    metadata = sa.MetaData()
    table = sa.Table(f"held_out_check_{uuid.uuid4().hex[:12]}", metadata, sa.Column("id", sa.Integer, primary_key=True))
    ids = [*range(1, 1001), 2**31 - 1]
    metadata.create_all(engine)
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(table), [{"id": i} for i in ids])
            held = set(conn.execute(sa.select(table.c.id).where(held_out_clause(table.c.id))).scalars())
    finally:
        metadata.drop_all(engine)
        engine.dispose()
    assert held == {i for i in ids if is_held_out(i)} and 200 <= len(held) <= 300
