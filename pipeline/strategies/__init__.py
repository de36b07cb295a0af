"""Strategies against forgetting, registered by name (see :mod:`pipeline.strategies.base`).

Every module of this package is imported here, so a new strategy is one file with a
``@register``-ed class (plus its ``conf/strategy/<name>.yaml``: description and search ranges);
nothing else changes (docs/adding-a-strategy.md).
"""

import importlib
import pkgutil

from pipeline.strategies.base import (
    REGISTRY,
    Retention,
    Role,
    Strategy,
    StrategyRefused,
    TaskContext,
    register,
)
from pipeline.strategies.registry import (
    build_strategies,
    default_order,
    parse_params,
    resolve,
    with_role,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "registry"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "REGISTRY",
    "Retention",
    "Role",
    "Strategy",
    "StrategyRefused",
    "TaskContext",
    "build_strategies",
    "default_order",
    "parse_params",
    "register",
    "resolve",
    "with_role",
]
