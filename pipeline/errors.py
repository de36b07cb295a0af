"""The error every bad input becomes: one line, naming the key and why (exit code 2), raised
before any data is read or any run exists. The bottom of the package: it imports nothing."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem, reported to the user as one line (exit code 2)."""


def require(ok: bool, key: str, message: str) -> None:
    """Raise ``ConfigError("<key>: <message>")`` unless ``ok`` (value rules of every config)."""
    if not ok:
        raise ConfigError(f"{key}: {message}")
