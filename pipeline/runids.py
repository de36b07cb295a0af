"""Run ids as users type them: the full 32-character MLflow id, or a unique prefix of it.

The commands print ids short (``run 4c41792a``); every command that takes a run id accepts
what they print, through :func:`resolve_run_id` (called by :meth:`pipeline.tracking.Run.get`).
The bottom of the package, beside :mod:`pipeline.errors`: it imports nothing of it.
"""

from __future__ import annotations

import re
from typing import Any

from mlflow.entities import ViewType

MIN_PREFIX = 8  # what the commands print: 16^8 ids, so a clash needs tens of thousands of runs
FULL_LENGTH = 32  # an MLflow run id: a uuid4's hex digits
_HEX = re.compile(r"[0-9a-f]+")
_SHOWN = 3  # matching ids named in the "ambiguous" line


def short_id(run_id: str) -> str:
    """The id as the commands print it: its first :data:`MIN_PREFIX` characters."""
    return run_id[:MIN_PREFIX]


def resolve_run_id(client: Any, text: str, where: str) -> str:
    """The full id of the one run whose id is ``text`` or starts with it.

    Args:
        client: the store's ``MlflowClient`` (or one that acts like it).
        text: a full run id, or a prefix of at least :data:`MIN_PREFIX` hex characters.
        where: the store, as named in messages.

    Returns:
        The run's full id (``text`` itself when it is one: it is looked up by the caller).

    Raises:
        LookupError: a prefix too short, no run with that prefix, or several (one line each).
    """
    wanted = text.strip().lower()
    if len(wanted) == FULL_LENGTH or not _HEX.fullmatch(wanted):
        return text  # a full id, or no id at all: the caller's lookup says it is not there
    if len(wanted) < MIN_PREFIX:
        raise LookupError(
            f"run id '{text}' is too short: give at least {MIN_PREFIX} of its characters "
            "(make runs lists the ids)"
        )
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    found = (
        client.search_runs(
            experiments,
            # a hex prefix holds no quote nor LIKE wildcard: safe to put in the filter as is
            filter_string=f"attributes.run_id LIKE '{wanted}%'",
            run_view_type=ViewType.ALL,
            max_results=1000,
        )
        if experiments
        else []
    )
    ids = sorted(r.info.run_id for r in found)
    if not ids:
        raise LookupError(f"no MLflow run whose id starts with '{text}' in the store {where}")
    if len(ids) > 1:
        more = ", ..." if len(ids) > _SHOWN else ""
        raise LookupError(
            f"run id '{text}' is ambiguous: {len(ids)} runs start with it "
            f"({', '.join(ids[:_SHOWN])}{more}); give more of its characters"
        )
    return str(ids[0])
