"""The registry follows an erasure: the versions of the run an exact unlearning replaced are
withdrawn, their files deleted, and the new run's model takes their place and their aliases."""

from __future__ import annotations

from mlflow.entities.model_registry import ModelVersion

from pipeline.runfiles import MODEL_DIR
from pipeline.shield import ShieldedClient
from pipeline.store import Store
from pipeline.tracking import Run

from .names import ERASED_TAG, REQUEST_TAG, SUPERSEDED_TAG, SUPERSEDES_TAG
from .versions import register


def follow_erasure(
    store: Store, source_run_id: str, new_run_id: str, request_key: str
) -> list[str]:
    """Carry erasure request ``request_key`` into the Model Registry: run ``source_run_id``
    was replaced by run ``new_run_id``, trained without the samples.

    For each registered model holding versions of the source run: the new run's model is
    registered as its new version (with its lineage, ``pipeline.erasure_request`` and
    ``pipeline.supersedes``), every alias of the old versions moves to it, and the old
    versions are tagged ``pipeline.erased=<request_key>`` and
    ``pipeline.superseded_by=<new_run_id>`` and say so in their description. Then the old
    versions' files (the source run's ``model/``: its weights) are deleted; the versions stay,
    as the record of what was served and why it was withdrawn.

    Call it once the new run has finished. Run again after a crash, it finishes the job:
    the new run's version is registered once, the aliases left on old versions move, the
    files left are deleted.

    Args:
        store: the store of both runs (and of their registry).
        source_run_id: the run the unlearning replaced (its full id).
        new_run_id: the run it trained.
        request_key: the erasure request's key.

    Returns:
        What it did, a line each; empty when no version of the source run is registered.

    Raises:
        RegistryError: the new run cannot be registered (not finished, no checkpoints):
            nothing was changed in the registry.
    """
    client = store.client()
    old = list(client.search_model_versions(f"run_id = '{source_run_id}'"))
    if not old:
        return []
    lines: list[str] = []
    for name in sorted({v.name for v in old}):
        versions = sorted((v for v in old if v.name == name), key=lambda v: int(v.version))
        lines += _replace(store, client, name, versions, new_run_id, request_key)
    lines += _delete_files(store, client, source_run_id, old)
    return lines


def _replace(
    store: Store,
    client: ShieldedClient,
    name: str,
    old: list[ModelVersion],
    new_run_id: str,
    key: str,
) -> list[str]:
    """Register (or find) the new run's version of ``name``, move the old versions' aliases
    to it, tag and describe the old versions as withdrawn."""
    numbers = ",".join(str(v.version) for v in old)
    new = _version_of(client, name, new_run_id)
    if new is None:
        extra = {REQUEST_TAG: key, SUPERSEDES_TAG: numbers}
        new = str(register(store, new_run_id, name, aliases=(), tags=extra).version)
        lines = [f"model {name}: version {new} registered from run {new_run_id}"]
    else:
        lines = [f"model {name}: version {new} of run {new_run_id} was registered already"]
    moved = sorted({a for v in old for a in client.get_model_version(name, v.version).aliases})
    for alias in moved:
        client.set_registered_model_alias(name, alias, new)
    if moved:
        lines.append(f"model {name}: alias {', '.join(moved)} moved to version {new}")
    withdrawn = (
        f"withdrawn by erasure request {key}: its files are deleted; superseded by version "
        f"{new} (run {new_run_id})"
    )
    for v in old:
        client.set_model_version_tag(name, v.version, ERASED_TAG, key)
        client.set_model_version_tag(name, v.version, SUPERSEDED_TAG, new_run_id)
        client.update_model_version(name, v.version, description=withdrawn)
    lines.append(
        f"model {name}: version {numbers} tagged {ERASED_TAG}={key}, {SUPERSEDED_TAG}={new_run_id}"
    )
    return lines


def _version_of(client: ShieldedClient, name: str, run_id: str) -> str | None:
    """The newest version of ``name`` registered from run ``run_id``, if any."""
    found = [v for v in client.search_model_versions(f"run_id = '{run_id}'") if v.name == name]
    return str(max(int(v.version) for v in found)) if found else None


def _delete_files(
    store: Store, client: ShieldedClient, run_id: str, old: list[ModelVersion]
) -> list[str]:
    """Delete the source run's ``model/`` (the files of every version registered from it);
    name the versions whose files are elsewhere (registered by other means), left alone."""
    try:
        run = Run.get(store, run_id)
    except LookupError:
        return [f"run {run_id} is not in the store: its versions' files were not looked for"]
    ours = f"{str(client.get_run(run.run_id).info.artifact_uri).rstrip('/')}/{MODEL_DIR}"
    lines = []
    if MODEL_DIR in run.list_files():
        run.delete_file(MODEL_DIR)
        lines.append(f"run {run_id}: {MODEL_DIR}/ deleted (the withdrawn versions' weights)")
    for v in old:
        if (v.source or "").rstrip("/") != ours:
            lines.append(
                f"model {v.name}: version {v.version}'s files at {v.source} are not the run's "
                f"{MODEL_DIR}/ (registered by other means): delete them by hand"
            )
    return lines
