"""Store writes that a termination signal must not cut in two.

SIGTERM raises ``SystemExit`` wherever Python is (:mod:`pipeline.cli` installs the handler);
raised inside SQLAlchemy's commit, it once left SQLite locked by the interrupted connection, so
the run could not then be marked KILLED. Every write of an MLflow client of ours runs inside
:func:`shielded`, which holds the exit until the write is done, and inside
:func:`pipeline.disk.room_for`, so that a store that fills up is named in one line.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from mlflow.tracking import MlflowClient

from pipeline.disk import room_for


class _Shield:
    """Store writes in progress in this process, and an exit deferred until they are done."""

    depth = 0
    pending: int | None = None


@contextmanager
def shielded() -> Iterator[None]:
    """A store write that a termination signal must not cut in two.

    SIGTERM raises SystemExit wherever Python is (``pipeline.cli``); raised inside SQLAlchemy's
    commit, it left SQLite locked by the interrupted connection, so the run could not then be
    marked KILLED. Inside this block :func:`defer_exit` holds the exit until the write is done;
    :class:`ShieldedClient` wraps each write in it.
    """
    _Shield.depth += 1
    try:
        yield
    finally:
        _Shield.depth -= 1
    if not _Shield.depth and _Shield.pending is not None:
        code, _Shield.pending = _Shield.pending, None
        raise SystemExit(code)


def defer_exit(code: int) -> bool:
    """Hold ``SystemExit(code)`` until the store write in progress ends; False when none is."""
    if not _Shield.depth:
        return False
    _Shield.pending = code
    return True


class ShieldedClient(MlflowClient):
    """An ``MlflowClient`` whose writes run :func:`shielded`: every client of :func:`client_for`,
    so no store write (runs, sweeps, erasure) is cut in two by SIGTERM.

    Its Model Registry is the store's own (:mod:`pipeline.registry`), whatever
    ``MLFLOW_REGISTRY_URI`` says.

    Args:
        tracking_uri: the store.
        where: the store's place as a full disk names it (:attr:`pipeline.store.Store.where`).
    """

    def __init__(self, tracking_uri: str, where: str) -> None:
        super().__init__(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.where = where


def _shield(name: str) -> Callable[..., Any]:
    write = getattr(MlflowClient, name)
    what = f"MLflow's {name.replace('_', ' ')}"

    @functools.wraps(write)
    def shielded_write(self: ShieldedClient, *args: Any, **kwargs: Any) -> Any:
        with shielded(), room_for(self.where, what):
            return write(self, *args, **kwargs)

    return shielded_write


for _name in (
    "create_experiment",
    "create_run",
    "update_run",
    "set_terminated",
    "set_tag",
    "set_experiment_tag",
    "delete_experiment_tag",
    "log_batch",
    "log_artifact",
    "log_text",
    "log_figure",
    "log_dict",
    "delete_run",
    "log_artifacts",
    # the Model Registry (pipeline.registry)
    "create_registered_model",
    "create_model_version",
    "update_model_version",
    "set_model_version_tag",
    "set_registered_model_alias",
    "delete_registered_model_alias",
):
    setattr(ShieldedClient, _name, _shield(_name))
