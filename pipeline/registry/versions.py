"""Registering a run's final model: checks first (the name, the run, its checkpoints, its
lineage), then the pyfunc model logged under the run's ``model/`` and a new version of the
registered model created from it, with its lineage tags and the ``champion`` alias."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mlflow.exceptions import MlflowException

from pipeline.checkpoints import CheckpointFile, latest_checkpoints
from pipeline.runfiles import MODEL_DIR
from pipeline.shield import ShieldedClient
from pipeline.store import Store
from pipeline.tracking import Run, scratch_dir

from .lineage import lineage_tags
from .model import save_model
from .names import CHAMPION, RegistryError, check_name, default_name, quiet


@dataclass(frozen=True)
class Registered:
    """A model version registered from a run.

    Attributes:
        name: the registered model.
        version: the version (MLflow's number, as text).
        run_id: the run whose final model it is.
        aliases: the aliases set on it.
        source: where its files are (the run's ``model/`` folder).
    """

    name: str
    version: str
    run_id: str
    aliases: tuple[str, ...]
    source: str

    @property
    def uri(self) -> str:
        """The URI that loads it: ``models:/<name>@<alias>``, or by its version number."""
        if self.aliases:
            return f"models:/{self.name}@{self.aliases[0]}"
        return f"models:/{self.name}/{self.version}"


def register(
    store: Store,
    run_id: str,
    name: str | None = None,
    *,
    aliases: Sequence[str] = (CHAMPION,),
    tags: Mapping[str, str] | None = None,
) -> Registered:
    """Register the final model of run ``run_id`` (its last task's checkpoint) as a new
    version of the registered model ``name`` in the store's Model Registry, and set
    ``aliases`` on it (``champion``: ``models:/<name>@champion`` loads it).

    Every check comes before anything is written: a refused name, run or checkpoint leaves
    the run and the registry as they were.

    Args:
        store: the run's store (its registry is the same database or server).
        run_id: the run, or a unique prefix of 8+ characters.
        name: the registered model (default: the run's MLflow experiment, see
            :func:`~pipeline.registry.names.default_name`); created when missing.
        aliases: the aliases to move onto the new version.
        tags: more tags for the version, besides its lineage.

    Raises:
        RegistryError: an unknown run, one still running or not finished, one without the
            checkpoint of its last task, an unreadable config, a name the registry refuses.
    """
    if name is not None:
        check_name(name)  # before the run is even looked up
    run = finished_run(store, run_id)
    experiment = str(run.client.get_experiment(run.experiment_id).name)
    name = check_name(default_name(experiment) if name is None else name)
    file = final_checkpoint(run)
    lineage = {**lineage_tags(run, experiment, file), **(tags or {})}
    source = log_model(run, file)
    client = run.client
    _ensure_model(client, name, experiment)
    about = f"run {run.run_id} of {experiment}: its network after task {file.task} ({file.name})"
    with quiet():
        version = client.create_model_version(
            name, source, run_id=run.run_id, tags=lineage, description=about
        )
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version.version)
    return Registered(name, str(version.version), run.run_id, tuple(aliases), source)


def finished_run(store: Store, run_id: str) -> Run:
    """The run ``run_id``, when it has finished.

    Raises:
        RegistryError: no such run; one still running, or one that ended otherwise (its last
            checkpoint is not its final model).
    """
    try:
        run = Run.get(store, run_id)
    except LookupError as e:
        raise RegistryError(str(e)) from None
    status = run.status
    if status == "RUNNING":
        raise RegistryError(
            f"run {run.run_id} is still running: register its model once it has finished"
        )
    if status != "FINISHED":
        raise RegistryError(
            f"run {run.run_id} ended {status}, not finished: its last checkpoint is not its "
            f"final model; resume it (make run RESUME={run.run_id[:8]}) and register it then"
        )
    return run


def final_checkpoint(run: Run) -> CheckpointFile:
    """The newest checkpoint of the run's last task.

    Raises:
        RegistryError: the run has no checkpoints, or none of its last task (an erasure
            replaced it by a new run and deleted its later checkpoints).
    """
    files = latest_checkpoints(run)
    if not files:
        raise RegistryError(
            f"run {run.run_id} has no checkpoints (tracking.log_checkpoints=false): there is "
            "no model to register; train it again with tracking.log_checkpoints=true"
        )
    tasks = [t for t in run.tags.get("tasks", "").split(" -> ") if t]
    last = max(files)
    if tasks and last != len(tasks) - 1:
        raise RegistryError(
            f"run {run.run_id} has no checkpoint of its last task ({tasks[-1]}): an erasure "
            "replaced it (its tag pipeline.unlearned_to names the run to register)"
        )
    return files[last]


def log_model(run: Run, file: CheckpointFile) -> str:
    """Log the pyfunc model of checkpoint ``file`` under the run's ``model/``; its URI.

    Raises:
        RegistryError: the checkpoint cannot be downloaded or does not load.
    """
    with scratch_dir() as tmp:
        try:
            path = save_model(run.download(file.path, tmp / "download"), tmp)
        except (LookupError, ValueError) as e:
            raise RegistryError(f"run {run.run_id}: {e}") from None
        run.client.log_artifacts(run.run_id, str(path), MODEL_DIR)
    root = str(run.client.get_run(run.run_id).info.artifact_uri).rstrip("/")
    return f"{root}/{MODEL_DIR}"


def _ensure_model(client: ShieldedClient, name: str, experiment: str) -> None:
    """Create the registered model ``name`` unless it exists (another process may create it
    at the same moment: its creation is kept)."""
    try:
        client.get_registered_model(name)
        return
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    try:
        client.create_registered_model(
            name, description=f"final models of runs of {experiment} (make register)"
        )
    except MlflowException as e:
        if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
