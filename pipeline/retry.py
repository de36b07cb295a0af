"""Riding out a database server that restarts or drops off the network for a while.

SQLAlchemy's ``pool_pre_ping`` replaces a connection that died while it sat in the pool, but a
call made while PostgreSQL is down (restarting, failing over, its network gone) still raises,
and Optuna's RDB storage passes that on: a sweep worker would die in the middle of a study.
:func:`patiently` calls again, with backoff, for up to :data:`RETRY_S` seconds, and says so in
one line when it starts waiting; past that the error goes on.

Neither SQLAlchemy nor Optuna retries a call (Optuna's ``RetryFailedTrialCallback`` re-runs a
trial whose worker died, a different thing), hence this small loop of our own.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TypeVar

from pipeline.config.paths import redact
from pipeline.errors import causes

T = TypeVar("T")

RETRY_S = 120.0  # how long a database may be unreachable before the call fails for good
FIRST_WAIT_S = 0.5  # the wait before the first retry, doubled each time up to MAX_WAIT_S
MAX_WAIT_S = 8.0


def transient(e: BaseException) -> bool:
    """Whether ``e`` (or what it was raised from) says the database could not be reached or
    dropped the connection: SQLAlchemy's ``OperationalError``/``InterfaceError`` or a DBAPI
    error that invalidated its connection (psycopg's, under them), not a refused query."""
    import sqlalchemy.exc

    return any(
        isinstance(x, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError)
        or (isinstance(x, sqlalchemy.exc.DBAPIError) and x.connection_invalidated)
        for x in causes(e)
    )


def patiently(
    call: Callable[[], T],
    what: str,
    budget_s: float = RETRY_S,
    say: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``call()``, called again while it fails with a :func:`transient` error, for up to
    ``budget_s`` seconds.

    Args:
        call: the operation; it must be safe to repeat after a failure (a transaction that
            was rolled back, a lock that was not taken).
        what: what is being reached, for the one line said when the waiting starts.
        budget_s: how long to keep trying.
        say: where that line goes (default: standard error).
        sleep: how to wait (a test's fake one).

    Raises:
        Exception: the last error, once ``budget_s`` has passed, or at once when it is not
            transient.
    """
    deadline, wait, told = time.monotonic() + budget_s, FIRST_WAIT_S, False
    while True:
        try:
            return call()
        except Exception as e:
            if not transient(e) or time.monotonic() + wait > deadline:
                raise
            if not told:
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                line = f"warning: {what} is unreachable ({type(e).__name__}: {first[:200]}); "
                (say or _stderr)(redact(line) + f"retrying for up to {budget_s:.0f} s")
                told = True
        sleep(wait)
        wait = min(MAX_WAIT_S, wait * 2)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
