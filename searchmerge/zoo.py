"""Small vision models for edge workloads that train in seconds on a CPU.

CIFAR-style ResNets (``6n + 2`` layers) and a VGG-style network, built so that
their convolutions have the same configuration where the architectures agree
(3x3, stride 1, padding 1, no bias): two ResNets of one depth share every layer,
ResNets of different depths share their common prefix, and the VGG net shares its
same-width 3x3 convolutions and its head with them. Usable from study files as
``searchmerge.zoo:small_resnet`` and ``searchmerge.zoo:small_vgg``. ``person_detector`` is a
torchvision Faster R-CNN on the first blocks of a MobileNetV3-Small, small enough to train from
scratch on a CPU, whose backbone layers share with ``mobilenet_v3_small`` classifiers'.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models import mobilenet_v3_small
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from searchmerge.core.errors import SearchmergeError


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _norm(width: int, affine: bool) -> nn.BatchNorm2d:
    """Batch norm; without ``affine`` it only normalises and learns nothing of its own.

    A private affine batch norm lets a model adapt every shared layer's output to
    itself; without it, what two models share constrains them fully.
    """
    return nn.BatchNorm2d(width, affine=affine)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (1x1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int, affine: bool = True) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = _norm(cout, affine)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = _norm(cout, affine)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), _norm(cout, affine))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A CIFAR-style ResNet: a 3x3 stem, three stages of basic blocks, global pooling, a linear head."""

    def __init__(
        self, blocks_per_stage: int, num_classes: int, widths: Sequence[int], in_channels: int, affine: bool = True
    ) -> None:
        super().__init__()
        self.stem = _conv3x3(in_channels, widths[0])
        self.bn = _norm(widths[0], affine)
        stages = []
        cin = widths[0]
        for index, width in enumerate(widths):
            blocks = []
            for block in range(blocks_per_stage):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(BasicBlock(cin, width, stride, affine))
                cin = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean(dim=(2, 3)))


class SmallVGG(nn.Module):
    """A VGG-style network: pairs of 3x3 convolutions with batch norm, max pooling between widths."""

    def __init__(self, num_classes: int, widths: Sequence[int], in_channels: int, affine: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for index, width in enumerate(widths):
            if index > 0:
                layers.append(nn.MaxPool2d(2))
            for _ in range(2):
                layers += [_conv3x3(cin, width), _norm(width, affine), nn.ReLU(inplace=True)]
                cin = width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def small_resnet(
    depth: int = 8,
    num_classes: int = 10,
    widths: Sequence[int] = (16, 32, 64),
    in_channels: int = 3,
    affine_norm: bool = True,
) -> SmallResNet:
    """A CIFAR-style ResNet of ``depth = 6n + 2`` layers (8, 14, 20, ...)."""
    if depth < 8 or (depth - 2) % 6:
        raise SearchmergeError(f"small_resnet depth must be 6n + 2 (8, 14, 20, ...), got {depth}")
    _check_widths(widths)
    return SmallResNet((depth - 2) // 6, num_classes, tuple(widths), in_channels, affine_norm)


def small_vgg(
    num_classes: int = 10, widths: Sequence[int] = (16, 32, 64), in_channels: int = 3, affine_norm: bool = True
) -> SmallVGG:
    """A VGG-style network with two 3x3 convolutions per width."""
    _check_widths(widths)
    return SmallVGG(num_classes, tuple(widths), in_channels, affine_norm)


def _check_widths(widths: Sequence[int]) -> None:
    if len(widths) != 3 or not all(isinstance(w, int) and w > 0 for w in widths):
        raise SearchmergeError(f"widths must be three positive integers, got {list(widths)}")


def person_detector(
    num_classes: int = 2, min_size: int = 173, max_size: int = 384, width: int = 64, head: int = 128
) -> FasterRCNN:
    """A torchvision Faster R-CNN for small people in surveillance footage, light enough to train on a CPU.

    torchvision's smallest detector (``fasterrcnn_mobilenet_v3_large_320_fpn``) costs about 0.3 s
    a training image on one CPU core and learns little from a few hundred frames in minutes.
    This one keeps torchvision's Faster R-CNN (region proposals, RoI pooling, box head) on the
    first nine blocks of a MobileNetV3-Small (strides 8 and 16, with a ``width``-channel feature
    pyramid), anchors of 16, 32 and 64 pixels that are 1 to 3 times taller than wide (people),
    and a ``head``-wide box head. Its backbone layers have the configuration of a
    ``mobilenet_v3_small`` classifier's first blocks, so the two can share them. ``min_size``
    and ``max_size`` are torchvision's resize bounds: set ``min_size`` to the images' shorter
    side to keep them at their own size.
    """
    features = mobilenet_v3_small(weights=None).features
    backbone = BackboneWithFPN(features, {"3": "0", "8": "1"}, [24, 48], width)
    anchors = AnchorGenerator(sizes=((16,), (32,), (64,)), aspect_ratios=((1.0, 2.0, 3.0),) * 3)
    return FasterRCNN(
        backbone, num_classes=None, min_size=min_size, max_size=max_size, rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(["0", "1"], 7, 2), box_head=TwoMLPHead(width * 7 * 7, head),
        box_predictor=FastRCNNPredictor(head, num_classes), rpn_batch_size_per_image=64, box_batch_size_per_image=32,
        rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=150,
        rpn_post_nms_top_n_test=50, box_detections_per_img=30,
    )
