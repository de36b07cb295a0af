"""Networks: a backbone that maps images to features, and a head that maps features to logits.

The head is its own module with the task ids in its signature; the scenario picks it: one head
per task (task-incremental), one shared head (domain-incremental) or a head that grows with the
classes seen (class-incremental). The backbone, the LightningModule and the runner are the same
in all three.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from typing_extensions import override

from pipeline.config.schema import ModelConfig
from pipeline.errors import ConfigError


class Head(nn.Module):
    """Maps features to logits; ``task`` holds each sample's task index.

    Attributes:
        num_classes: outputs over the whole sequence.
        num_active: outputs the head gives now (a class-incremental head grows with the tasks).
    """

    num_classes: int

    @property
    def num_active(self) -> int:
        return self.num_classes

    def start_task(self, index: int) -> None:
        """Called when task ``index`` starts (before its optimizer is built)."""

    @override
    def forward(self, features: Tensor, task: Tensor | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError


class SharedHead(Head):
    """Domain-incremental: one linear layer shared by every task (digit 3 and dress share
    output 3); the task id is not used."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.linear = nn.Linear(in_features, num_classes)

    @override
    def forward(self, features: Tensor, task: Tensor | None = None) -> Tensor:
        logits: Tensor = self.linear(features)
        return logits


class MultiHead(Head):
    """Task-incremental: one linear layer per task, picked by each sample's task id.

    Every task's layer is computed and the sample's own is gathered, so a batch may mix tasks
    (replay). Tasks with fewer classes than the widest pad with a large negative logit, never
    predicted and harmless to softmax-based losses.
    """

    PAD = -1e4

    def __init__(self, in_features: int, classes_per_task: list[int]) -> None:
        super().__init__()
        self.num_classes = max(classes_per_task)
        self.widths = list(classes_per_task)
        self.heads = nn.ModuleList(nn.Linear(in_features, k) for k in classes_per_task)

    @override
    def forward(self, features: Tensor, task: Tensor | None = None) -> Tensor:
        if task is None:
            raise ValueError("a task-incremental head needs the task id of every sample")
        width = self.num_classes
        out = torch.stack(
            [
                nn.functional.pad(h(features), (0, width - k), value=self.PAD)
                for h, k in zip(self.heads, self.widths, strict=True)
            ]
        )  # tasks x batch x width
        return out[task, torch.arange(features.shape[0], device=features.device)]


class IncrementalHead(Head):
    """Class-incremental: one layer over every class of the sequence, of which only the
    classes of the tasks started so far are output (a growing head).

    Allocating all rows at once keeps parameter shapes fixed (checkpoints and optimizers need no
    resizing); rows of classes not yet seen receive no gradient because they are not output.
    """

    active: Tensor  # buffer: outputs given now (saved in checkpoints)

    def __init__(self, in_features: int, classes_per_task: list[int]) -> None:
        super().__init__()
        self.num_classes = sum(classes_per_task)
        self.ends = [sum(classes_per_task[: i + 1]) for i in range(len(classes_per_task))]
        self.linear = nn.Linear(in_features, self.num_classes)
        self.register_buffer("active", torch.tensor(self.ends[0]))

    @property
    @override
    def num_active(self) -> int:
        return int(self.active)

    @override
    def start_task(self, index: int) -> None:
        self.active.fill_(max(int(self.active), self.ends[index]))

    @override
    def forward(self, features: Tensor, task: Tensor | None = None) -> Tensor:
        logits: Tensor = self.linear(features)
        return logits[:, : self.num_active]


def build_head(scenario: str, in_features: int, classes_per_task: list[int]) -> Head:
    """The head a scenario needs (see :class:`pipeline.config.schema.ExperimentConfig`)."""
    if scenario == "task":
        return MultiHead(in_features, classes_per_task)
    if scenario == "class":
        return IncrementalHead(in_features, classes_per_task)
    return SharedHead(in_features, max(classes_per_task))


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

    @override
    def forward(self, x: Tensor, task: Tensor | None = None) -> Tensor:
        logits: Tensor = self.head(self.backbone(x), task)
        return logits


def _fc_stack(
    in_features: int, hidden: Sequence[int], dropout: float, activation: str = "relu"
) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for width in hidden:
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers += [nn.Linear(in_features, width), nn.Tanh() if activation == "tanh" else nn.ReLU()]
        in_features = width
    return layers


def conv_shapes(
    cfg: ModelConfig, input_shape: tuple[int, int, int]
) -> list[tuple[int, bool, tuple[int, int, int]]]:
    """The CNN's convolutions: per entry of ``cfg.channels`` its input channels, whether a 2x2
    max-pool follows it, and the (channels, height, width) it hands on.

    Raises:
        ConfigError: the convolutions shrink the image to nothing.
    """
    c, h, w = input_shape
    shapes = []
    for i, out_c in enumerate(cfg.channels):
        pooled = cfg.pool == "each" or i == len(cfg.channels) - 1
        h, w = h - cfg.kernel_size + 1, w - cfg.kernel_size + 1
        if pooled:
            h, w = h // 2, w // 2
        if h < 1 or w < 1:
            raise ConfigError(
                f"model.kernel_size: {len(cfg.channels)} conv layer(s) of kernel "
                f"{cfg.kernel_size} with 2x2 pooling shrink a {input_shape[1]}x"
                f"{input_shape[2]} image to nothing"
            )
        shapes.append((c, pooled, (out_c, h, w)))
        c = out_c
    return shapes


#: The ResNet-18's stages: (width as a multiple of ``nf``, stride of its first block); each
#: stage is two basic blocks.
RESNET18_STAGES = ((1, 1), (2, 2), (4, 2), (8, 2))

#: The narrowest ResNet kept channels-last. oneDNN's CPU weight gradient of a 1x1 stride-2
#: convolution on channels-last input with fewer input channels than its block (8 with AVX2,
#: 16 with AVX-512) writes past its workspace: a crash, a hang or a wrong gradient
#: (uxlfoundation/oneDNN#6035; torch 2.14.1 here crashes for 2..7 channels). The shortcuts'
#: inputs have ``nf``, ``2nf`` and ``4nf`` channels, so a narrower ResNet stays channels-first.
RESNET_CHANNELS_LAST_WIDTH = 16


def resnet18_stages(nf: int) -> list[tuple[int, int, int]]:
    """The ResNet-18's basic blocks in order: (input width, output width, stride) each."""
    blocks, width = [], nf
    for multiple, stride in RESNET18_STAGES:
        for first in (True, False):
            blocks.append((width, multiple * nf, stride if first else 1))
            width = multiple * nf
    return blocks


def resnet18_backbone(in_channels: int, nf: int) -> nn.Sequential:
    """The ResNet-18 of GEM, Mammoth and DER for small images, up to its feature vector.

    A 3x3 stem of stride 1 (no bias) with BatchNorm and ReLU and no max-pool: a 32x32 image
    keeps its resolution into the first stage, where ImageNet's 7x7 stride-2 stem and max-pool
    would leave 8x8. Then four stages of two of torchvision's ``BasicBlock`` of widths ``nf``,
    ``2nf``, ``4nf``, ``8nf`` and first strides 1, 2, 2, 2 (a block that changes the stride or
    the width has torchvision's shortcut, a 1x1 convolution + BatchNorm); global average pooling
    then hands on ``8 * nf`` features, for any image size.
    """
    # deferred: importing torchvision costs about a second, which the CNN and MLP never need
    from torchvision.models.resnet import BasicBlock

    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, nf, 3, stride=1, padding=1, bias=False),
        nn.BatchNorm2d(nf),
        nn.ReLU(inplace=True),
    ]
    for in_c, out_c, stride in resnet18_stages(nf):
        shortcut = None
        if stride != 1 or in_c != out_c:
            shortcut = nn.Sequential(
                nn.Conv2d(in_c, out_c, 1, stride=stride, bias=False), nn.BatchNorm2d(out_c)
            )
        layers.append(BasicBlock(in_c, out_c, stride, shortcut))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


def _resnet18_parameters(in_channels: int, nf: int) -> int:
    """Parameters of :func:`resnet18_backbone` (a BatchNorm has two per channel)."""
    count = in_channels * nf * 9 + 2 * nf
    for in_c, out_c, stride in resnet18_stages(nf):
        count += in_c * out_c * 9 + out_c * out_c * 9 + 4 * out_c
        if stride != 1 or in_c != out_c:
            count += in_c * out_c + 2 * out_c
    return count


def parameter_count(cfg: ModelConfig, input_shape: tuple[int, int, int], classes: int) -> int:
    """Parameters of the network :func:`build_model` would build with a head of ``classes``
    outputs, counted without building it.

    Raises:
        ConfigError: the convolutions shrink the image to nothing.
    """
    if cfg.name == "resnet18":
        features = 8 * cfg.width
        return _resnet18_parameters(input_shape[0], cfg.width) + features * classes + classes
    convs = conv_shapes(cfg, input_shape) if cfg.name == "cnn" else []
    count = sum(out[0] * (in_c * cfg.kernel_size**2 + 1) for in_c, _, out in convs)
    c, h, w = convs[-1][2] if convs else input_shape
    features = c * h * w
    for width in cfg.hidden:
        count += features * width + width
        features = width
    return count + features * classes + classes


def build_model(
    cfg: ModelConfig,
    input_shape: tuple[int, int, int],
    classes_per_task: list[int],
    scenario: str = "domain",
) -> Classifier:
    """Build the network named by the config.

    ``cnn``: per entry of ``channels`` a ``kernel_size`` convolution and a ReLU, with a 2x2
    max-pool after each (``pool: each``, LeNet-style) or after the last only (``pool: last``),
    then the ``hidden`` fully connected layers. ``mlp`` flattens the image first.

    Two choices make the CNN about twice as fast on a CPU without changing what it computes:
    the ReLU comes after the pooling (``relu(max(x)) == max(relu(x))``, exactly, as ReLU is
    monotone; it then touches a quarter of the values), and the convolution weights are
    channels-last, which oneDNN's convolution and pooling kernels run faster than the default
    layout (``make bench``). Parameters are the same tensors in another memory layout: flatten
    them with ``reshape``/``flatten``, never ``view``.

    ``resnet18``: :func:`resnet18_backbone` of base width ``width``, its ``8 * width`` features
    straight into the head; ``hidden``, ``dropout`` and the CNN's keys are ignored. It is
    channels-last too, unless narrower than :data:`RESNET_CHANNELS_LAST_WIDTH`.

    Args:
        cfg: model config.
        input_shape: (channels, height, width) of one image.
        classes_per_task: number of classes of each task of the sequence.
        scenario: ``task``, ``domain`` or ``class``; picks the head (:func:`build_head`).
    """
    if cfg.name == "resnet18":
        backbone = resnet18_backbone(input_shape[0], cfg.width)
        head = build_head(scenario, 8 * cfg.width, classes_per_task)
        resnet = Classifier(backbone, 8 * cfg.width, head)
        if cfg.width < RESNET_CHANNELS_LAST_WIDTH:
            return resnet
        return resnet.to(memory_format=torch.channels_last)
    layers: list[nn.Module] = []
    if cfg.name == "cnn":
        convs = conv_shapes(cfg, input_shape)
        for in_c, pooled, out in convs:
            layers.append(nn.Conv2d(in_c, out[0], cfg.kernel_size))
            layers += [nn.MaxPool2d(2), nn.ReLU()] if pooled else [nn.ReLU()]
        layers.append(nn.Flatten())
        c, h, w = convs[-1][2] if convs else input_shape
        features = c * h * w
    else:
        layers.append(nn.Flatten())
        features = int(torch.tensor(input_shape).prod())
    layers += _fc_stack(features, cfg.hidden, cfg.dropout, cfg.activation)
    feature_dim = cfg.hidden[-1] if cfg.hidden else features
    head = build_head(scenario, feature_dim, classes_per_task)
    model = Classifier(nn.Sequential(*layers), feature_dim, head)
    return model.to(memory_format=torch.channels_last)  # only 4-D (convolution) weights change
