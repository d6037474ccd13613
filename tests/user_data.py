"""Tiny user data and models made by the tests themselves: image folders, YOLO and COCO sets,
a dataset factory, a tiny torchvision-convention detector, and their trained weights.

Everything is drawn from a seed, a few dozen 32x32 images per split, so a whole user-style
study prepares, evaluates and searches in seconds on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign

SIZE = 32
#: The colour of each class of the classification images.
COLOURS = ((220, 40, 40), (40, 200, 40), (40, 60, 220))


def colour_image(rng: np.random.Generator, label: int) -> np.ndarray:
    """A 32x32 image whose colour tells the class, with noise."""
    base = np.array(COLOURS[label], dtype=np.float64)
    pixels = base + rng.normal(0, 30, size=(SIZE, SIZE, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def square_image(rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A dark 32x32 image with one bright square, and the square's box (x1, y1, x2, y2)."""
    pixels = rng.integers(0, 40, size=(SIZE, SIZE, 3)).astype(np.uint8)
    side = int(rng.integers(10, 18))
    x, y = (int(v) for v in rng.integers(0, SIZE - side, size=2))
    pixels[y : y + side, x : x + side] = 230
    return pixels, (x, y, x + side, y + side)


def write_image_folder(root: Path, *, classes: int = 3, per_class: int = 8, seed: int = 0,
                       splits: tuple[str, ...] = ("train", "val", "test")) -> Path:
    """``root/{split}/class{k}/NN.png``, one colour per class."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for label in range(classes):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                Image.fromarray(colour_image(rng, label)).save(folder / f"{index:02d}.png")
    return root


def write_yolo(root: Path, *, per_split: int = 16, seed: int = 0) -> Path:
    """``root/{split}/images/NN.png`` and ``labels/NN.txt``, one square (class 0) per image."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val", "test"):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "labels").mkdir(parents=True, exist_ok=True)
        for index in range(per_split):
            pixels, (x1, y1, x2, y2) = square_image(rng)
            Image.fromarray(pixels).save(root / split / "images" / f"{index:02d}.png")
            xc, yc, w, h = (x1 + x2) / 2 / SIZE, (y1 + y2) / 2 / SIZE, (x2 - x1) / SIZE, (y2 - y1) / SIZE
            (root / split / "labels" / f"{index:02d}.txt").write_text(f"0 {xc:.6f} {yc:.6f} {w:.6f} {h:.6f}\n")
    return root


def write_coco(root: Path, *, per_split: int = 8, seed: int = 0) -> Path:
    """``root/{split}.json`` and ``root/{split}/NN.png``, one square (category 1) per image."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        (root / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index in range(per_split):
            pixels, (x1, y1, x2, y2) = square_image(rng)
            Image.fromarray(pixels).save(root / split / f"{index:02d}.png")
            images.append({"id": index + 1, "file_name": f"{index:02d}.png", "width": SIZE, "height": SIZE})
            annotations.append({"id": index + 1, "image_id": index + 1, "category_id": 1, "iscrowd": 0,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
        document = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "square"}]}
        (root / f"{split}.json").write_text(json.dumps(document))
    return root


class ColourDataset(Dataset[tuple[torch.Tensor, int]]):
    """In-memory colour images (a dataset factory's), with ``targets`` as torchvision's datasets have."""

    def __init__(self, count: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.targets = [int(v) for v in rng.integers(0, len(COLOURS), size=count)]
        self.images = [torch.from_numpy(colour_image(rng, t)).permute(2, 0, 1).float() / 255 for t in self.targets]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], self.targets[index]


def colour_splits(count: int = 24) -> dict[str, Dataset]:
    """A dataset factory: ``format: python, factory: tests.user_data:colour_splits``."""
    return {"train": ColourDataset(count, 1), "val": ColourDataset(count // 2, 2), "test": ColourDataset(count // 2, 3)}


def not_splits() -> list[int]:
    """A dataset factory that returns something else than the documented mapping."""
    return [1, 2, 3]


class TinyBackbone(nn.Module):
    """Three convolutions; the first norm frozen (as in torchvision's pretrained backbones), the others batch norms."""

    def __init__(self, frozen_norm: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1: nn.Module = FrozenBatchNorm2d(8) if frozen_norm else nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(16)
        self.out_channels = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return torch.relu(self.bn3(self.conv3(x)))


def tiny_detector(num_classes: int = 2, frozen_norm: bool = True) -> FasterRCNN:
    """A torchvision Faster R-CNN on a tiny backbone, for 32x32 images."""
    return FasterRCNN(
        TinyBackbone(frozen_norm), num_classes=None, min_size=SIZE, max_size=SIZE,
        rpn_anchor_generator=AnchorGenerator(sizes=((8, 16, 24),), aspect_ratios=((1.0,),)),
        box_roi_pool=MultiScaleRoIAlign(["0"], 4, 2), box_head=TwoMLPHead(16 * 4 * 4, 32),
        box_predictor=FastRCNNPredictor(32, num_classes), rpn_batch_size_per_image=32, box_batch_size_per_image=32,
        rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=20, rpn_pre_nms_top_n_test=50,
        rpn_post_nms_top_n_test=10, box_detections_per_img=5,
    )


class TinyClassifier(nn.Module):
    """The detector's backbone with a classification head: its layers can share with the detector's."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.backbone = TinyBackbone(frozen_norm=False)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(x).mean(dim=(2, 3)))


def tiny_classifier(num_classes: int = 3) -> TinyClassifier:
    return TinyClassifier(num_classes)


def train_briefly(model: nn.Module, kind: str, samples: list, *, steps: int, lr: float = 3e-3, seed: int = 0) -> nn.Module:
    """Train ``model`` on ``(input, target)`` samples with the task kind's loss: the user's own training."""
    from searchmerge.data.tasks import get_kind

    adapter = get_kind(kind)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, len(samples), (8,), generator=generator).tolist()
        batch = adapter.collate([samples[i] for i in index])
        optimizer.zero_grad()
        adapter.loss(model, batch).backward()
        optimizer.step()
    return model.eval()
