"""Reproduce a published table: every cell under the table's protocol, over several seeds, as
one parent MLflow run with a child per cell and seed, then the published numbers beside ours
with a verdict per cell (``make reproduce TABLE=<name> [SEEDS=5]``).

The package: :mod:`~pipeline.reproduce.spec` (the tables of ``conf/table/``, checked before
anything runs), :mod:`~pipeline.reproduce.verdict` (ours beside theirs, pure) and, here, the
runs and the report. A reproduction cut off is carried on like a comparison, with
``RESUME=<parent run id>``: its finished children are read back, not run again; resumed with
more seeds, it runs only the new ones (``SEEDS=5`` after a first look at one seed).
A cell whose published hyperparameters do not reproduce may carry ``tune:``: an Optuna study
on the validation split chooses them first (:mod:`~pipeline.reproduce.tuning`), and the report
says so beside the cell. ``CELLS=<key>,<key>`` runs only those cells
(``domain-ewc,class-lwf``); the children are found again by name, so a later run of the whole
table resumed from it runs only the rest.

``JOBS=<n>`` runs n children at a time, each in its own process (the standard library's
process pool, spawned: torch and Lightning do not survive a fork well), each with an equal
share of the cores (``trainer.threads``, unless an override sets it). The children are
independent runs under one parent, written to the store as a sweep's workers write theirs.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from pipeline import runfiles
from pipeline.compare import changed_settings, finished_children
from pipeline.compare.table import COLUMNS
from pipeline.config.schema import ExperimentConfig
from pipeline.disk import room_for
from pipeline.errors import ConfigError
from pipeline.exiting import exit_now, unwind_on_sigterm
from pipeline.experiment import compose, require_one_process
from pipeline.metrics import percent
from pipeline.reproduce import tuning
from pipeline.reproduce.spec import Cell, Table, load_table, select, tables
from pipeline.reproduce.verdict import Outcome, Verdict, count, markdown
from pipeline.runner import run_sequence
from pipeline.store import Store
from pipeline.strategies import REGISTRY, StrategyRefused
from pipeline.tracking import Run

__all__ = ["Outcome", "Reproduction", "Verdict", "load_table", "reproduce", "tables"]

KIND = "reproduction"  # the parent run's `kind` tag
REPORT_FILE = "reproduction.md"
SEEDS_TAG = "seeds"  # the seeds of the latest (re)start: a resume may add seeds


@dataclass
class Reproduction:
    """A finished reproduction: its outcomes and where they were written."""

    table: Table
    seeds: list[int]
    outcomes: list[Outcome]
    parent_run_id: str
    report: Path

    @property
    def within(self) -> int:
        return count(self.outcomes, self.table)[0]


def plan(
    table: Table, seeds: Sequence[int], overrides: Sequence[str]
) -> list[tuple[Outcome, list[ExperimentConfig]]]:
    """Every cell's configs, one per seed; a cell whose strategy is not implemented here, or
    refuses the scenario, gets none and the reason.

    Raises:
        ConfigError: a cell's override or a shared one is bad (one line naming the cell).
    """
    planned: list[tuple[Outcome, list[ExperimentConfig]]] = []
    for cell in table.cells:
        outcome = Outcome(cell)
        lacking = [name for name in cell.strategy if name not in REGISTRY]
        if lacking:
            outcome.not_run = f"not implemented here: {', '.join(lacking)}"
            planned.append((outcome, []))
            continue
        try:
            if cell.tune is not None:
                tuning.check(cell)
            configs = [_config(table, cell, seed, overrides) for seed in seeds]
        except StrategyRefused as e:
            outcome.not_run = str(e).removeprefix("strategy: ")
            configs = []
        except ConfigError as e:
            raise ConfigError(f"conf/table/{table.name}.yaml, cell {cell.key}: {e}") from None
        planned.append((outcome, configs))
    return planned


def _config(table: Table, cell: Cell, seed: int, overrides: Sequence[str]) -> ExperimentConfig:
    strategy = f"strategy=[{','.join(cell.strategy)}]"
    cfg = compose(
        table.experiment,
        [*cell.overrides, *overrides, f"scenario={cell.scenario}", strategy, f"seed={seed}"],
    )
    require_one_process(cfg, "reproduce")
    cfg.tracking.run_name = f"{cell.key}-seed{seed}"
    return cfg


def reproduce(
    name: str,
    seeds: Sequence[int],
    overrides: Sequence[str] = (),
    out_dir: Path | None = None,
    log: Callable[[str], None] = print,
    resume: str | None = None,
    jobs: int = 1,
    cells: Sequence[str] = (),
) -> Reproduction:
    """Run every cell of the table ``conf/table/<name>.yaml`` on every seed and write the
    report (published beside ours, a verdict per cell).

    Args:
        name: a table of ``conf/table/``.
        seeds: the experiment seeds of every cell.
        overrides: applied to every run after the cell's own (``trainer.iterations=100`` to
            try the machinery quickly; the report lists them).
        out_dir: where the report goes (default ``<paths.reports>/reproduce-<name>-<time>``).
        resume: the parent run of a reproduction cut off, with the same arguments (or more
            seeds: the new ones run).
        jobs: children run at a time, each in its own process.
        cells: the keys of the cells to run (:attr:`~pipeline.reproduce.spec.Cell.key`); all
            when empty.

    Raises:
        ConfigError: a bad table, cell or override; a cell key the table lacks; a ``resume``
            run that is not the same reproduction, or had seeds that are not asked now (before
            anything runs).
    """
    table = select(load_table(name), cells)
    planned = plan(table, seeds, overrides)
    ready = [configs for _, configs in planned if configs]
    if not ready:
        raise ConfigError(f"conf/table/{name}.yaml: no cell can run here")
    base = ready[0][0]
    store = Store.of(base.paths)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = out_dir or base.paths.reports_dir() / f"reproduce-{name}-{stamp}"
    params = {"table": name, "overrides": " ".join(overrides)}
    done = _resumed(store, resume, params, seeds) if resume else {}
    outcomes = [outcome for outcome, _ in planned]
    with _parent_run(store, base, name, resume) as parent:
        if not resume:
            parent.log_params({**params, "seeds": _seed_list(seeds)})
        parent.set_tags({SEEDS_TAG: _seed_list(seeds)})  # grows when resumed with more seeds
        log(f"parent run {parent.run_id} (if cut off, resume it: RESUME={parent.run_id})")
        _tune(table, planned, seeds, overrides, jobs, log)
        configs = [cfg for _, cell_configs in planned for cfg in cell_configs]
        results = _children(configs, table.metric, store, parent.run_id, done, log, jobs)
        for outcome, cell_configs in planned:
            for cfg in cell_configs:
                run_id, value = results[cfg.tracking.run_name]
                outcome.run_ids.append(run_id)
                outcome.values.append(value)
        lines = markdown(table, outcomes, seeds)
        if cells:
            lines = [f"Only these cells of the table ran: {', '.join(cells)}.", "", *lines]
        report = write_report(table, lines, overrides, out_dir, parent, outcomes)
    return Reproduction(table, list(seeds), outcomes, parent.run_id, report)


def _tune(
    table: Table,
    planned: list[tuple[Outcome, list[ExperimentConfig]]],
    seeds: Sequence[int],
    overrides: Sequence[str],
    jobs: int,
    log: Callable[[str], None],
) -> None:
    """For each cell with ``tune:`` that can run, its study on validation (run or resumed);
    its configs then take the chosen values, and its outcome says how they were chosen."""
    for outcome, cell_configs in planned:
        cell = outcome.cell
        if cell.tune is not None and cell_configs:
            chosen, outcome.tuned = tuning.tune(table, cell, overrides, jobs, log)
            cell_configs[:] = [_config(table, cell, s, [*chosen, *overrides]) for s in seeds]


def _seed_list(seeds: Sequence[int]) -> str:
    return ",".join(map(str, seeds))


def _resumed(
    store: Store, resume: str, params: dict[str, str], seeds: Sequence[int]
) -> dict[str, str]:
    """The finished children of the reproduction ``resume``, by run name, once it is known to
    be this one: the same table and overrides, and no seed it ran left out now."""
    done = finished_children(store, resume, params, KIND)
    parent = store.client().get_run(Run.get(store, resume).run_id).data
    before = parent.tags.get(SEEDS_TAG, parent.params.get("seeds", ""))
    dropped = sorted({int(s) for s in before.split(",") if s} - set(seeds))
    if dropped:
        raise ConfigError(
            f"resume: run '{resume}' compared other settings: seeds {before!r} (now "
            f"{_seed_list(seeds)!r} leaves out {dropped}); resume it with the same seeds or more"
        )
    return done


def _children(
    configs: Sequence[ExperimentConfig],
    metric: str,
    store: Store,
    parent_id: str,
    done: dict[str, str],
    log: Callable[[str], None],
    jobs: int,
) -> dict[str, tuple[str, float]]:
    """Every child's run id and compared number in %, by run name: read back where a resumed
    reproduction finished it, run otherwise (``jobs`` at a time, each in its own process)."""
    read = COLUMNS[metric][1]
    results: dict[str, tuple[str, float]] = {}
    todo: list[ExperimentConfig] = []
    for cfg in configs:
        name = cfg.tracking.run_name
        changed = changed_settings(store, done[name], cfg) if name in done else ""
        if changed:
            log(f"{name}: run {done[name]} trained other settings ({changed}); running it again")
        elif name in done:
            try:
                results[name] = done[name], percent(read(runfiles.read_result(store, done[name])))
                log(f"{name}: finished before (run {done[name]})")
                continue
            except LookupError as e:
                log(f"{name}: {e}; running it again")
        todo.append(cfg)
    total = len(todo)
    if jobs == 1:
        for place, cfg in enumerate(todo, 1):
            log(f"[{place}/{total}] {cfg.tracking.run_name}")
            results[cfg.tracking.run_name] = _child(cfg, metric, parent_id)
        return results
    share = max(1, _cores() // jobs)
    for cfg in todo:
        cfg.trainer.threads = cfg.trainer.threads or share
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, spawn, initializer=unwind_on_sigterm) as pool:
        running = {pool.submit(_pooled_child, cfg, metric, parent_id): cfg for cfg in todo}
        log(f"{total} runs, {jobs} at a time")
        try:
            for place, future in enumerate(as_completed(running), 1):
                name = running[future].tracking.run_name
                results[name] = future.result()
                log(f"[{place}/{total}] {name}: {results[name][1]:.1f} (run {results[name][0]})")
        except BaseException:  # a child failed, Ctrl-C, SIGTERM: the others stop as well
            stop_workers()
            raise
    return results


def stop_workers() -> None:
    """SIGTERM the process pool's workers (their runs end KILLED); no queued run starts after.

    A worker stopped ends its own process (:func:`_pooled_child`), which breaks the pool: it
    fails every future it still holds, so the queued runs never start. They are not cancelled
    first: Python 3.11's broken pool raises InvalidStateError in its own thread on a future the
    caller cancelled, a traceback on the terminal after Ctrl-C (CPython gh-107219), and one
    that cancels them itself (``shutdown(cancel_futures=True)``) left them pending here.
    """
    for worker in multiprocessing.active_children():
        worker.terminate()


def _child(cfg: ExperimentConfig, metric: str, parent_id: str) -> tuple[str, float]:
    """One child run under ``parent_id``: its id and the compared number in %."""
    result = run_sequence(cfg, Run.of(cfg, parent_id))
    return result.run_id, percent(COLUMNS[metric][1](result))


def _pooled_child(cfg: ExperimentConfig, metric: str, parent_id: str) -> tuple[str, float]:
    """:func:`_child` in a process pool's worker (module level, so the pool can send it).

    A worker stopped (SIGTERM from the parent process, or the terminal's Ctrl-C) ends its run
    KILLED and then its own process: the pool catches every exception of a task, ``SystemExit``
    too, and would hand the worker the next queued run.
    """
    try:
        return _child(cfg, metric, parent_id)
    except (KeyboardInterrupt, SystemExit) as e:
        code = e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 130
        exit_now(code)


def _cores() -> int:
    """The cores this process may use (its affinity, where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _parent_run(
    store: Store, base: ExperimentConfig, name: str, resume: str | None
) -> AbstractContextManager[Run]:
    if resume:
        return Run.reopen(store, resume)
    experiment = base.tracking.experiment or base.name  # the children's experiment
    return Run.start(store, experiment, f"reproduce-{name}", tags={"kind": KIND, "table": name})


def write_report(
    table: Table,
    lines: list[str],
    overrides: Sequence[str],
    out_dir: Path,
    parent: Run,
    outcomes: Sequence[Outcome],
) -> Path:
    """The report (Markdown) to ``out_dir`` and the parent run, with each cell's mean as a
    metric (``reproduce/<cell>``) and the count of cells within the tolerance."""
    head = [f"# Reproducing {table.description or table.name}", ""]
    taken = [o for o in overrides if not o.startswith("paths.")]  # where, not what
    if taken:
        head += [f"Every run also took: `{' '.join(taken)}`.", ""]
    path = out_dir / REPORT_FILE
    with room_for(out_dir, "the reproduction's report"):
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join([*head, *lines, "", f"Parent run: `{parent.run_id}`.", ""]))
    runfiles.log_report_files(parent, [path])
    within, ran = count(outcomes, table)
    metrics = {f"reproduce/{o.cell.key}": o.mean for o in outcomes if o.values}
    parent.log_metrics({**metrics, "reproduce/within": float(within), "reproduce/ran": float(ran)})
    return path
