"""The MLflow Model Registry of a run's store, following the data: ``make register`` (and
``make best``) register a run's final model; an erasure withdraws what it replaced.

:func:`register`: the last task's checkpoint of a finished run becomes an MLflow pyfunc model
(:class:`~pipeline.registry.model.CheckpointModel`, with a signature: float32 images
``N x C x H x W`` in, ``logits`` and ``class`` out), logged under the run's ``model/`` and
registered as a new version of the registered model (default name: the run's experiment), with
the alias ``champion`` and the lineage tags of :mod:`pipeline.registry.lineage`. Then::

    mlflow.pyfunc.load_model("models:/<name>@champion").predict(images)
    mlflow models serve -m models:/<name>@champion --env-manager local

(with ``MLFLOW_TRACKING_URI`` naming the store: ``sqlite:///<store>/mlflow.db`` for a local
one, or the tracking server). A refused name, an unknown run, one still running or without
checkpoints: one line, exit 2, nothing registered.

The model's files hold the network's weights and the checkpoint's metadata, not the optimizer
or the strategies' state: a replay buffer's training samples never reach the registry.

:func:`follow_erasure` (called by :mod:`pipeline.unlearning` once its new run has finished):
every version of the replaced run is tagged ``pipeline.erased=<request key>`` and
``pipeline.superseded_by=<new run>``, loses its aliases to the new run's version (registered
with the same lineage tags), and its files are deleted. Deleted are the files, not the
version: MLflow's registry keeps no copy of a version's files (its source is the run's
``model/`` folder, in the run's artifact store, local or on a server), so deleting that folder
drops the old weights for good, while the version stays as the audit record of what was
served, until when and why (loading it fails: its files are gone).
"""

from __future__ import annotations

from .following import follow_erasure
from .names import CHAMPION, RegistryError, check_name, default_name
from .versions import Registered, register

__all__ = [
    "CHAMPION",
    "Registered",
    "RegistryError",
    "check_name",
    "default_name",
    "follow_erasure",
    "register",
]
