"""Task kinds: classification and detection batches, losses and metrics, the model checks, and a
detector and a classifier that share a backbone retrained jointly by the evaluator."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from searchmerge.analysis import analyze
from searchmerge.config.settings import EvaluatorSettings, StudySettings
from searchmerge.config.workload import ModelSpec, Workload
from searchmerge.core.errors import SearchmergeError
from searchmerge.core.space import SharingPlan
from searchmerge.data.sources import get_source
from searchmerge.data.sources.base import SourceContext
from searchmerge.data.tasks import get_kind, kind_names
from searchmerge.training.evaluate import Evaluator
from searchmerge.training.prepare import Baseline, PreparedWorkload
from tests import user_data


class Oracle(nn.Module):
    """A 'detector' that answers each image with the boxes it is given (shifted by ``shift`` pixels)."""

    def __init__(self, answers: list[dict[str, torch.Tensor]], shift: float = 0.0) -> None:
        super().__init__()
        self.answers, self.shift, self.weight = answers, shift, nn.Parameter(torch.zeros(1))

    def forward(self, images, targets=None):  # type: ignore[no-untyped-def]
        if self.training:
            return {"a": self.weight.sum() + 1.0, "b": self.weight.sum() + 2.0}
        out = self.answers[: len(images)]
        return [{"boxes": t["boxes"] + self.shift, "scores": torch.ones(len(t["labels"])), "labels": t["labels"]}
                for t in out]


class _Stacking(nn.Module):
    """A classifier that stacks a list of images itself: it gives class scores, not detections."""

    def forward(self, images):  # type: ignore[no-untyped-def]
        return torch.stack(list(images)).mean(dim=(1, 2, 3))


def test_kinds_are_registered_by_name() -> None:
    assert set(kind_names()) >= {"classification", "detection"}
    with pytest.raises(SearchmergeError, match=r"unknown task kind 'detections' \(did you mean 'detection'\?\)"):
        get_kind("detections")


def test_classification_batches_loss_and_accuracy() -> None:
    kind = get_kind("classification")
    samples = [(torch.full((1, 2, 2), float(i)), i % 2) for i in range(4)]
    images, labels = kind.collate(samples)
    assert images.shape == (4, 1, 2, 2) and labels.tolist() == [0, 1, 0, 1]
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    assert torch.allclose(kind.loss(model, (images, labels)), F.cross_entropy(model(images), labels))
    always_one = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        always_one[1].weight.zero_()
        always_one[1].bias.copy_(torch.tensor([0.0, 1.0]))
    assert kind.metric(always_one, [(images, labels)], torch.device("cpu")) == 0.5


def test_detection_metric_is_map_at_half_iou() -> None:
    kind = get_kind("detection")
    targets = [{"boxes": torch.tensor([[2.0, 2.0, 12.0, 12.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 5.0, 20.0, 25.0]]), "labels": torch.tensor([2])}]
    batch = kind.collate([(torch.zeros(3, 32, 32), t) for t in targets])
    assert len(batch[0]) == 2 and batch[1][1]["labels"].tolist() == [2]
    assert kind.metric(Oracle(targets).eval(), [batch], torch.device("cpu")) == pytest.approx(1.0)
    assert kind.metric(Oracle(targets, shift=1.0).eval(), [batch], torch.device("cpu")) == pytest.approx(1.0)  # IoU > .5
    assert kind.metric(Oracle(targets, shift=2.0).eval(), [batch], torch.device("cpu")) == pytest.approx(0.5)  # one < .5
    assert kind.metric(Oracle(targets, shift=6.0).eval(), [batch], torch.device("cpu")) == 0.0  # IoU < .5
    assert kind.loss(Oracle(targets).train(), batch).item() == 3.0  # the loss dict, summed


def test_model_checks_name_the_mismatch() -> None:
    classification, detection = get_kind("classification"), get_kind("detection")
    images = torch.zeros(2, 3, 32, 32)
    batch = (images, torch.tensor([0, 1]))
    with pytest.raises(SearchmergeError, match=r"model 'm' gives \(3,\) outputs per image but my data has 2 classes"):
        classification.check_model("m", user_data.tiny_classifier(3), batch, 2, "my data")
    with pytest.raises(SearchmergeError, match="gives list outputs .a detection model.. but its task is classification"):
        classification.check_model("m", user_data.tiny_detector(), batch, 2, "my data")
    targets = [{"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "labels": torch.tensor([1])}] * 2
    with pytest.raises(SearchmergeError, match=r"model 'm' cannot take a list of images of shape \(3, 32, 32\)"):
        detection.check_model("m", user_data.tiny_classifier(3), (list(images), targets), 2, "my data")
    with pytest.raises(SearchmergeError, match=r"gives a torch.float32 tensor of shape \(2,\) .a classifier.."):
        detection.check_model("m", _Stacking(), (list(images), targets), 2, "my data")
    detector = user_data.tiny_detector(num_classes=2)
    before = {k: v.clone() for k, v in detector.state_dict().items()}
    detection.check_model("m", detector, (list(images), targets), 2, "my data")
    assert all(torch.equal(v, before[k]) for k, v in detector.state_dict().items())  # statistics untouched
    wide = [{"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "labels": torch.tensor([3])}] * 2
    with pytest.raises(SearchmergeError, match="cannot compute its training loss on my data"):
        detection.check_model("m", detector, (list(images), wide), 4, "my data")
    for bad, message in [((torch.zeros(3, 8, 8), {"boxes": torch.tensor([[0.0, 0.0, 9.0, 4.0]]),
                                                  "labels": torch.tensor([1])}), "is not inside the 8x8 image"),
                         ((torch.zeros(3, 8, 8), {"boxes": torch.zeros(1, 4)}), "with 'boxes' and 'labels'"),
                         (torch.zeros(3, 8, 8), "must be .image tensor, target dict.")]:
        with pytest.raises(SearchmergeError, match=message):
            detection.check_sample("sample", bad, None)


def test_a_detector_and_a_classifier_sharing_a_backbone_retrain_jointly(tmp_path: Path) -> None:
    user_data.write_yolo(tmp_path / "street", per_split=8)
    context = SourceContext(folder=tmp_path)
    data = {
        "street": get_source("yolo").open({"root": "street"}, context, task="detection"),
        "mine": get_source("python").open({"factory": "tests.user_data:colour_splits", "kwargs": {"count": 16}},
                                          context, task="classification"),
    }
    workload = Workload((ModelSpec("street", "tests.user_data:tiny_detector"),
                         ModelSpec("mine", "tests.user_data:tiny_classifier")))
    torch.manual_seed(0)
    models = {"street": user_data.tiny_detector(), "mine": user_data.tiny_classifier()}
    kinds = {"street": get_kind("detection"), "mine": get_kind("classification")}
    prepared = PreparedWorkload(workload, StudySettings(), data, models,
                                {n: Baseline(1.0, 1.0, "none") for n in models}, "wl", "data", kinds, "data")
    analysis = analyze(workload, built=models)
    shared = [g.name for g in analysis.groups if set(g.models) == {"street", "mine"}]
    assert {"backbone.conv1", "backbone.conv2", "backbone.conv3"} <= set(shared)
    settings = EvaluatorSettings(fraction=1.0, max_epochs=1, batch_size=4, early_exit=False, lr=0.01)
    evaluation, merged = Evaluator(prepared, settings, 0.5, analysis=analysis).evaluate(SharingPlan.of(shared))
    assert evaluation.cost.steps == 4 and evaluation.cost.samples == 4 * 4 * 2
    conv = merged["street"].backbone.conv2.weight
    assert conv is merged["mine"].backbone.conv2.weight  # one tensor, trained by both losses
    assert not torch.equal(conv, models["street"].backbone.conv2.weight)
    frozen = merged["street"].backbone.bn1
    assert isinstance(frozen, FrozenBatchNorm2d)
    assert torch.equal(frozen.running_mean, models["street"].backbone.bn1.running_mean)  # frozen stays frozen
    assert not torch.equal(merged["street"].backbone.bn2.running_mean, models["street"].backbone.bn2.running_mean)
    assert all(0.0 <= m.ratio for m in evaluation.models)
