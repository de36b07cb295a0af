"""A run's checkpoints: one per task, written after the task and before its metrics, read back
to resume a run, to draw a landscape, to erase samples (a new revision replaces the old one).

Each holds the network's weights, the optimizer, every strategy's state and the metadata a
resume needs (:class:`CheckpointMeta`), and is loaded back into a rebuilt module
(:func:`load_checkpoint`). Names and folders: :mod:`pipeline.runfiles`.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from pipeline.config.schema import ExperimentConfig
from pipeline.data.loading import LEGACY_SHAPE
from pipeline.disk import room_for
from pipeline.experiment import from_dict
from pipeline.models import build_model
from pipeline.module import ContinualModule
from pipeline.runfiles import CHECKPOINT_DIR
from pipeline.strategies import build_strategies
from pipeline.strategies.base import tensor_bytes
from pipeline.tracking import Run, scratch_dir

# -- checkpoints -----------------------------------------------------------------------------------
CHECKPOINT_FORMAT = 2  # 1: written by Lightning's Trainer.save_checkpoint (same keys we read)


_CHECKPOINT = re.compile(r"^task(\d+)-([A-Za-z0-9_-]+?)(?:\.r(\d+))?\.ckpt$")


@dataclass(frozen=True)
class CheckpointFile:
    """One checkpoint artifact: the task it follows and its revision (0 as trained; each
    erasure that changes it adds one)."""

    index: int
    task: str
    revision: int = 0

    @property
    def base(self) -> str:
        """The file name without revision (``task00-mnist.ckpt``)."""
        return f"task{self.index:02d}-{self.task}.ckpt"

    @property
    def name(self) -> str:
        return (
            self.base
            if not self.revision
            else self.base.replace(".ckpt", f".r{self.revision}.ckpt")
        )

    @property
    def path(self) -> str:
        """The artifact path in the run."""
        return f"{CHECKPOINT_DIR}/{self.name}"

    @classmethod
    def parse(cls, name: str) -> CheckpointFile | None:
        m = _CHECKPOINT.match(Path(name).name)
        return cls(int(m.group(1)), m.group(2), int(m.group(3) or 0)) if m else None


@dataclass
class CheckpointMeta:
    """What a checkpoint says about itself, besides the weights and the strategies' state."""

    run_id: str
    task_index: int
    task_name: str
    classes_per_task: list[int]
    config: dict[str, Any]
    progress: dict[str, Any] = field(default_factory=dict)  # results.Progress, for a resume
    input_shape: list[int] = field(default_factory=lambda: list(LEGACY_SHAPE))


class LoadedCheckpoint(NamedTuple):
    """A checkpoint rebuilt: the module (CPU, eval mode), the run's config, its metadata
    (``run_id``, ``task_index``, ``task_name``, ``classes_per_task``)."""

    module: ContinualModule
    cfg: ExperimentConfig
    meta: dict[str, Any]


def save_checkpoint(
    run: Run,
    module: ContinualModule,
    optimizers: Sequence[torch.optim.Optimizer],
    meta: CheckpointMeta,
) -> None:
    """Log a checkpoint after task ``meta.task_index``: the network, the optimizers (for
    resuming), every strategy's state and ``meta``."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "state_dict": module.state_dict(),
        "optimizer_states": [o.state_dict() for o in optimizers],
        "strategies": module.strategy_states(),
        "pipeline": asdict(meta),
    }
    _upload(run, payload, CheckpointFile(meta.task_index, meta.task_name))


def _upload(run: Run, payload: dict[str, Any], file: CheckpointFile) -> None:
    with scratch_dir() as tmp:
        path = tmp / file.name
        what = f"the checkpoint {file.name} (the scratch folder: TMPDIR= moves it)"
        with room_for(tmp.parent, what, tensor_bytes(payload)):
            torch.save(payload, path)
        run.log_file(path, CHECKPOINT_DIR)


def copy_checkpoint(source: Run, file: CheckpointFile, target: Run, config: dict[str, Any]) -> None:
    """Log ``source``'s checkpoint ``file`` in ``target`` (as revision 0), its metadata naming
    ``target`` and ``config``: a run that carries on from it (an unlearning) resumes with its
    own config.

    Raises:
        LookupError: it cannot be downloaded.
        ValueError: it does not load.
    """
    with scratch_dir() as tmp:
        payload = _read(source.download(file.path, tmp))
    payload["pipeline"] |= {"run_id": target.run_id, "config": config}
    _upload(target, payload, CheckpointFile(file.index, file.task))


def load_checkpoint(path: str | Path, *, strategies: bool = True) -> LoadedCheckpoint:
    """Rebuild the module (network and strategy state) from a checkpoint file.

    Args:
        path: the checkpoint file.
        strategies: rebuild the strategies and their state too; ``False``: the network alone
            (a module without strategies, as the Model Registry serves it, from a checkpoint
            that may hold no strategy state: :mod:`pipeline.registry`).

    Raises:
        ValueError: the file is not a checkpoint written by the pipeline (or is truncated).
    """
    ckpt = _read(path)
    meta = ckpt["pipeline"]
    cfg = from_dict(meta["config"])
    shape = tuple(meta.get("input_shape", LEGACY_SHAPE))  # older checkpoints: MNIST's
    model = build_model(
        cfg.model, (shape[0], shape[1], shape[2]), meta["classes_per_task"], cfg.scenario
    )
    module = ContinualModule(model, build_strategies(cfg) if strategies else [], cfg.optim)
    module.load_state_dict(ckpt["state_dict"])
    module.load_strategy_states(ckpt.get("strategies", {}))
    return LoadedCheckpoint(module.eval(), cfg, {k: v for k, v in meta.items() if k != "config"})


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw contents of a checkpoint file (weights, optimizers, strategy states, metadata).

    Raises:
        ValueError: the file is not a checkpoint written by the pipeline (or is truncated).
    """
    return _read(path)


def _read(path: str | Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or "config" not in ckpt["pipeline"]:
            raise KeyError("pipeline")
    except (OSError, KeyError, RuntimeError, TypeError, EOFError, pickle.UnpicklingError) as e:
        why = f"{type(e).__name__}: {e}"
        raise ValueError(f"{Path(path).name}: not a pipeline checkpoint ({why})") from None
    return ckpt


def checkpoint_files(run: Run) -> dict[int, list[CheckpointFile]]:
    """Every checkpoint artifact of a run, by task index, revisions in ascending order."""
    found: dict[int, list[CheckpointFile]] = {}
    for path in run.list_files(CHECKPOINT_DIR):
        f = CheckpointFile.parse(path)
        if f is not None:
            found.setdefault(f.index, []).append(f)
    return {i: sorted(fs, key=lambda f: f.revision) for i, fs in sorted(found.items())}


def latest_checkpoints(run: Run) -> dict[int, CheckpointFile]:
    """The newest revision of each task's checkpoint (what every reader uses)."""
    return {i: fs[-1] for i, fs in checkpoint_files(run).items()}


class LastCheckpoint(NamedTuple):
    """What :func:`last_checkpoint` found: the contents of the newest checkpoint that loads and
    its file (``None``, ``None`` when none does), and the newer ones that do not load."""

    contents: dict[str, Any] | None
    file: CheckpointFile | None
    unreadable: list[CheckpointFile]


def last_checkpoint(run: Run, dst: Path) -> LastCheckpoint:
    """The run's checkpoint after its latest finished task: the newest revision, of the
    highest task index, that loads. One that does not (cut off mid-upload, truncated by a full
    disk) is passed over for the one before it, and listed in ``unreadable``: the caller says
    so, since the tasks after the one found are trained again."""
    unreadable: list[CheckpointFile] = []
    for revisions in reversed(list(checkpoint_files(run).values())):
        for f in reversed(revisions):
            try:
                return LastCheckpoint(_read(run.download(f.path, dst)), f, unreadable)
            except (LookupError, ValueError):
                unreadable.append(f)
    return LastCheckpoint(None, None, unreadable)


def fetch_checkpoint(run: Run, file: CheckpointFile, dst: Path) -> LoadedCheckpoint:
    """Download ``file`` into the folder ``dst`` and load it.

    Raises:
        LookupError: it cannot be downloaded.
        ValueError: it does not load.
    """
    return load_checkpoint(run.download(file.path, dst))


def rewrite_checkpoints(run: Run, edit: Callable[[ContinualModule], int]) -> dict[str, int]:
    """Apply ``edit`` to every task's checkpoint, keeping one revision per task.

    ``edit`` changes a loaded module in place and returns how many things it changed. Per
    task: the newest revision that loads is edited; when something changed, it is uploaded as
    the next revision; only then are the other revisions removed. Uploads never overwrite, so
    a crash leaves at worst an extra revision: a complete new one (readers take the newest)
    or a truncated one (it does not load: the next rewrite skips and removes it). Running the
    same edit again finishes the job: the newest revision has nothing left to change, and the
    count comes from the older revision the crash left behind.

    Returns:
        For each task's checkpoint (by its revision-free name), what ``edit`` changed.

    Raises:
        LookupError: a task has no checkpoint that loads.
    """
    changed: dict[str, int] = {}
    for revisions in checkpoint_files(run).values():
        with scratch_dir() as tmp:
            newest, path, loaded = _newest_loadable(run, revisions, tmp)
            n = edit(loaded.module)
            keep = newest
            if n:
                ckpt = _read(path)
                ckpt["strategies"] = loaded.module.strategy_states()
                keep = CheckpointFile(newest.index, newest.task, newest.revision + 1)
                _upload(run, ckpt, keep)
            else:
                n = _changed_before(
                    run, [f for f in revisions if f.revision < newest.revision], edit, tmp
                )
            for f in revisions:
                if f != keep:
                    run.delete_file(f.path)
            changed[keep.base] = n
    return changed


def _newest_loadable(
    run: Run, revisions: list[CheckpointFile], tmp: Path
) -> tuple[CheckpointFile, Path, LoadedCheckpoint]:
    for f in reversed(revisions):
        try:
            path = run.download(f.path, tmp)
            return f, path, load_checkpoint(path)
        except (LookupError, ValueError):
            continue  # a revision cut off mid-upload: removed once a good one is kept
    raise LookupError(f"run {run.run_id}: no readable checkpoint {revisions[-1].base}")


def _changed_before(
    run: Run, older: list[CheckpointFile], edit: Callable[[ContinualModule], int], tmp: Path
) -> int:
    """What ``edit`` changes in the newest older revision that loads (0 when there is none):
    the count of an edit whose upload a crash cut off from its clean-up."""
    if not older:
        return 0
    try:
        _, _, loaded = _newest_loadable(run, older, tmp)
    except LookupError:
        return 0
    return edit(loaded.module)
