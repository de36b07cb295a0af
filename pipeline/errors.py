"""The two kinds of error a command ends with, as one line: bad input (:class:`ConfigError`,
exit code 2), found before any data is read or any run exists; and a run that failed after it
started (:class:`RunFailed`, exit code 1). The bottom of the package: it imports nothing."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem, reported to the user as one line (exit code 2)."""


def require(ok: bool, key: str, message: str) -> None:
    """Raise ``ConfigError("<key>: <message>")`` unless ``ok`` (value rules of every config)."""
    if not ok:
        raise ConfigError(f"{key}: {message}")


class RunFailed(RuntimeError):
    """A run failed after it started (missing data, a diverging loss, a sweep stopped short):
    one line for the user (exit code 1)."""
