"""The registry's lookups: a strategy's hyperparameters parsed against its ``Params``, the
strategies of a role, the default order of a comparison, and a config's strategies resolved and
built (:data:`pipeline.strategies.base.REGISTRY` holds them by name)."""

from __future__ import annotations

import math
from dataclasses import fields, is_dataclass
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.errors import ConfigError
from pipeline.strategies.base import (
    REGISTRY,
    DataclassInstance,
    Role,
    Strategy,
)

if TYPE_CHECKING:
    from pipeline.config.schema import ExperimentConfig


def parse_params(name: str, raw: Any) -> DataclassInstance:
    """Validate a strategy's hyperparameters against its ``Params`` dataclass, whose defaults
    fill what ``raw`` leaves out (already parsed params are returned as they are).

    Args:
        name: a registered strategy.
        raw: its hyperparameters as composed (a mapping, ``None`` for the defaults), or an
            instance of its ``Params``.

    Raises:
        ConfigError: unknown strategy, unknown key, wrong type or bad value.
    """
    if name not in REGISTRY:
        raise ConfigError(
            f"strategy: unknown strategy '{name}' (available: {', '.join(sorted(REGISTRY))})"
        )
    schema = REGISTRY[name].Params
    if isinstance(raw, schema):
        return raw
    if is_dataclass(raw):
        raise ConfigError(f"strategies.{name}: expected {schema.__name__}, got {raw!r}")
    try:
        node = OmegaConf.merge(OmegaConf.structured(schema), raw or {})
        params = OmegaConf.to_object(node)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or "?"
        raise ConfigError(f"strategies.{name}.{key}: {str(e).splitlines()[0]}") from e
    except ConfigError as e:
        raise ConfigError(f"strategies.{name}.{e}") from e
    assert is_dataclass(params) and not isinstance(params, type)
    for f in fields(params):
        value = getattr(params, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"strategies.{name}.{f.name}: must be finite, got {value}")
    return params


def with_role(role: Role) -> list[str]:
    """Names of the registered strategies of a role."""
    return [name for name, cls in REGISTRY.items() if cls.role is role]


def default_order() -> list[str]:
    """Every registered strategy: the baseline, the reference, then the methods that keep no
    raw data, then those that do (by name within each group): ``make compare``'s default."""
    return sorted(REGISTRY, key=lambda n: (REGISTRY[n].role.value, REGISTRY[n].keeps_raw_data, n))


def resolve(cfg: ExperimentConfig) -> ExperimentConfig:
    """Parse the strategies of a composed config, once, and check them against it.

    ``cfg.strategy`` empty means the baseline; ``cfg.strategies[name]`` becomes the strategy's
    ``Params`` (its defaults filled in); then each strategy's :meth:`Strategy.check_config`.

    Returns:
        ``cfg``, changed in place.

    Raises:
        ConfigError: an unknown strategy, parameters of a strategy not in use, a bad value.
        StrategyRefused: a strategy that cannot work in this setting.
    """
    if not cfg.strategy:
        cfg.strategy = with_role(Role.BASELINE)[:1]
    for name in cfg.strategy:
        if not isinstance(name, str):
            raise ConfigError(f"strategy: expected a list of names, got {name!r}")
    extra = sorted(set(cfg.strategies) - set(cfg.strategy))
    if extra:
        raise ConfigError(f"strategies: {extra} configured but not in strategy={cfg.strategy}")
    cfg.strategies = {n: parse_params(n, cfg.strategies.get(n)) for n in cfg.strategy}
    for name in cfg.strategy:
        REGISTRY[name].check_config(cfg.strategies[name], cfg)
    return cfg


def build_strategies(cfg: ExperimentConfig) -> list[Strategy[Any]]:
    """Instantiate the strategies of a resolved config (:func:`resolve`), in order."""
    return [REGISTRY[n](parse_params(n, cfg.strategies.get(n))) for n in cfg.strategy]
