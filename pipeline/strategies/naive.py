"""Naive fine-tuning: train on each task in turn with no defence against forgetting."""

from __future__ import annotations

from pipeline.strategies.base import NoParams, Role, Strategy, register


@register
class Naive(Strategy[NoParams]):
    """Plain fine-tuning (the lower bound). Every hook is the base class's no-op."""

    name = "naive"
    role = Role.BASELINE
