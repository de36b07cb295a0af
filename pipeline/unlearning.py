"""Exact unlearning: after an erasure request, weights that no longer depend on the samples.

Removing samples from a run's stored state (:mod:`pipeline.erasure`) leaves the weights that
were trained on them. Here the run is rewound instead: to the checkpoint after the last task
that trained before any of the samples was seen (a sample of task ``k`` is first seen in task
``k``'s training; a replay buffer holds it only later), and the tasks from ``k`` on are trained
again with the samples removed from the data (``data.erased``) and so from every buffer, with
the same config and seeds. On the same machine with deterministic algorithms this gives the
weights a run from scratch without the samples gives (tests/test_unlearning.py checks it to
1e-6), at the cost of the tasks from ``k`` on only: SISA (Bourtoule et al. 2021,
arXiv:1912.03817) with the tasks as its slices, the per-task checkpoints and the exact resume
(:mod:`pipeline.resume`) as its machinery.

The result is a new MLflow run in the original's experiment, tagged ``pipeline.unlearned_from``
(and the original ``pipeline.unlearned_to``): the checkpoints of the tasks before ``k`` are
carried over into it (they never saw the samples; their config now names the erased ids, so a
resume of the new run keeps them out), the others are trained. Only when it has finished are
the original's checkpoints from task ``k`` on and its ``landscape/`` deleted: every stored
weight that depended on the samples. The request (task, ids, never the samples' contents),
what was deleted and what it cost are appended to ``erasures.json`` in both runs.

A killed unlearning is carried on by the same ``make erase`` command: the unfinished run of the
same request (tagged with its key) is resumed, exactly, from its last checkpoint.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import checkpoints, runfiles
from pipeline.audit import Audit, audit, format_audit
from pipeline.config.paths import PathsConfig
from pipeline.config.schema import ExperimentConfig, to_dict
from pipeline.data.tasks import Split
from pipeline.erasure import ErasureError, checked_task
from pipeline.experiment import check_machine, from_dict
from pipeline.registry import follow_erasure
from pipeline.resume import resume_run
from pipeline.runner import Resume, run_sequence
from pipeline.store import Store
from pipeline.tracking import Run, scratch_dir

FROM_TAG = "pipeline.unlearned_from"  # on the run an unlearning trained: the original's id
TO_TAG = "pipeline.unlearned_to"  # on the original: the run that replaced it
REQUEST_TAG = "pipeline.erasure_request"  # on the run an unlearning trained: the request's key
MODE_TAG = "pipeline.unlearning"  # on it too: exact or approximate
#: on an approximate unlearning: the first task it did not carry over (a later exact erasure
#: of its run retrains from there at the latest)
APPROX_FROM_TAG = "pipeline.approximate_from_task"


@dataclass(frozen=True)
class Request:
    """An erasure request: per task name, the ids of its training samples to erase."""

    ids: Mapping[str, Sequence[int]]

    def __post_init__(self) -> None:
        if not self.ids or not all(self.ids.values()):
            raise ErasureError("an erasure request names at least one sample id of a task")
        if min(min(v) for v in self.ids.values()) < 0:
            raise ErasureError("sample ids are indices >= 0 in the dataset's training file")

    @property
    def tasks(self) -> dict[str, list[int]]:
        """Per task, its ids sorted and once each."""
        return {t: sorted(set(map(int, v))) for t, v in sorted(self.ids.items())}

    @property
    def key(self) -> str:
        """What names the request (the same ids give the same key): a SHA-256 of its ids."""
        text = json.dumps(self.tasks, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Plan:
    """What an unlearning will do, every check passed (nothing changed yet).

    Attributes:
        source: the original run.
        cfg: its config with the request's ids added to ``data.erased`` (and this machine's
            paths).
        splits: the splits it evaluated (a sweep's trial: ``val`` only).
        rewind: the first task trained again; the checkpoints before it are carried over.
        carried: the original's checkpoints of the tasks before ``rewind``.
    """

    source: Run
    request: Request
    cfg: ExperimentConfig
    splits: tuple[str, ...]
    rewind: int
    carried: list[checkpoints.CheckpointFile] = field(default_factory=list)


@dataclass
class Unlearned:
    """What an unlearning did: the new run, where it rewound to, what it deleted and cost."""

    run_id: str
    source: str
    rewind: int
    tasks: list[str]
    deleted: list[str]
    seconds: float
    original_seconds: float
    resumed: bool
    registry: list[str] = field(default_factory=list)
    audit: Audit | None = None


def plan(store: Store, run_id: str, request: Request, paths: PathsConfig) -> Plan:
    """Check the request against the run, before anything changes.

    Raises:
        ErasureError: an unknown run or task, a run still running or cut off, one unlearned
            already (its successor is to be erased from), no checkpoints, an id the task does
            not train on or already erased, a task the request would leave empty, a
            distributed run.
    """
    try:
        source = Run.get(store, run_id)
    except LookupError as e:
        raise ErasureError(str(e)) from None
    tags, status = source.tags, source.status
    if TO_TAG in tags:
        raise ErasureError(
            f"run {source.run_id} was unlearned into run {tags[TO_TAG]}: erase from that run"
        )
    if status != "FINISHED":
        what = "still running" if status == "RUNNING" else f"{status}, not finished"
        raise ErasureError(
            f"run {source.run_id} is {what}: let it finish (or resume it: make run "
            f"RESUME={source.run_id[:8]}) before erasing from it"
        )
    files = checkpoints.latest_checkpoints(source)
    if not files:
        raise ErasureError(
            f"run {source.run_id} has no checkpoints (tracking.log_checkpoints=false): nothing "
            "to rewind to; train it again with data.erased set"
        )
    try:  # read now: a file that is no list would stop the unlearning after its training
        runfiles.read_erasures(source)
    except LookupError as e:
        raise ErasureError(str(e)) from None
    cfg, splits = _config(source, files, paths)
    names = [t.name for t in cfg.data.tasks]
    # an approximate unlearning's ids may be asked again: exactly, this time
    again = APPROX_FROM_TAG in tags
    for task, ids in request.tasks.items():
        _check_ids(source, cfg, task, ids, paths, again)
    if cfg.trainer.devices * cfg.trainer.num_nodes > 1:
        raise ErasureError(
            f"run {source.run_id} trained on several processes: unlearning runs in one "
            "(a distributed unlearning is not built yet)"
        )
    rewind = min(names.index(t) for t in request.tasks)
    if APPROX_FROM_TAG in tags:  # its weights still depend on what it erased approximately
        rewind = min(rewind, int(tags[APPROX_FROM_TAG]))
    missing = [i for i in range(rewind) if i not in files]
    if missing:
        raise ErasureError(
            f"run {source.run_id} lacks the checkpoint of task {names[missing[0]]}: it cannot "
            "be rewound; train it again with data.erased set"
        )
    erased = {t: sorted({*cfg.data.erased.get(t, []), *request.tasks.get(t, [])}) for t in names}
    cfg.data.erased = {t: ids for t, ids in erased.items() if ids}
    return Plan(source, request, cfg, splits, rewind, [files[i] for i in range(rewind)])


def _check_ids(
    source: Run,
    cfg: ExperimentConfig,
    task: str,
    ids: list[int],
    paths: PathsConfig,
    again_ok: bool = False,
) -> None:
    """Refuse ids of a task the run lacks, ids erased already (unless ``again_ok``) or not
    trained on, a request that empties the task, a streamed task."""
    names = [t.name for t in cfg.data.tasks]
    if task not in names:
        raise ErasureError(
            f"task '{task}' is not in run {source.run_id} (tasks: {', '.join(names)})"
        )
    again = sorted(set(ids) & set(cfg.data.erased.get(task, [])))
    if again and again_ok:  # checked as the run was before it erased them
        cfg = copy.deepcopy(cfg)
        cfg.data.erased[task] = sorted(set(cfg.data.erased[task]) - set(ids))
    elif again:
        raise ErasureError(
            f"--ids: {', '.join(map(str, again[:5]))} of task '{task}' were erased already "
            f"(run {source.run_id}'s data.erased)"
        )
    trained = checked_task(cfg, names.index(task), ids, paths.data_dir()).train
    if not isinstance(trained, Split):
        raise ErasureError(
            f"task '{task}' is streamed from its shards: unlearning retrains it without the "
            "samples, which needs it in memory (data.storage=memory; --mode buffers removes "
            "them from the stored samples only)"
        )
    if len(trained) <= len(ids):
        raise ErasureError(
            f"--ids: erasing {len(ids)} sample(s) would leave task '{task}' with no "
            f"training sample (it trains on {len(trained)})"
        )


def unlearn(
    store: Store, run_id: str, request: Request, paths: PathsConfig, audited: bool = True
) -> Unlearned:
    """Erase ``request`` from run ``run_id`` exactly: retrain from the last checkpoint that
    never saw the samples, in a new run, then delete what still depends on them.

    A killed unlearning of the same request is resumed (exactly) rather than started again.
    Unless ``audited`` is false or the run's ``audit.after_erase`` is, the new run is audited
    (:mod:`pipeline.audit`) before the original's weights are deleted.

    Raises:
        ErasureError: as :func:`plan` (nothing changed).
        DataError, DivergenceError: as :func:`pipeline.runner.run_sequence` (the original
            run is left as it was).
    """
    p = plan(store, run_id, request, paths)
    started = time.perf_counter()
    earlier = _earlier_attempt(p)
    if earlier is None:
        new_id = retrain(p)
    elif earlier.status != "FINISHED":
        resume_run(earlier.run_id, paths)
        new_id = earlier.run_id
    else:  # trained, then cut off before the original was cleared: finish that
        new_id = earlier.run_id
    seconds = time.perf_counter() - started
    report = None
    if (
        audited and p.cfg.audit.after_erase
    ):  # while the original's weights are there to be scored too
        files = checkpoints.latest_checkpoints(p.source)
        with scratch_dir() as tmp:
            original = checkpoints.fetch_checkpoint(p.source, files[max(files)], tmp).module
        report = audit(store, new_id, paths, original)
    done = replace_original(p, Run.get(store, new_id), seconds, resumed=earlier is not None)
    done.audit = report
    return done


def _config(
    source: Run, files: Mapping[int, checkpoints.CheckpointFile], paths: PathsConfig
) -> tuple[ExperimentConfig, tuple[str, ...]]:
    """The run's config, as its first checkpoint holds it, on this machine's paths, and the
    splits it evaluated."""
    with scratch_dir() as tmp:
        try:
            raw = checkpoints.read_checkpoint(source.download(next(iter(files.values())).path, tmp))
        except (LookupError, ValueError) as e:
            raise ErasureError(f"run {source.run_id}: {e}") from None
    cfg = check_machine(from_dict(raw["pipeline"]["config"]))
    cfg.paths = paths
    progress = raw["pipeline"].get("progress") or {}
    if not progress:
        raise ErasureError(
            f"run {source.run_id}'s checkpoints were written by an older pipeline, without "
            "what a rewind needs; train it again with data.erased set"
        )
    return cfg, tuple(progress["rows"])


def _earlier_attempt(p: Plan) -> Run | None:
    """The run an earlier ``make erase`` of the same request started from this run (it was
    killed, or killed after training and before it cleared the original), if any."""
    client = p.source.client
    found = client.search_runs(
        [p.source.experiment_id],
        filter_string=(  # an exact one: not an approximate run of the same request
            f"tags.`{FROM_TAG}` = '{p.source.run_id}' and tags.`{REQUEST_TAG}` = "
            f"'{p.request.key}' and tags.`{MODE_TAG}` = 'exact'"
        ),
        max_results=1,
        order_by=["start_time DESC"],
    )
    if not found:
        return None
    run = Run.get(p.source.store, found[0].info.run_id)
    if run.status != "FINISHED" and not checkpoints.checkpoint_files(run) and p.rewind:
        return None  # cut off before it held anything: start again
    return run


def retrain(p: Plan, suffix: str = "unlearned", **tags: str) -> str:
    """Train the tasks from ``p.rewind`` on, in a new run (named ``<original>-<suffix>``,
    with ``tags`` too) that first receives the checkpoints before it; the new run's id."""
    source = p.source
    name = source.client.get_run(source.run_id).info.run_name or source.run_id[:8]
    experiment = source.client.get_experiment(source.experiment_id).name
    every = {FROM_TAG: source.run_id, REQUEST_TAG: p.request.key, MODE_TAG: "exact", **tags}
    opened: list[str] = []

    @contextmanager
    def open_run() -> Iterator[Run]:
        with Run.start(source.store, experiment, f"{name}-{suffix}", None, every) as run:
            opened.append(run.run_id)
            for f in p.carried:  # what never saw the samples, now under the new config
                checkpoints.copy_checkpoint(source, f, run, to_dict(p.cfg))
            yield run

    checkpoint = None
    if p.carried:
        with scratch_dir() as tmp:
            checkpoint = checkpoints.read_checkpoint(source.download(p.carried[-1].path, tmp))
    run_sequence(p.cfg, open_run, splits=p.splits, resume=Resume(checkpoint, new_run=True))
    return opened[0]


def replace_original(
    p: Plan, new: Run, seconds: float, resumed: bool, mode: str = "exact", **more: Any
) -> Unlearned:
    """Delete what in the original depended on the samples; record the request in both runs."""
    source, deleted = p.source, []
    for index, revisions in checkpoints.checkpoint_files(source).items():
        if index >= p.rewind:
            for f in revisions:
                source.delete_file(f.path)
                deleted.append(f.path)
    for path in source.list_files(runfiles.LANDSCAPE_DIR):  # drawn from those weights
        source.delete_file(path)
        deleted.append(path)
    try:  # the original's per-task cost (retention.json)
        original = sum(r["wall_seconds"] for r in source.read_json(runfiles.LEDGER_FILE))
    except (LookupError, TypeError, KeyError):
        original = 0.0
    names = [t.name for t in p.cfg.data.tasks]
    record: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "mode": mode,
        "request": p.request.key,
        "ids": p.request.tasks,
        "unlearned_from": source.run_id,
        "unlearned_run": new.run_id,
        "retrained_from_task": names[p.rewind],
        "deleted": deleted,
        "seconds": round(seconds, 3),
        "original_seconds": round(original, 3),
        **more,
    }
    _record(new, record)  # first: the registry's lineage of the new run names the request
    # its registered versions: withdrawn, their files deleted, the new run's model in their place
    registry = follow_erasure(source.store, source.run_id, new.run_id, p.request.key)
    if runfiles.MODEL_DIR in source.list_files():  # a model/ no registered version names
        source.delete_file(runfiles.MODEL_DIR)
        deleted.append(runfiles.MODEL_DIR)
    record["registry"] = registry
    for run in (new, source):
        _record(run, record)
    erased = sum(len(v) for v in p.cfg.data.erased.values())
    new.log_metrics({"retention/erased_samples": erased}, step=len(p.cfg.data.erased))
    new.set_tags(
        {"erasures": len(runfiles.read_erasures(new)), "unlearning_seconds": f"{seconds:.1f}"}
    )
    source.set_tags({TO_TAG: new.run_id})
    return Unlearned(
        new.run_id, source.run_id, p.rewind, names, deleted, seconds, original, resumed, registry
    )


def _record(run: Run, record: dict[str, Any]) -> None:
    """Append ``record`` to the run's ``erasures.json``, once (run again after a crash, the
    clean-up writes it again)."""
    same = (record["request"], record["unlearned_run"])
    kept = [
        r for r in runfiles.read_erasures(run) if (r.get("request"), r.get("unlearned_run")) != same
    ]
    runfiles.write_erasures(run, [*kept, record])


def summary(done: Unlearned) -> list[str]:
    """What ``make erase`` prints."""
    ratio = done.seconds / done.original_seconds if done.original_seconds else float("nan")
    again = "resumed and finished" if done.resumed else "trained"
    names = ", ".join(Path(d).name for d in done.deleted[:4])
    audited = format_audit(done.audit) if done.audit else ["not audited (AUDIT=0)"]
    return [
        f"unlearned: run {done.run_id} {again} from task {done.tasks[done.rewind]} "
        f"({done.rewind} of {len(done.tasks)} task(s) carried over), in {done.seconds:.1f} s "
        f"= {ratio:.0%} of the original run's {done.original_seconds:.1f} s",
        f"deleted from run {done.source}: {len(done.deleted)} file(s) that depended on the "
        f"samples ({names}{'...' if len(done.deleted) > 4 else ''})",
        f"recorded in both runs: erasures.json; run {done.source[:8]} is tagged {TO_TAG}",
        *(f"registry: {line}" for line in done.registry),
        *audited,
    ]
