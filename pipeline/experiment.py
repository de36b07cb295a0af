"""The validated experiment: the composed config with its strategies parsed and checked.

:mod:`pipeline.config` composes ``conf/`` and knows no strategy; :func:`pipeline.strategies.resolve`
parses each strategy's hyperparameters against its ``Params`` and lets it refuse the setting.
Every command builds its configs here, so both always happen, in that order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.config import ExperimentConfig, compose_raw, from_dict_raw
from pipeline.strategies import resolve


def compose(experiment: str, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The validated config of ``conf/experiment/<experiment>.yaml`` with ``overrides``.

    Args:
        experiment: name of a file in ``conf/experiment/`` (without ``.yaml``).
        overrides: ``key=value`` or ``group=choice`` strings, applied last.

    Raises:
        ConfigError: unknown key, wrong type, bad value or missing file (one line).
        StrategyRefused: a strategy that cannot work in this setting (a ``ConfigError``).
    """
    return resolve(compose_raw(experiment, overrides))


def from_dict(tree: dict[str, Any]) -> ExperimentConfig:
    """Rebuild and re-check a config saved with :func:`pipeline.config.to_dict` (a run's
    ``config.yaml``, a checkpoint)."""
    return resolve(from_dict_raw(tree))
