"""The lineage of a registered model version: tags that say where its weights come from.

Per version: the run (``pipeline.run_id``, its experiment and name), the checkpoint file, the
config (``pipeline.config``, a ``runs:/`` pointer to the run's ``config.yaml``, and its SHA-256),
the commit (``pipeline.git_commit``), the data (the run's ``md5.<task>.<file>`` tags, copied as
they are), the tasks, the scenario and strategy, the retention class (``pipeline.retention``),
the study and trial of a sweep's run (``pipeline.study``, ``pipeline.trial``,
``pipeline.kind``), and the erasures behind the weights: ``pipeline.erased_samples``, the count
of erased samples per task (the config's ``data.erased``), and ``pipeline.erasure_requests``,
the keys of the requests applied (never the samples, nor their ids).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pipeline.checkpoints import CheckpointFile
from pipeline.runfiles import CHECKSUMS_FILE, CONFIG_FILE, read_config, read_erasures
from pipeline.tracking import Run, scratch_dir

from .names import MAX_TAG_VALUE, RUN_TAG, RegistryError, fits

#: On a run an exact unlearning trained: the run it replaced (``pipeline.unlearning.FROM_TAG``,
#: which tests/test_registry.py checks this equals).
FROM_TAG = "pipeline.unlearned_from"
COMMIT_TAG = "mlflow.source.git.commit"
#: The run's tags copied under the version's own key.
_FROM_RUN = {
    "sweep.study": "pipeline.study",
    "sweep.trial": "pipeline.trial",
    "kind": "pipeline.kind",
    "strategy": "pipeline.strategy",
}


def lineage_tags(run: Run, experiment: str, file: CheckpointFile) -> dict[str, str]:
    """The lineage tags of a version of ``run``'s model (see the module docstring).

    Args:
        run: the run.
        experiment: its MLflow experiment's name.
        file: the checkpoint the version serves.

    Raises:
        RegistryError: the run's ``config.yaml`` or ``erasures.json`` is unreadable.
    """
    info = run.client.get_run(run.run_id)
    tags = dict(info.data.tags)
    try:
        config = read_config(run)
        digest = _sha256(run, CONFIG_FILE)
        requests = applied_requests(run)
    except LookupError as e:
        raise RegistryError(str(e)) from None
    tasks = [str(t.get("name", "")) for t in config.get("data", {}).get("tasks", []) or []]
    erased = config.get("data", {}).get("erased") or {}
    out = {
        RUN_TAG: run.run_id,
        "pipeline.experiment": experiment,
        "pipeline.run_name": info.info.run_name or "",
        "pipeline.checkpoint": file.name,
        "pipeline.config": f"runs:/{run.run_id}/{CONFIG_FILE}",
        "pipeline.config_sha256": digest,
        "pipeline.git_commit": tags.get(COMMIT_TAG, "unknown"),
        "pipeline.tasks": tags.get("tasks") or " -> ".join(tasks),
        "pipeline.scenario": str(config.get("scenario", "")),
        "pipeline.retention": str(config.get("retention", "any")),
        "pipeline.erased_samples": json.dumps({t: len(ids) for t, ids in sorted(erased.items())}),
        "pipeline.erasure_requests": fits(requests) or "none",
        **{key: tags[tag] for tag, key in _FROM_RUN.items() if tag in tags},
        **checksums(run, tags),
    }
    return {k: v[:MAX_TAG_VALUE] for k, v in out.items() if v != ""}


def checksums(run: Run, tags: dict[str, str]) -> dict[str, str]:
    """The MD5 of every dataset file the run read: its ``md5.<task>.<file>`` tags, else its
    ``data_checksums.json`` under the same keys (none: an empty dict)."""
    found = {k: v for k, v in tags.items() if k.startswith("md5.")}
    if found:
        return found
    try:
        per_task: Any = run.read_json(CHECKSUMS_FILE)
    except LookupError:
        return {}
    if not isinstance(per_task, dict):
        return {}
    return {
        f"md5.{task}.{name}": str(md5)
        for task, files in per_task.items()
        if isinstance(files, dict)
        for name, md5 in files.items()
    }


def applied_requests(run: Run) -> list[str]:
    """The keys of the erasure requests applied to the run's weights, oldest first: each
    exact unlearning that trained it or one of the runs it descends from (the runs named by
    their ``pipeline.unlearned_from`` tags, whose erased samples its config still leaves
    out), and, as ``buffers:<key>``, each removal from its own checkpoints' stored samples.

    Raises:
        LookupError: the run's ``erasures.json`` is unreadable.
    """
    chain: list[list[str]] = []
    seen: set[str] = set()
    current: Run | None = run
    while current is not None and current.run_id not in seen:
        seen.add(current.run_id)
        own = current is run
        try:
            records = read_erasures(current)
        except LookupError:
            if own:
                raise
            records = []  # an ancestor's history: its requests are in the config's counts
        chain.append([k for r in records if (k := _applied_key(r, current.run_id, own))])
        parent = current.tags.get(FROM_TAG)
        current = _get(run, parent) if parent else None
    keys: list[str] = []
    for k in (k for found in reversed(chain) for k in found):
        if k not in keys:
            keys.append(k)
    return keys


def _applied_key(record: dict[str, Any], run_id: str, own: bool) -> str | None:
    """The key of a record of ``erasures.json`` that was applied to run ``run_id``: the
    unlearning that trained it; on the run itself, a removal from its stored samples (keyed
    as an unlearning keys its request). ``None``: one that replaced the run, or neither."""
    if "request" in record:
        return str(record["request"]) if record.get("unlearned_run") == run_id else None
    if own and "task" in record and "ids" in record:
        ids = {str(record["task"]): sorted({int(i) for i in record["ids"]})}
        digest = hashlib.sha256(json.dumps(ids, sort_keys=True).encode()).hexdigest()[:16]
        return f"buffers:{digest}"
    return None


def _get(run: Run, run_id: str) -> Run | None:
    try:
        return Run.get(run.store, run_id)
    except LookupError:
        return None  # an ancestor deleted from the store: its history goes with it


def _sha256(run: Run, path: str) -> str:
    """The SHA-256 of the artifact ``path`` of the run."""
    with scratch_dir() as tmp:
        return hashlib.sha256(run.download(path, tmp).read_bytes()).hexdigest()
