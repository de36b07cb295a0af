"""A run's final model as an MLflow pyfunc model: :class:`CheckpointModel` serves the network
of a pipeline checkpoint; :func:`save_model` writes one to a folder, signature and input example
included, from the checkpoint file of the run's last task.

What the model folder holds of the checkpoint is its network's weights and its metadata (the
config, the classes, the input shape): the optimizer states and the strategies' state are left
out (:func:`serving_checkpoint`). A prediction needs neither, and the strategies' state holds
training samples (a replay buffer's images), which a served model must not carry around: the
registry keeps no sample of a run, whatever its strategy.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import torch
from mlflow.models.signature import ModelSignature
from mlflow.pyfunc.model import PythonModel, PythonModelContext
from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec
from typing_extensions import override

from pipeline.checkpoints import load_checkpoint, read_checkpoint
from pipeline.config.paths import REPO_ROOT
from pipeline.provenance import TRACKED_PACKAGES
from pipeline.runfiles import MODEL_DIR

from .names import quiet

#: The name of the checkpoint among the pyfunc model's artifacts (``context.artifacts``).
ARTIFACT = "checkpoint"
#: What :meth:`CheckpointModel.predict` returns: per sample, the logits over the classes the
#: network outputs, and the predicted class (their argmax).
LOGITS, CLASS = "logits", "class"
TASK_PARAM = "task"  # a task-incremental model's head: the task the samples come from


class CheckpointModel(PythonModel):
    """The network of a pipeline checkpoint, in eval mode on the CPU, as a pyfunc model.

    Input: float32 images, ``N x C x H x W`` as the checkpoint's ``input_shape`` says,
    normalised as the run's data module normalises them (what its training batches held).
    Output: ``{"logits": N x K float32, "class": N int64}``. A task-incremental network (one
    head per task) takes the task of the samples as the ``task`` parameter (default: its last
    task); the other scenarios have one head and no parameter.
    """

    _module: torch.nn.Module
    _last_task: int

    @override
    def load_context(self, context: PythonModelContext) -> None:
        loaded = load_checkpoint(context.artifacts[ARTIFACT], strategies=False)
        self._module = loaded.module.eval()
        self._last_task = len(loaded.meta["classes_per_task"]) - 1

    @override
    def predict(
        self,
        context: PythonModelContext,
        model_input: np.ndarray,
        params: dict[str, Any] | None = None,
    ) -> dict[str, np.ndarray]:
        x = torch.as_tensor(np.ascontiguousarray(model_input, dtype=np.float32))
        task = int((params or {}).get(TASK_PARAM, self._last_task))
        with torch.inference_mode():
            logits = self._module(x, torch.full((x.shape[0],), task, dtype=torch.long))
        return {LOGITS: logits.numpy(), CLASS: logits.argmax(1).numpy()}


def signature(meta: dict[str, Any], scenario: str) -> ModelSignature:
    """The model's signature: ``-1 x C x H x W`` float32 images in; the logits (``-1 x K``)
    and the classes (``-1``) out; a ``task`` parameter for a task-incremental network."""
    c, h, w = (int(v) for v in meta["input_shape"])
    classes = meta["classes_per_task"]
    width = max(classes) if scenario != "class" else sum(classes)
    inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, c, h, w))])
    outputs = Schema(
        [
            TensorSpec(np.dtype(np.float32), (-1, width), LOGITS),
            TensorSpec(np.dtype(np.int64), (-1,), CLASS),
        ]
    )
    if scenario != "task":
        return ModelSignature(inputs=inputs, outputs=outputs)
    task = ParamSpec(TASK_PARAM, "long", len(classes) - 1)
    return ModelSignature(inputs=inputs, outputs=outputs, params=ParamSchema([task]))


def serving_checkpoint(source: Path, target: Path) -> dict[str, Any]:
    """Write to ``target`` the checkpoint ``source`` without its optimizer states, its
    strategies' state (training samples among them) and its resume progress; its metadata.

    Raises:
        ValueError: ``source`` is not a pipeline checkpoint.
    """
    ckpt = read_checkpoint(source)
    meta = {**ckpt["pipeline"], "progress": {}}
    slim = {
        "format": ckpt.get("format"),
        "state_dict": ckpt["state_dict"],
        "optimizer_states": [],
        "strategies": {},
        "pipeline": meta,
    }
    torch.save(slim, target)
    return meta


def requirements() -> list[str]:
    """The model's pip requirements: the installed versions of the packages a run records
    (the pipeline itself is not on an index: ``--env-manager local`` in the project's
    environment serves it)."""
    out = []
    for name in TRACKED_PACKAGES:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return out


def save_model(checkpoint: Path, folder: Path) -> Path:
    """Save the pyfunc model of ``checkpoint`` (a run's last task's) into ``folder/model``
    (:data:`pipeline.runfiles.MODEL_DIR`):
    ``MLmodel`` with the signature, the serving checkpoint, an input example of zeros (no
    sample of the run), the requirements and, when the project has one, its ``uv.lock``.

    Raises:
        ValueError: ``checkpoint`` is not a pipeline checkpoint.
    """
    artifact = folder / "serving.ckpt"
    meta = serving_checkpoint(checkpoint, artifact)
    scenario = str(meta["config"].get("scenario", "domain"))
    example = np.zeros((1, *(int(v) for v in meta["input_shape"])), dtype=np.float32)
    path = folder / MODEL_DIR
    with quiet():
        mlflow.pyfunc.save_model(
            path=str(path),
            python_model=CheckpointModel(),
            artifacts={ARTIFACT: str(artifact)},
            signature=signature(meta, scenario),
            input_example=example,
            pip_requirements=requirements(),
            uv_project_path=REPO_ROOT if (REPO_ROOT / "uv.lock").is_file() else None,
        )
    return path
