"""The viewers a user starts on this machine: MLflow's UI (``make ui``) and optuna-dashboard
(``make dashboard``), each checked (a busy port, a missing storage: one line, exit 2) and then
run in place of this process."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pipeline.config.paths import PathsConfig, redact, uri_scheme
from pipeline.errors import ConfigError
from pipeline.server.common import require_port, url_host


def serve_ui(paths: PathsConfig, host: str, port: int) -> int:
    """``make ui``: MLflow's UI over the store of ``paths`` (our app plugin: the training view,
    the columns), in place of this process; a tracking server's own UI is only named."""
    from pipeline.provenance import ui_link
    from pipeline.server.tracking_server import security_flags
    from pipeline.store import Store

    if not Store.of(paths).server:  # a tracking server serves its own UI: no port of ours
        # Before the store is created and the address printed: `mlflow ui` on a busy port
        # prints uvicorn's error after our address line, and exits 0.
        require_port(host, port, "make ui PORT=<port>")
    store = Store.of(paths)
    store.client(True)  # creates the database under the store's lock
    if store.server:
        print(f"the store is a tracking server: open {ui_link(store.uri)}")
        return 0
    assert store.artifact_root is not None
    cmd = ["mlflow", "ui", "--backend-store-uri", store.uri]
    cmd += ["--default-artifact-root", str(store.artifact_root)]
    cmd += ["--host", host, "--port", str(port), "--workers", "1"]
    # Our plugin of MLflow's app: the model-training view and the columns by default.
    cmd += ["--app-name", "pipeline", *security_flags(host, port)]
    host = url_host(host)  # a wildcard is printed as this machine's name
    print(
        f"MLflow UI on {ui_link(f'http://{host}:{port}')} (store: {store}); Ctrl-C stops it",
        flush=True,
    )
    # No job consumers: they serve MLflow's GenAI features and would add 8 processes.
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    exe = os.path.join(os.path.dirname(sys.executable), "mlflow")
    os.execv(exe, cmd)
    return 0  # pragma: no cover  (execv does not return)


def serve_dashboard(paths: PathsConfig, host: str, port: int) -> int:
    """``make dashboard``: optuna-dashboard over the study storage of ``paths``, in place of
    this process (a torn journal's tail repaired first: the dashboard reads it plainly)."""
    storage = paths.studies_uri()
    # optuna-dashboard finds a busy port only after we printed its address, then exits
    require_port(host, port, "make dashboard PORT=<port>")
    cmd = ["optuna-dashboard", "--host", host, "--port", str(port)]
    if not uri_scheme(storage):
        if not Path(storage).is_file():
            raise ConfigError(f"{storage}: no study storage yet (run `make sweep` first)")
        from pipeline.journal import repair

        repair(Path(storage))  # optuna-dashboard reads it with Optuna's plain backend
        cmd += ["--storage-class", "JournalFileStorage"]
    print(
        f"optuna-dashboard on http://{url_host(host)}:{port}/ over {redact(storage)}; "
        "Ctrl-C stops it",
        flush=True,
    )
    exe = os.path.join(os.path.dirname(sys.executable), "optuna-dashboard")
    os.execv(exe, [*cmd, storage])
    return 0  # pragma: no cover  (execv does not return)
