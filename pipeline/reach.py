"""Reaching a tracking server: the probe before a command starts, and what a request that
failed through all of the MLflow client's retries means for a run.

The client retries a request for minutes (its defaults: 7 retries, about 4 min): a server
restarted within that time is ridden out by the client itself, and a write it retries is stored
once (a metric is keyed by its timestamp, artifacts and tags are overwritten). Past that, the
error says in urllib3's words whether the server did not answer (down) or answered with errors
each time (up, and unable to do what was asked: a full disk for its artifacts, say), which
:func:`server_trouble` tells apart for the one line the user gets (:func:`server_failed`).
"""

from __future__ import annotations

from pipeline.config.paths import redact
from pipeline.errors import ConfigError, RunFailed, causes

PROBE_TIMEOUT_S = 10  # a tracking server that does not answer this fast is reported as down


class StoreError(ConfigError):
    """The tracking store cannot be used (unreachable, refused credentials, not writable): one
    line for the user, before any run exists (the CLI exits with code 2)."""


def probe_server(uri: str) -> None:
    """Check that the tracking server at ``uri`` answers and accepts our credentials, at once
    (MLflow's own client retries a refused connection for minutes).

    Raises:
        StoreError: it does not answer, or it refuses the credentials.
    """
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    shown = redact(uri)
    try:
        response = http_request(
            get_default_host_creds(uri),
            "/api/2.0/mlflow/experiments/search",
            "GET",
            max_retries=0,
            timeout=PROBE_TIMEOUT_S,
            params={"max_results": 1},
        )
    except Exception as e:  # requests' connection errors, MlflowException: one line
        raise StoreError(f"tracking server {shown} does not answer ({first_line(e)})") from None
    if response.status_code in (401, 403):
        raise StoreError(
            f"tracking server {shown} refused the credentials (HTTP {response.status_code}): "
            "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    if response.status_code != 200:
        raise StoreError(f"tracking server {shown} answered HTTP {response.status_code}")


def first_line(e: BaseException) -> str:
    """An error as one line for the user: its type and first line, passwords redacted."""
    text = str(e).strip().splitlines()
    return redact(f"{type(e).__name__}: {text[0] if text else ''}")[:300]


class ServerDown(RunFailed):
    """The tracking server stopped answering mid-run, past the MLflow client's own retries: one
    line (exit 1). A server that is down cannot be told that the run ended: the run stays
    RUNNING there with its process gone, which ``make runs`` lists as resumable."""


def server_trouble(e: BaseException) -> str:
    """How a tracking server failed ``e``'s request through all of the MLflow client's
    retries: ``"down"`` (refused, reset, silent), ``"failing"`` (a 5xx answer every time: it
    is up, and cannot do what was asked, e.g. store an artifact on a full disk), or ``""``
    (neither: some other error)."""
    for x in causes(e):
        text = str(x)
        if "error responses" in text:  # urllib3's ResponseError: "too many 500 error responses"
            return "failing"
        if type(x).__name__ in ("ConnectionError", "MaxRetryError") or (
            "Max retries exceeded" in text
        ):
            return "down"
    return ""


def retry_budget_s() -> float:
    """About how long the MLflow client retries a request to a server that does not answer:
    urllib3's exponential backoff (none before the first retry, then factor x 2^(k-1), at most
    120 s) over ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` retries."""
    from mlflow.environment_variables import (
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES,
    )

    retries, factor = (
        MLFLOW_HTTP_REQUEST_MAX_RETRIES.get(),
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get(),
    )
    return float(sum(min(120.0, factor * 2 ** (k - 1)) for k in range(2, retries + 1)))


def server_failed(uri: str, run_id: str, trouble: str) -> ServerDown:
    """The one line for a tracking server at ``uri`` that failed run ``run_id`` with
    ``trouble`` (:func:`server_trouble`)."""
    server, resume = redact(uri), f"make run RESUME={run_id}"
    retried = (
        f"the MLflow client retried for about {retry_budget_s():.0f} s: MLFLOW_HTTP_REQUEST_"
        "MAX_RETRIES and MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR set how long"
    )
    if trouble == "down":
        return ServerDown(
            f"the tracking server {server} stopped answering ({retried}); run {run_id} "
            f"stays RUNNING there; once it is back, {resume}"
        )
    return ServerDown(
        f"the tracking server {server} answered every retry with an error ({retried}): it "
        "could not store what the run sent, most often for a full disk under its artifacts "
        "or database (its log says why; make server's is .server/mlflow.log); run "
        f"{run_id} ended FAILED; once that is mended, {resume}"
    )
