"""The validated experiment: the composed config with its strategies parsed and checked.

:mod:`pipeline.config` composes ``conf/`` and knows no strategy;
:func:`pipeline.strategies.resolve` parses each strategy's hyperparameters against its ``Params``
and lets it refuse the setting.
Every command builds its configs here, so both always happen, in that order.

The strategies, the network's size and the device need torch (2 to 5 s to import); the schema
does not. They are imported once the schema has passed, so a mistyped key or value is refused
in well under a second (``tests/test_hostile_input.py`` checks that no heavy module is loaded).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.config.compose import compose_raw, from_dict_raw
from pipeline.config.schema import ExperimentConfig
from pipeline.errors import ConfigError

#: Bytes per parameter while training: the weight, its gradient and Adam's two moments.
TRAINING_BYTES_PER_PARAMETER = 16


def compose(experiment: str, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The validated config of ``conf/experiment/<experiment>.yaml`` with ``overrides``.

    Args:
        experiment: name of a file in ``conf/experiment/`` (without ``.yaml``).
        overrides: ``key=value`` or ``group=choice`` strings, applied last.

    Raises:
        ConfigError: unknown key, wrong type, bad value or missing file (one line).
        StrategyRefused: a strategy that cannot work in this setting (a ``ConfigError``).
    """
    cfg = compose_raw(experiment, overrides)
    from pipeline.strategies import resolve  # torch: only once the schema has passed

    return check_machine(resolve(cfg))


def from_dict(tree: dict[str, Any]) -> ExperimentConfig:
    """Rebuild and re-check a config saved with :func:`pipeline.config.schema.to_dict` (a run's
    ``config.yaml``, a checkpoint)."""
    from pipeline.strategies import resolve

    return resolve(from_dict_raw(tree))


def check_machine(cfg: ExperimentConfig) -> ExperimentConfig:
    """Refuse what this machine cannot run: a device it does not have, a network that does not
    fit the image or its memory.

    Raises:
        ConfigError: one line naming the key.
    """
    import torch

    from pipeline.data.loading import sequence_shape
    from pipeline.models import parameter_count

    accelerator = cfg.trainer.accelerator
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator: '{accelerator}', but this machine has no GPU")
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.accelerator: 'mps', but this machine has no MPS device")
    devices = cfg.trainer.devices
    gpus = torch.cuda.device_count() if accelerator in ("gpu", "cuda", "auto") else 0
    if devices > 1 and gpus and devices > gpus:
        raise ConfigError(f"trainer.devices: {devices}, but this machine has {gpus} GPUs")
    if devices > 1 and accelerator == "mps":
        raise ConfigError("trainer.devices: Lightning's DDP does not run on MPS; use 1")
    shape, classes_per_task = sequence_shape(cfg.data)  # reads each shards task's manifest
    params = parameter_count(cfg.model, shape, sum(classes_per_task))
    need, have = params * TRAINING_BYTES_PER_PARAMETER, available_memory()
    if have and need > have:
        raise ConfigError(
            f"model: {params:,} parameters need {need / 2**30:.1f} GiB to train, this machine "
            f"has {have / 2**30:.1f} GiB available"
        )
    return cfg


def require_one_process(cfg: ExperimentConfig, command: str) -> None:
    """Refuse a distributed config in a command that runs many sequences (a comparison, a
    sweep): each sequence there is one process, and a study's workers scale it out instead.

    Raises:
        ConfigError: one line naming the keys.
    """
    world = cfg.trainer.devices * cfg.trainer.num_nodes
    if world > 1:
        raise ConfigError(
            f"trainer.devices x trainer.num_nodes = {world}: {command} trains each sequence in "
            "one process (sweep WORKERS= scales it out); train one run on several with `run`"
        )


def available_memory() -> int:
    """Bytes of memory available now (``MemAvailable``; 0 where /proc/meminfo is missing)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
