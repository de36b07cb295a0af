"""Networks: a backbone that maps images to features, and a head that maps features to logits.

The head is its own module with the task ids in its signature, so that the scenarios issue can
add one head per task (task-incremental) or a head that grows with the classes seen
(class-incremental) by swapping the head, without touching the backbone, the LightningModule or
the runner.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pipeline.config import ModelConfig


class Head(nn.Module):
    """Maps features to logits. ``task`` holds each sample's task index (or is ``None`` when
    the scenario does not give it at test time)."""

    num_classes: int

    def forward(self, features: Tensor, task: Tensor | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError


class SharedHead(Head):
    """One linear layer shared by every task (domain-incremental: digit 3 and dress share
    output 3)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, features: Tensor, task: Tensor | None = None) -> Tensor:
        return self.linear(features)


class Classifier(nn.Module):
    """Backbone + head.

    Attributes:
        backbone: image -> feature vector of size ``feature_dim``.
        head: features (+ task ids) -> logits.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, head: Head) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.head = head

    def forward(self, x: Tensor, task: Tensor | None = None) -> Tensor:
        return self.head(self.backbone(x), task)


def _fc_stack(in_features: int, hidden: Sequence[int], dropout: float) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for width in hidden:
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers += [nn.Linear(in_features, width), nn.ReLU()]
        in_features = width
    return layers


def build_model(
    cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int
) -> Classifier:
    """Build the network named by the config.

    ``cnn`` is LeNet-style: per entry of ``channels`` a ``kernel_size`` convolution, ReLU and 2x2
    max-pool, then the ``hidden`` fully connected layers. ``mlp`` flattens the image first.

    Args:
        cfg: model config.
        input_shape: (channels, height, width) of one image.
        num_classes: outputs of the shared head.
    """
    layers: list[nn.Module] = []
    if cfg.name == "cnn":
        c, h, w = input_shape
        for out_c in cfg.channels:
            layers += [nn.Conv2d(c, out_c, cfg.kernel_size), nn.ReLU(), nn.MaxPool2d(2)]
            c, h, w = out_c, (h - cfg.kernel_size + 1) // 2, (w - cfg.kernel_size + 1) // 2
            if h < 1 or w < 1:
                raise ValueError(
                    f"model.channels: {len(cfg.channels)} conv layers shrink a "
                    f"{input_shape[1]}x{input_shape[2]} image to nothing"
                )
        layers.append(nn.Flatten())
        features = c * h * w
    else:
        layers.append(nn.Flatten())
        features = int(torch.tensor(input_shape).prod())
    layers += _fc_stack(features, cfg.hidden, cfg.dropout)
    feature_dim = cfg.hidden[-1] if cfg.hidden else features
    return Classifier(nn.Sequential(*layers), feature_dim, SharedHead(feature_dim, num_classes))
