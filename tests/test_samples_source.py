"""``format: samples``: what the edges sent (or a folder of labelled frames), split by time, with replay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from searchmerge.config.study import StudyFile, open_study_file
from searchmerge.core.errors import SearchmergeError
from searchmerge.data.sources.samples import HOLDOUT_EVERY
from searchmerge.search.scenarios import drifted_data, scenario_data
from searchmerge.service.cloud.db import open_engine
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
    kept = [i for i in range(40) if (i + 1) % HOLDOUT_EVERY != 0]  # row ids count from 1; the gate's are left out
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
