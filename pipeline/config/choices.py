"""The configuration's choices, one enum each (:mod:`pipeline.config.schema` types its fields
with them and re-exports them)."""

from __future__ import annotations

from enum import StrEnum


# The choices. Each is a StrEnum whose names are its values: OmegaConf accepts exactly these
# names (any other value is one line: "Invalid value 'x', expected one of [...]"), and a member
# compares, formats and serialises as its string.
class ModelName(StrEnum):
    cnn = "cnn"
    mlp = "mlp"
    resnet18 = "resnet18"


class Storage(StrEnum):
    auto = "auto"
    memory = "memory"
    streamed = "streamed"


class Augment(StrEnum):
    none = "none"
    crop_flip = "crop_flip"


class Pool(StrEnum):
    each = "each"
    last = "last"


class Activation(StrEnum):
    relu = "relu"
    tanh = "tanh"


class OptimizerName(StrEnum):
    adam = "adam"
    adamw = "adamw"
    sgd = "sgd"


class Schedule(StrEnum):
    constant = "constant"
    cosine = "cosine"


class Accelerator(StrEnum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"
    cuda = "cuda"
    mps = "mps"


class DistributedStrategy(StrEnum):
    auto = "auto"
    ddp = "ddp"


class Retention(StrEnum):
    any = "any"
    none = "none"


# "class" is a keyword: the functional form names that member.
Scenario = StrEnum("Scenario", [("task", "task"), ("domain", "domain"), ("class", "class")])
