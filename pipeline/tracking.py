"""MLflow tracking: one run per task sequence, driven through ``MlflowClient`` with explicit run
ids (never the fluent API's global "active run"), so that a sweep or a comparison can open a
parent run and nest these runs under it, from threads or processes. Every artifact is read and
written through MLflow's API, never as a local file, so every kind of store works alike
(:mod:`pipeline.store`)."""

from __future__ import annotations

import functools
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from pipeline.config.paths import redact
from pipeline.config.schema import ExperimentConfig
from pipeline.disk import DiskFull, room_for
from pipeline.keys import has_accuracies
from pipeline.processes import process_id
from pipeline.provenance import default_run_name
from pipeline.reach import (
    first_line,
    server_failed,
    server_trouble,
)
from pipeline.runids import resolve_run_id
from pipeline.shield import shielded
from pipeline.store import Store

OWNER_TAG = "pipeline.owner"  # host:pid:start of the process that writes a run (resume)
MAX_BATCH = 1000  # MLflow's log_batch accepts at most 1000 metrics per call


class StopRun(Exception):
    """Raised inside a run to end it on purpose (a pruned trial): the run ends with ``status``,
    its reason as the ``stop_reason`` tag plus ``tags``, and the exception goes on to the caller.

    Args:
        reason: why the run stops (one line).
        status: the MLflow status the run ends with.
        tags: more tags to set on the run as it ends.
    """

    def __init__(
        self, reason: str, status: str = "KILLED", tags: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.tags = dict(tags or {})


#: Opens the run a task sequence writes into; the caller decides its name, parent and tags.
RunFactory = Callable[[], AbstractContextManager["Run"]]


class Run:
    """One MLflow run, written and read through an explicit client and run id.

    Use :meth:`start` (a new run) or :meth:`reopen` (an existing one) as a context manager:
    the run ends FINISHED when the block completes, FAILED (with the error as the ``error``
    tag) when it raises, KILLED on Ctrl-C or SIGTERM, and as a :class:`StopRun` says when one
    is raised.
    """

    def __init__(self, store: Store, run_id: str, experiment_id: str) -> None:
        self.store = store
        self.client = store.client()
        self.run_id = run_id
        self.experiment_id = experiment_id

    @classmethod
    def get(cls, store: Store, run_id: str) -> Run:
        """An existing run, to read or add to; its status is left alone. ``run_id`` may be a
        unique prefix of 8+ characters (:func:`pipeline.runids.resolve_run_id`).

        Raises:
            LookupError: no run ``run_id`` in ``store``, or a prefix too short or ambiguous.
        """
        client = store.client()
        try:
            info = client.get_run(resolve_run_id(client, run_id, str(store))).info
        except MlflowException:
            raise LookupError(f"no MLflow run '{run_id}' in the store {store}") from None
        return cls(store, info.run_id, info.experiment_id)

    @classmethod
    @contextmanager
    def start(
        cls,
        store: Store,
        experiment: str,
        run_name: str = "",
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        description: str = "",
    ) -> Iterator[Run]:
        exp_id = store.experiment_id(experiment, description)
        all_tags = {OWNER_TAG: process_id(), **(tags or {})}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        info = store.create_run(exp_id, run_name, all_tags)
        with cls(store, info.run_id, exp_id)._managed() as run:
            yield run

    @classmethod
    def factory(
        cls,
        store: Store,
        experiment: str,
        run_name: str = "",
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        description: str = "",
    ) -> RunFactory:
        """A :data:`RunFactory` that starts a new run with these settings."""
        return functools.partial(
            cls.start, store, experiment, run_name, parent_run_id, tags, description
        )

    @classmethod
    def of(
        cls,
        cfg: ExperimentConfig,
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> RunFactory:
        """The factory of the run a config names: in its store (``paths.store``) and MLflow
        experiment (``tracking.experiment``, else the config's name), with its run name."""
        experiment = cfg.tracking.experiment or cfg.name
        name = cfg.tracking.run_name or default_run_name(cfg)
        store = Store.of(cfg.paths)
        return cls.factory(store, experiment, name, parent_run_id, tags, cfg.description)

    @classmethod
    @contextmanager
    def reopen(cls, store: Store, run_id: str) -> Iterator[Run]:
        """An existing run, RUNNING again until the block ends (as in :meth:`start`).

        Raises:
            LookupError: no run ``run_id`` in ``store``.
        """
        run = cls.get(store, run_id)
        run.set_tags({OWNER_TAG: process_id()})  # this process takes the run over
        run.client.update_run(run.run_id, status="RUNNING")
        with run._managed():
            yield run

    @contextmanager
    def _managed(self) -> Iterator[Run]:
        try:
            yield self
        except StopRun as e:
            self._end_anyway(e.status, tags={"stop_reason": e.reason, **e.tags})
            raise
        except (KeyboardInterrupt, SystemExit):  # Lightning turns Ctrl-C/SIGTERM into SystemExit
            self._end_anyway("KILLED", {"error": "interrupted"})
            raise
        except BaseException as e:
            trouble = server_trouble(e) if self.store.server else ""
            if trouble != "down":  # a server that is down cannot be told that the run failed
                self._end_anyway("FAILED", {"error": f"{type(e).__name__}: {e}"})
            if trouble:
                raise server_failed(self.store.uri, self.run_id, trouble) from e
            if isinstance(e, DiskFull) and e.run_id is None:
                e.run_id = self.run_id  # the line the user sees says which run to resume
            raise
        self.end("FINISHED")

    def _end_anyway(self, status: str, tags: Mapping[str, str]) -> None:
        """End the run on the way out of an error, which a store error must not replace."""
        try:
            self.end(status, tags)
        except Exception as e:
            print(f"warning: run {self.run_id} could not be marked {status}: {e}", file=sys.stderr)

    def end(self, status: str, tags: Mapping[str, str] | None = None) -> None:
        """Set ``tags`` (an ``error``, a ``stop_reason``...) and end the run with ``status``."""
        with shielded():  # both or neither
            if tags:
                self.set_tags({k: str(v)[:5000] for k, v in tags.items()})
            self.client.set_terminated(self.run_id, status=status)

    @property
    def status(self) -> str:
        return str(self.client.get_run(self.run_id).info.status)

    @property
    def tags(self) -> dict[str, str]:
        return dict(self.client.get_run(self.run_id).data.tags)

    def tasks_logged(self) -> bool:
        """Whether the run logged any task's accuracies (:func:`pipeline.keys.acc_key`)."""
        return has_accuracies(self.client.get_run(self.run_id).data.metrics)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (values redacted: a URI's password never reaches the store)."""
        items = [Param(k, param_text(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow caps params per batch at 100
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        self.log_records(metric_records(metrics, step))

    def log_records(self, records: Sequence[Metric]) -> None:
        """Log metric records (key, value, timestamp, step), in batches MLflow accepts."""
        records = list(records)
        for i in range(0, len(records), MAX_BATCH):
            self.client.log_batch(self.run_id, metrics=records[i : i + MAX_BATCH])

    def log_missing(self, records: Sequence[Metric]) -> int:
        """Log the records whose (key, step) the run does not hold yet; how many.

        A resumed run logs what its process logged after the last checkpoint only where the
        process died before logging it, so every metric step is logged once.
        """
        missing = []
        for key in sorted({r.key for r in records}):
            steps = {m.step for m in self.client.get_metric_history(self.run_id, key)}
            missing += [r for r in records if r.key == key and r.step not in steps]
        self.log_records(missing)
        return len(missing)

    def log_file(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def log_json(self, obj: Any, name: str) -> None:
        self.log_text(json.dumps(obj, indent=2), name)

    def log_figure(self, figure: Any, name: str) -> None:
        self.client.log_figure(self.run_id, figure, name)

    def list_files(self, folder: str = "") -> list[str]:
        """Artifact paths of the files directly in ``folder`` of the run."""
        return [f.path for f in self.client.list_artifacts(self.run_id, folder or None)]

    def download(self, path: str, dst: Path) -> Path:
        """Copy the artifact ``path`` into the folder ``dst``; the local file.

        Raises:
            LookupError: the run has no such artifact (or it cannot be fetched).
        """
        try:
            with room_for(dst, f"a copy of {path}"):  # a full scratch disk is not a bad file
                return Path(self.client.download_artifacts(self.run_id, path, str(dst)))
        except (MlflowException, OSError) as e:
            raise LookupError(f"run {self.run_id} has no readable {path}: {first_line(e)}") from e

    def read_json(self, path: str) -> Any:
        """The JSON artifact ``path``, parsed.

        Raises:
            LookupError: no such artifact, or not JSON.
        """
        with scratch_dir() as tmp:
            local = self.download(path, tmp)
            try:
                return json.loads(local.read_text())
            except (OSError, ValueError) as e:
                raise LookupError(f"run {self.run_id}: {path} is not readable JSON: {e}") from e

    def delete_file(self, path: str) -> None:
        """Remove the artifact ``path`` (MLflow's client has no call for it; its artifact
        repositories, local and proxied, do)."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        uri = self.client.get_run(self.run_id).info.artifact_uri
        with shielded():
            get_artifact_repository(uri, tracking_uri=self.store.uri).delete_artifacts(path)


def param_text(value: Any) -> str:
    """A param's value as the store keeps it: text, redacted, at most 6,000 characters."""
    return redact(str(value))[:6000]


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts and lists into ``a.b.0.c`` keys (MLflow params)."""
    if isinstance(tree, list) and all(not isinstance(v, dict | list) for v in tree):
        return {prefix: tree} if prefix else {}  # a list of scalars stays one param
    if isinstance(tree, dict):
        items = [(str(k), v) for k, v in tree.items()]
    elif isinstance(tree, list):
        items = [(str(i), v) for i, v in enumerate(tree)]
    else:
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in items:
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def metric_records(metrics: Mapping[str, float], step: int = 0) -> list[Metric]:
    """Metric records of ``metrics`` at ``step``, stamped now."""
    now = _now_ms()
    return [Metric(k, float(v), now, step) for k, v in metrics.items()]


def records_of(rows: Sequence[Sequence[Any]]) -> list[Metric]:
    """Metric records from ``[key, value, timestamp, step]`` rows (as kept in a checkpoint)."""
    return [Metric(str(k), float(v), int(t), int(s)) for k, v, t, s in rows]


def rows_of(records: Sequence[Metric]) -> list[list[Any]]:
    """``[key, value, timestamp, step]`` rows of metric records."""
    return [[r.key, r.value, r.timestamp, r.step] for r in records]


def _now_ms() -> int:
    return int(time.time() * 1000)


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A temporary folder for files that are logged as artifacts and then dropped."""
    with tempfile.TemporaryDirectory(prefix="pipeline-") as d:
        yield Path(d)
