"""What each command of ``python -m pipeline`` does, given its parsed arguments
(:mod:`pipeline.cli` parses them, runs one and turns errors into exit codes). Heavy modules are
imported inside each command, once its arguments have passed."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config.compose import compose_paths
from pipeline.config.paths import PathsConfig
from pipeline.errors import ConfigError, RunFailed

if TYPE_CHECKING:
    from pipeline.results import SequenceResult
    from pipeline.store import Store


def store_of(paths: PathsConfig, create: bool = True) -> Store:
    """The tracking store, opened now: a store that is down fails before anything runs
    (a ``StoreError`` is a ``ConfigError``: exit 2). Commands that only read runs do not
    create a local store (``create=False``)."""
    from pipeline.store import Store

    store = Store.of(paths)
    store.client(create)
    return store


def _print_result(result: SequenceResult, store: Store) -> None:
    from pipeline.report import format_matrix, format_summary, headline

    print()
    for split in ("test", "val"):
        print(format_matrix(result.matrix[split], result.displays, split))
        print()
    print(headline(result.matrix["test"], result.displays))
    print(format_summary(result.summary["test"], "test"))
    seconds = ", ".join(
        f"{n} {s:.1f} s" for n, s in zip(result.displays, result.train_seconds, strict=True)
    )
    print(f"training time per task: {seconds}")
    print(f"\nMLflow run {result.run_id} (store: {store})")
    url = store.ui_url(result.experiment_id, result.run_id)
    print(f"  open it: {url}" if store.server else f"  open the UI:  make ui   then  {url}")


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.experiment import compose

    if args.resume:
        return resume(args)
    if not args.experiment:
        raise ConfigError("run: name an experiment (conf/experiment/), or --resume a run")
    cfg = compose(args.experiment, args.overrides)  # ConfigError -> exit 2, before anything runs
    from pipeline import distributed

    # The main process opens the store before it starts the others (a store that is down fails
    # before any process starts); the others never open it.
    main = distributed.world_size_of(cfg.trainer) == 1 or not distributed.started_as_replica()
    store = store_of(cfg.paths) if main else None
    distributed.launch(cfg.trainer)
    from pipeline.runner import run_sequence
    from pipeline.tracking import Run

    print(
        f"experiment {cfg.name}: {' -> '.join(t.name for t in cfg.data.tasks)}, "
        f"strategy {'+'.join(cfg.strategy)}, {cfg.scenario}-incremental, seed {cfg.seed}"
    )
    result = run_sequence(cfg, Run.of(cfg))
    distributed.leave()
    if store is None:
        return 0
    _print_result(result, store)
    if not args.landscape:
        return 0
    if len(cfg.data.tasks) < 2 or not cfg.tracking.log_checkpoints:
        print("\nlandscape skipped: it needs 2+ tasks and tracking.log_checkpoints=true")
        return 0
    from pipeline.landscape import LandscapeError, draw

    print("\nforgetting in weight space (the line from theta_A to theta_B):")
    out = cfg.paths.reports_dir() / f"landscape-{result.run_id[:8]}"
    try:
        draw(store, result.run_id, out_dir=out, data_dir=cfg.paths.data_dir())
    except LandscapeError as e:
        raise RunFailed(f"landscape: {e}") from e
    return 0


def resume(args: argparse.Namespace) -> int:
    """`run --resume ID [overrides]`: carry on a run that was cut off, in the same run."""
    from pipeline.resume import resume_run

    # argparse took the first override for the experiment, which a resume does not name
    overrides = [*([args.experiment] if args.experiment else []), *args.overrides]
    paths = compose_paths([o for o in overrides if o.startswith("paths.")])
    store = store_of(paths, create=False)
    from pipeline import distributed

    if not distributed.started_as_replica():
        print(f"resuming run {args.resume}")
    result = resume_run(args.resume, paths, overrides)
    main = distributed.is_main()
    distributed.leave()
    if main:
        _print_result(result, store)
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from pipeline.resume import list_runs

    experiment, overrides = args.experiment, list(args.overrides)
    if "=" in experiment:  # argparse took the first override for the experiment
        experiment, overrides = "", [experiment, *overrides]
    rows = list_runs(store_of(compose_paths(overrides), create=False), experiment)
    if not rows:
        print("no task-sequence run in the store")
        return 0
    print(f"{'run id':<32}  {'started':<16}  {'status':<18}  tasks  {'name'}")
    for r in rows:
        mark = "  (resume: make run RESUME=<id>)" if r.resumable else ""
        print(f"{r.run_id:<32}  {r.started:<16}  {r.status:<18}  {r.tasks:>5}  {r.name}{mark}")
    return 0


def cmd_landscape(args: argparse.Namespace) -> int:
    from pipeline.landscape import LandscapeError, Options, draw

    paths = compose_paths(args.overrides)
    options = Options(points=args.points, grid=args.grid, samples=args.samples)
    out = Path(args.out) if args.out else paths.reports_dir() / f"landscape-{args.run[:8]}"
    try:
        draw(
            store_of(paths, create=False),
            args.run,
            args.vs or None,
            options=options,
            out_dir=out,
            data_dir=paths.data_dir(),
        )
    except LandscapeError as e:
        raise ConfigError(str(e)) from e  # exit 2, nothing written
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pipeline.compare import compare, format_text, strategy_list, table
    from pipeline.store import Store

    require_count(args.seeds, "--seeds", "make compare SEEDS=<n>")  # 0 seeds: no row to report
    names = strategy_list(args.strategies)
    seeds = list(range(args.seeds))
    print(f"comparing {', '.join(names)} on {args.experiment}, seeds {seeds}")
    c = compare(
        args.experiment,
        names,
        seeds,
        args.overrides,
        Path(args.out) if args.out else None,
        resume=args.resume or None,
    )
    print()
    print(format_text(table(c)))
    for name, why in c.skipped.items():
        print(f"not run: {name}: {why}")
    print(f"\nreport: {c.report_dir}/report.md (with table.txt and the plots)")
    store = Store.of(compose_paths([o for o in args.overrides if o.startswith("paths.")]))
    url = store.ui_url(c.rows[0].results[0].experiment_id, c.parent_run_id)
    print(f"MLflow parent run {c.parent_run_id}: {url}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from pipeline.reproduce import reproduce

    require_count(args.seeds, "--seeds", "make reproduce SEEDS=<n>")
    require_count(args.jobs, "--jobs", "make reproduce JOBS=<n>")
    seeds = list(range(args.seeds))
    print(f"reproducing {args.table}, seeds {seeds}")
    done = reproduce(
        args.table,
        seeds,
        args.overrides,
        Path(args.out) if args.out else None,
        resume=args.resume or None,
        jobs=args.jobs,
        cells=[c for c in args.cells.split(",") if c],
    )
    print("\n".join(done.report.read_text().splitlines()[2:]))
    print(f"report: {done.report}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from pipeline.sweep import report, sweep

    # Named as the user typed them (the sweep's own check would blame the sweep file).
    require_count(args.trials, "--trials", "make sweep TRIALS=<n>")
    require_count(args.workers, "--workers", "make sweep WORKERS=<n>")
    sets = list(args.set)
    if args.trials is not None:
        sets.append(f"trials={args.trials}")
    strategy = [s for s in args.strategy.replace("+", ",").split(",") if s]
    study = sweep(
        args.experiment,
        strategy,
        args.sweep,
        sets,
        args.overrides,
        study=args.study,
        workers=args.workers,
    )
    print(report.closing_hint(study.study_name, args.overrides))  # names this mode's tools
    return 0


def cmd_sweep_worker(args: argparse.Namespace) -> int:
    from pipeline.sweep import run_worker

    run_worker(args.study, compose_paths(args.overrides), args.index, args.workers)
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    from pipeline.best import best, config_name, format_best

    paths = compose_paths(args.overrides)
    store_of(paths, create=False)
    out = best(
        args.study, paths, args.rule, evaluate=not args.no_eval, with_default=not args.no_default
    )
    print(format_best(out))
    print(f"rerun it: make run EXP={config_name(args.study)}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from pipeline.viewers import serve_dashboard

    return serve_dashboard(compose_paths(args.overrides), args.host, args.port)


def cmd_shards(args: argparse.Namespace) -> int:
    from pipeline.data.loading import write_task_shards
    from pipeline.experiment import compose

    cfg = compose(args.experiment, args.overrides)
    names = [t.name for t in cfg.data.tasks]
    if args.task not in names:
        raise ConfigError(f"--task: '{args.task}' is not a task of {cfg.name} ({', '.join(names)})")
    task = cfg.data.tasks[names.index(args.task)]
    write_task_shards(task, cfg.data, cfg.paths.data_dir(), args.out)
    print(f"{args.task}: shards written to {args.out}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from pipeline.config.schema import to_yaml
    from pipeline.experiment import compose

    print(to_yaml(compose(args.experiment, args.overrides)), end="")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from pipeline.viewers import serve_ui

    return serve_ui(compose_paths(args.overrides), args.host, args.port)


def require_count(value: int | None, option: str, make: str) -> None:
    """Refuse a count option below 1 (None: not given), naming the make variable that sets it."""
    if value is not None and value < 1:
        raise ConfigError(f"{option} {value}: must be at least 1 ({make})")
