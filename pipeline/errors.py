"""The two kinds of error a command ends with, as one line: bad input (:class:`ConfigError`,
exit code 2), found before any data is read or any run exists; and a run that failed after it
started (:class:`RunFailed`, exit code 1). The bottom of the package: it imports nothing of it."""

from __future__ import annotations

from collections.abc import Iterator


class ConfigError(ValueError):
    """A configuration problem, reported to the user as one line (exit code 2)."""


def require(ok: bool, key: str, message: str) -> None:
    """Raise ``ConfigError("<key>: <message>")`` unless ``ok`` (value rules of every config)."""
    if not ok:
        raise ConfigError(f"{key}: {message}")


class RunFailed(RuntimeError):
    """A run failed after it started (missing data, a diverging loss, a sweep stopped short):
    one line for the user (exit code 1)."""


def causes(e: BaseException) -> Iterator[BaseException]:
    """``e`` and every exception it was raised from or during (``__cause__``,
    ``__context__``), each once: where a library's error wraps the one that says what happened."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [e]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        todo += [x.__cause__, x.__context__]
