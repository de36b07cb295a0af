"""Names in the Model Registry: the error every refusal raises, the rules a registered model's
name must meet, the default name of a run's model, and the alias and tag keys this package
writes."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

from mlflow.exceptions import MlflowException

from pipeline.errors import ConfigError

#: The alias of the version to serve: ``models:/<name>@champion``.
CHAMPION = "champion"
#: A name longer than this does not fit MLflow's ``registered_models.name`` column (256
#: characters; PostgreSQL enforces it, SQLite would not).
MAX_NAME = 256
#: What a model version tag's value holds in MLflow's database (PostgreSQL enforces it).
MAX_TAG_VALUE = 5000
#: Characters that would change what ``models:/<name>@<alias>`` means (a query, an alias).
_URI_BREAKING = "?@"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")

# tag keys of a model version (besides the run's own md5.* ones, copied as they are)
RUN_TAG = "pipeline.run_id"
ERASED_TAG = "pipeline.erased"  # on a version an erasure withdrew: the request's key
SUPERSEDED_TAG = "pipeline.superseded_by"  # on it too: the run whose version replaced it
HELD_ALIASES_TAG = "pipeline.aliases_held"  # on it too: the aliases it held (moved)
REQUEST_TAG = "pipeline.erasure_request"  # on the replacing version: the request's key
SUPERSEDES_TAG = "pipeline.supersedes"  # on it too: the versions it replaced


class RegistryError(ConfigError):
    """A run that cannot be registered (unknown, still running, no checkpoints) or a name
    the Model Registry refuses: one line, nothing registered (exit code 2)."""


def check_name(name: str) -> str:
    """``name`` when the Model Registry takes it as a registered model's name.

    Raises:
        RegistryError: a name MLflow refuses (empty, with ``/`` or ``:``, one that resolves to
            another path), longer than :data:`MAX_NAME`, or with ``?`` or ``@`` (they would
            change the meaning of ``models:/<name>@champion``).
    """
    from mlflow.utils.validation import _validate_model_name

    try:
        _validate_model_name(name)
    except MlflowException as e:
        raise RegistryError(f"model name '{name}': {e.message.splitlines()[0]}") from None
    if len(name) > MAX_NAME:
        raise RegistryError(f"model name of {len(name)} characters: at most {MAX_NAME}")
    bad = sorted({c for c in name if c in _URI_BREAKING or not c.isprintable()})
    if bad:
        raise RegistryError(
            f"model name '{name}': {', '.join(map(repr, bad))} would break its URI "
            "models:/<name>@champion"
        )
    return name


def default_name(experiment: str) -> str:
    """The name a run's model is registered under by default: its MLflow experiment's name,
    each run of characters other than letters, digits, ``_``, ``.`` and ``-`` made one ``-``
    (``best/a b`` -> ``best-a-b``), at most :data:`MAX_NAME` characters."""
    name = _UNSAFE.sub("-", experiment).strip("-.")[:MAX_NAME]
    return name or "model"


def fits(values: list[str], limit: int = MAX_TAG_VALUE) -> str:
    """``values`` joined by commas, within ``limit`` characters: when they do not fit, the
    newest (last) that do, after ``<n> in all, newest: ``."""
    text = ",".join(values)
    if len(text) <= limit:
        return text
    kept: list[str] = []
    head = f"{len(values)} in all, newest: "
    for v in reversed(values):
        if len(head) + len(",".join([v, *kept])) > limit:
            break
        kept.insert(0, v)
    return head + ",".join(kept)


@contextmanager
def quiet() -> Iterator[None]:
    """MLflow's log lines held back but for errors: saving a model (passed as an object, its
    example checked, the uv project found) and registering a version (waiting for it)."""
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
