"""Continual-learning experiment pipeline."""
