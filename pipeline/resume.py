"""Resume a run that was cut off (``make run RESUME=<run id>``), exactly: in the same MLflow run,
from its last finished task's checkpoint, with every metric step logged once and, on the same
machine, the accuracy matrix an uninterrupted run gives.

The checkpoint after each task holds what carrying on needs (:class:`pipeline.results.Progress`):
the weights, every strategy's state and the head's width, the random number generators, the
rows evaluated so far and the last task's metrics (logged only where the cut-off process had
not logged them). A task cut off mid-way restarts from its start: its training curves are
logged at its end only (:class:`pipeline.trainer.TaskLogger`), so nothing of it was logged. The
data samplers need no state: each task's order is a function of the seed and the task.

The config is the run's own; an override may change only where it runs (threads, device,
progress bars, paths), not what it computes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from omegaconf import OmegaConf

from pipeline import checkpoints, distributed, runfiles
from pipeline.config.compose import parse_dotlist
from pipeline.config.paths import PathsConfig
from pipeline.errors import ConfigError
from pipeline.experiment import check_machine, from_dict
from pipeline.keys import SPLITS
from pipeline.processes import process_alive
from pipeline.results import SequenceResult
from pipeline.runner import TASKS_DONE_TAG, Resume, run_sequence
from pipeline.store import Store
from pipeline.tracking import OWNER_TAG, Run, scratch_dir

#: What a resume may change: where it runs, not what it computes.
WHERE_IT_RUNS = ("trainer.threads", "trainer.accelerator", "trainer.progress_bar", "paths.")
RESUMABLE = ("RUNNING", "FAILED", "KILLED")


def resume_run(run_id: str, paths: PathsConfig, overrides: Sequence[str] = ()) -> SequenceResult:
    """Carry on run ``run_id`` from its last checkpoint, in the same run.

    Raises:
        ConfigError: no such run, a run that finished or still runs, an override that changes
            the experiment, a run that cannot be resumed (before anything runs).
        DataError, DivergenceError: as :func:`pipeline.runner.run_sequence`.
    """
    changing = [o for o in overrides if not o.startswith(WHERE_IT_RUNS)]
    if changing:
        raise ConfigError(
            f"resume: '{changing[0]}' would change the experiment; a resume may change only "
            f"{', '.join(k.rstrip('.') + ('*' if k.endswith('.') else '') for k in WHERE_IT_RUNS)}"
        )
    store = Store.of(paths)
    store.client(create=False)
    try:
        run = Run.get(store, run_id)
    except LookupError as e:
        raise ConfigError(f"resume: {e}") from None
    if not distributed.started_as_replica():  # the main process has checked and owns the run
        check_resumable(run)
    with scratch_dir() as tmp:
        last = checkpoints.last_checkpoint(run, tmp)
    checkpoint = last.contents
    if checkpoint is not None and not checkpoint["pipeline"].get("progress"):
        raise ConfigError(
            f"resume: run {run_id}'s checkpoints were written by an older pipeline, without "
            "what a resume needs; run it again"
        )
    try:
        tree = checkpoint["pipeline"]["config"] if checkpoint else runfiles.read_config(run)
    except LookupError as e:
        raise ConfigError(f"resume: {e}") from None
    where = [o for o in overrides if not o.startswith("paths.")]
    merged = OmegaConf.merge(OmegaConf.create(tree), parse_dotlist(where, "resume"))
    cfg = check_machine(from_dict(OmegaConf.to_container(merged, resolve=True)))  # type: ignore[arg-type]
    cfg.paths = paths
    if checkpoint is None and not cfg.tracking.log_checkpoints and run.tasks_logged():
        raise ConfigError(
            f"resume: run {run_id} logged no checkpoint (tracking.log_checkpoints=false): "
            "there is nothing to carry on from"
        )
    if last.unreadable and not distributed.started_as_replica():
        print(unreadable_warning(run_id, last, [t.name for t in cfg.data.tasks]), file=sys.stderr)
    splits = tuple(s for s in run.tags.get("splits", ",".join(SPLITS)).split(",") if s)
    return run_sequence(
        cfg, lambda: Run.reopen(store, run_id), splits=splits, resume=Resume(checkpoint)
    )


def unreadable_warning(run_id: str, last: checkpoints.LastCheckpoint, tasks: Sequence[str]) -> str:
    """The line that says which checkpoints do not load and where the run carries on instead:
    after the newest one that loads, or from its first task when none does. The resume goes
    on rather than stops: the tasks after that point are trained again, in the same run, with
    the same seed (the matrix an uninterrupted run gives, on the same machine); refusing
    would leave the run unfinishable."""
    names = ", ".join(f.name for f in last.unreadable)
    at = last.file.index + 1 if last.file is not None else 0
    found = f"carrying on from {last.file.name}" if last.file else "no checkpoint loads"
    rest = (
        f"the run restarts at task {at + 1} of {len(tasks)} ({tasks[at]})"
        if at < len(tasks)
        else "every task is done, only the results are written"
    )
    return f"warning: run {run_id}: checkpoint(s) {names} do not load (truncated?); {found}: {rest}"


def check_resumable(run: Run) -> None:
    """Refuse a run that finished, or that a live process still writes.

    Raises:
        ConfigError: one line saying which.
    """
    status = run.status
    if status == "FINISHED":
        raise ConfigError(f"resume: run {run.run_id} finished; there is nothing to resume")
    if status not in RESUMABLE:
        raise ConfigError(f"resume: run {run.run_id} is {status}, not {'/'.join(RESUMABLE)}")
    owner = run.tags.get(OWNER_TAG, "")
    alive = process_alive(owner) if owner else False
    if status == "RUNNING" and alive is not False:
        where = "this machine" if alive else f"host {owner.partition(':')[0]}"
        raise ConfigError(
            f"resume: run {run.run_id} is running (process {owner} on {where}); stop it first"
        )


@dataclass
class RunRow:
    """One line of ``make runs``."""

    run_id: str
    name: str
    experiment: str
    status: str
    tasks: str  # "1/2": finished tasks of the sequence
    started: str
    resumable: bool


def list_runs(store: Store, experiment: str = "", limit: int = 30) -> list[RunRow]:
    """The newest task-sequence runs of the store (of one MLflow experiment, if named), each with
    what became of it: a RUNNING run whose process is gone is shown ``RUNNING (dead)`` and can be
    resumed, as can a FAILED or KILLED one.

    Raises:
        ConfigError: no experiment of that name.
    """
    client = store.client(create=False)
    exps = list(client.search_experiments())
    if experiment:
        exps = [e for e in exps if e.name == experiment]
        if not exps:
            raise ConfigError(f"runs: no MLflow experiment '{experiment}' in the store {store}")
    names = {e.experiment_id: e.name for e in exps}
    found = client.search_runs(list(names), max_results=limit, order_by=["start_time DESC"])
    rows = []
    for r in found:
        tags, status = r.data.tags, r.info.status
        if "tasks" not in tags:  # a comparison's or a sweep's parent run: no sequence of its own
            continue
        owner = tags.get(OWNER_TAG, "")
        alive = process_alive(owner) if owner else False
        if status == "RUNNING":
            status += (
                " (dead)" if alive is False else "" if alive else f" (on {owner.split(':')[0]})"
            )
        total = len(tags["tasks"].split(" -> "))
        rows.append(
            RunRow(
                r.info.run_id,
                r.info.run_name or "",
                names[r.info.experiment_id],
                status,
                f"{tags.get(TASKS_DONE_TAG, '0')}/{total}",
                time.strftime("%Y-%m-%d %H:%M", time.localtime(r.info.start_time / 1000)),
                r.info.status in ("FAILED", "KILLED") or status == "RUNNING (dead)",
            )
        )
    return rows
