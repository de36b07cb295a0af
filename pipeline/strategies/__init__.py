"""Strategies against forgetting, registered by name (see :mod:`pipeline.strategies.base`)."""

from pipeline.strategies import naive  # noqa: F401  (registers the strategy)
from pipeline.strategies.base import (
    REGISTRY,
    Strategy,
    TaskContext,
    build_strategies,
    parse_params,
    register,
)

__all__ = ["REGISTRY", "Strategy", "TaskContext", "build_strategies", "parse_params", "register"]
