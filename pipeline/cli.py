"""Command line: ``python -m pipeline {run,config,compare,erase,landscape,data,ui}`` (the make
targets call these).

Exit codes: 0 success; 1 a run or provisioning failed (data missing, loss diverged); 2 a bad
config, override or argument (nothing was run, no MLflow run was created); 130 interrupted
(Ctrl-C); 143 terminated (SIGTERM). Interrupted or terminated, the MLflow runs end KILLED.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from pipeline.config import ConfigError, available, compose, to_yaml


def _print_result(result: object, store: str) -> None:
    from pipeline.report import format_matrix, format_summary, headline
    from pipeline.runner import SequenceResult
    from pipeline.tracking import ui_url

    assert isinstance(result, SequenceResult)
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
    print(f"\nMLflow run {result.run_id} (store: {store}/)")
    print(f"  open the UI:  make ui   then  {ui_url(result.experiment_id, result.run_id)}")


def cmd_run(args: argparse.Namespace) -> int:
    cfg = compose(args.experiment, args.overrides)  # ConfigError -> exit 2, before anything runs
    from pipeline.data.tasks import DataError
    from pipeline.module import DivergenceError
    from pipeline.runner import run_sequence

    print(
        f"experiment {cfg.name}: {' -> '.join(t.name for t in cfg.data.tasks)}, "
        f"strategy {'+'.join(cfg.strategy)}, {cfg.scenario}-incremental, seed {cfg.seed}"
    )
    try:
        result = run_sequence(cfg)
    except (DataError, DivergenceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    _print_result(result, cfg.tracking.store)
    if getattr(args, "landscape", False):
        return _landscape_after_run(cfg, result.run_id)
    return 0


def _landscape_after_run(cfg: object, run_id: str) -> int:
    """`run --landscape`: the line plot of the run just finished (``make forget``)."""
    from pipeline.config import ExperimentConfig
    from pipeline.landscape import LandscapeError, draw

    assert isinstance(cfg, ExperimentConfig)
    if len(cfg.data.tasks) < 2 or not cfg.tracking.log_checkpoints:
        print("\nlandscape skipped: it needs 2+ tasks and tracking.log_checkpoints=true")
        return 0
    print("\nforgetting in weight space (the line from theta_A to theta_B):")
    try:
        draw(cfg.tracking.store, run_id)
    except LandscapeError as e:
        print(f"error: landscape: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_landscape(args: argparse.Namespace) -> int:
    from pipeline.data.tasks import DataError
    from pipeline.landscape import LandscapeError, Options, draw

    options = Options(points=args.points, grid=args.grid, samples=args.samples)
    try:
        draw(
            args.store,
            args.run,
            args.vs or None,
            options=options,
            out_dir=Path(args.out) if args.out else None,
            data_root=args.data,
        )
    except LandscapeError as e:
        raise ConfigError(str(e)) from e  # exit 2, nothing written
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pipeline.compare import compare, default_strategies, format_text, table
    from pipeline.data.tasks import DataError
    from pipeline.module import DivergenceError
    from pipeline.tracking import ui_url

    names = default_strategies() if args.strategies == "all" else args.strategies.split(",")
    seeds = list(range(args.seeds))
    print(f"comparing {', '.join(names)} on {args.experiment}, seeds {seeds}")
    try:
        c = compare(
            args.experiment,
            names,
            seeds,
            args.overrides,
            Path(args.out) if args.out else None,
            resume=args.resume or None,
        )
    except (DataError, DivergenceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print()
    print(format_text(table(c)))
    for name, why in c.skipped.items():
        print(f"not run: {name}: {why}")
    first = c.rows[0].results[0]
    print(f"\nreport: {c.report_dir}/report.md (with table.txt and the plots)")
    print(
        f"MLflow parent run {c.parent_run_id}: make ui, then "
        f"{ui_url(first.experiment_id, c.parent_run_id)}"
    )
    return 0


def cmd_erase(args: argparse.Namespace) -> int:
    from pipeline.erasure import ErasureError, erase

    try:
        ids = [int(x) for x in args.ids.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--ids: expected comma-separated integers, got '{args.ids}'") from None
    try:
        record = erase(args.store, args.run, args.task, ids)
    except ErasureError as e:
        raise ConfigError(str(e)) from e
    for name, n in record["removed"].items():
        print(f"{name}: removed {n} stored sample(s)")
    print(f"recorded in run {args.run}: erasures.json, retention/erased_samples")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from pipeline.data.tasks import DataError
    from pipeline.sweep import sweep

    sets = list(args.set)
    if args.trials:
        sets.append(f"trials={args.trials}")
    strategy = [s for s in args.strategy.replace("+", ",").split(",") if s]
    try:
        study = sweep(
            args.experiment,
            strategy,
            args.sweep,
            sets,
            args.overrides,
            study=args.study,
            storage=args.storage,
            workers=args.workers,
        )
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"choose and test: make best STUDY={study.study_name}; browse: make dashboard, make ui")
    return 0


def cmd_sweep_worker(args: argparse.Namespace) -> int:
    from pipeline.data.tasks import DataError
    from pipeline.sweep import run_worker

    try:
        run_worker(args.study, args.storage, args.index, args.workers)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    from pipeline.best import best, format_best
    from pipeline.sweep import default_storage

    out = best(
        args.study,
        args.storage or default_storage(args.store),
        args.rule,
        evaluate=not args.no_eval,
        with_default=not args.no_default,
    )
    print(format_best(out))
    print(f"rerun it: make run EXP={Path(out['config']).stem}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from pipeline.sweep import default_storage

    storage = args.storage or default_storage(args.store)
    cmd = ["optuna-dashboard", "--host", "127.0.0.1", "--port", str(args.port)]
    if "://" not in storage:
        if not Path(storage).is_file():
            raise ConfigError(f"{storage}: no study storage yet (run `make sweep` first)")
        cmd += ["--storage-class", "JournalFileStorage"]
    print(f"optuna-dashboard on http://127.0.0.1:{args.port}/ over {storage}; Ctrl-C stops it")
    exe = os.path.join(os.path.dirname(sys.executable), "optuna-dashboard")
    os.execv(exe, [*cmd, storage])
    return 0  # pragma: no cover  (execv does not return)


def cmd_config(args: argparse.Namespace) -> int:
    print(to_yaml(compose(args.experiment, args.overrides)), end="")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from pipeline.tracking import artifact_root, client_for, tracking_uri

    client_for(args.store)  # create the database under the store's lock, not in the server
    cmd = [
        "mlflow",
        "ui",
        "--backend-store-uri",
        tracking_uri(args.store),
        "--default-artifact-root",
        str(artifact_root(args.store)),
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
    ]
    print(
        f"MLflow UI on http://127.0.0.1:{args.port}/#/experiments (store: {args.store}/); "
        "Ctrl-C stops it",
        flush=True,
    )
    exe = os.path.join(os.path.dirname(sys.executable), "mlflow")
    os.execv(exe, cmd)
    return 0  # pragma: no cover  (execv does not return)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    experiments = ", ".join(available("experiment"))
    for name, fn, help_ in (
        ("run", cmd_run, "run an experiment, tracked in MLflow"),
        ("config", cmd_config, "print an experiment's resolved config"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("experiment", help=f"file in conf/experiment/ ({experiments})")
        p.add_argument(
            "overrides",
            nargs="*",
            metavar="key=value",
            help="overrides: trainer.epochs=1, model=mlp, strategy=[naive] ...",
        )
        p.set_defaults(fn=fn)
        if name == "run":
            p.add_argument(
                "--landscape",
                action="store_true",
                help="then draw the loss and accuracy of tasks 0 and 1 along the line between "
                "their checkpoints (make forget)",
            )
    p = sub.add_parser("compare", help="compare strategies over seeds (table, report, plots)")
    p.add_argument("experiment", help=f"file in conf/experiment/ ({experiments})")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every run")
    p.add_argument(
        "--strategies",
        default="all",
        help="comma-separated names, a+b for a combination, or all (default)",
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--out", default="", help="report folder (default reports/compare-...)")
    p.add_argument(
        "--resume",
        default="",
        metavar="RUN_ID",
        help="parent run of a comparison that was cut off (same arguments): its finished runs "
        "are kept, the others run",
    )
    p.set_defaults(fn=cmd_compare)
    p = sub.add_parser(
        "landscape", help="forgetting in weight space: loss along a line / over a plane"
    )
    p.add_argument("run", help="MLflow run id: theta_A, theta_B = its checkpoints after tasks 0, 1")
    p.add_argument("--vs", default="", help="run id whose checkpoint after task 1 is theta_S")
    p.add_argument("--points", type=int, default=31, help="points along the line (default 31)")
    p.add_argument("--grid", type=int, default=21, help="plane grid per axis (default 21)")
    p.add_argument("--samples", type=int, default=2000, help="test samples per task (2000)")
    p.add_argument("--store", default="mlruns")
    p.add_argument("--data", default="", help="dataset folder (default: the run's data.root)")
    p.add_argument("--out", default="", help="folder (default reports/landscape-<run id[:8]>)")
    p.set_defaults(fn=cmd_landscape)
    p = sub.add_parser("erase", help="erase samples from every checkpoint of a run")
    p.add_argument("run", help="MLflow run id")
    p.add_argument("--task", required=True, help="task name (e.g. mnist)")
    p.add_argument("--ids", required=True, help="comma-separated sample ids")
    p.add_argument("--store", default="mlruns")
    p.set_defaults(fn=cmd_erase)
    p = sub.add_parser(
        "sweep",
        help="Optuna search of a strategy's hyperparameters (starts or resumes a study)",
        description="Objectives: plasticity and retention (a Pareto front; Optuna cannot prune "
        "multi-objective studies), or with --sweep accuracy the final average accuracy with "
        "pruning after each task. Trials read validation splits only.",
    )
    p.add_argument("experiment", help=f"file in conf/experiment/ ({experiments})")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every trial")
    p.add_argument("--strategy", required=True, help="strategy name(s), e.g. ewc or ewc,replay")
    p.add_argument(
        "--sweep",
        default="default",
        help=f"file in conf/sweep/ ({', '.join(available('sweep'))}; default: default)",
    )
    p.add_argument("--trials", type=int, default=0, help="trials to finish (default: the file's)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--study", default="", help="study name (default <experiment>-<strategy>)")
    p.add_argument(
        "--storage", default="", help="journal file or RDB URL (default mlruns/optuna/journal.log)"
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="key=value", help="sweep config override"
    )
    p.set_defaults(fn=cmd_sweep)
    p = sub.add_parser("sweep-worker", help="one worker process of a sweep (started by sweep)")
    p.add_argument("study")
    p.add_argument("--storage", required=True)
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(fn=cmd_sweep_worker)
    p = sub.add_parser(
        "best", help="choose a trial of a study, write its config, evaluate it once on test"
    )
    p.add_argument("study", help="study name (printed by sweep)")
    p.add_argument(
        "--rule",
        default="knee",
        help="knee (default), best, or max:<metric>[,<metric><=X] with X in percent",
    )
    p.add_argument("--storage", default="")
    p.add_argument("--store", default="mlruns")
    p.add_argument("--no-eval", action="store_true", help="only choose and write the config")
    p.add_argument("--no-default", action="store_true", help="do not evaluate the defaults")
    p.set_defaults(fn=cmd_best)
    p = sub.add_parser("dashboard", help="optuna-dashboard over the study storage")
    p.add_argument("--storage", default="")
    p.add_argument("--store", default="mlruns")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(fn=cmd_dashboard)
    # `data` is handed whole to the provisioning CLI (its own --help), see main().
    sub.add_parser("data", help="provision MNIST and Fashion-MNIST (see `data --help`)")
    p = sub.add_parser("ui", help="serve the MLflow UI over the project's store")
    p.add_argument("--store", default="mlruns")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(fn=cmd_ui)
    return parser


def _terminate(signum: int, frame: object) -> None:
    tracking = sys.modules.get("pipeline.tracking")  # loaded by the commands that write runs
    if tracking is not None and tracking.defer_exit(128 + signum):
        return  # raised as soon as the MLflow write in progress is done
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    if threading.current_thread() is threading.main_thread():
        # Python's default SIGTERM stops the process on the spot and leaves its MLflow runs
        # RUNNING; as an exception it unwinds like Ctrl-C: runs end KILLED, scratch files go.
        # Lightning calls this handler too while it trains (it chains the existing handler).
        signal.signal(signal.SIGTERM, _terminate)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["data"]:
        from pipeline.data.provision import main as provision_main

        return provision_main(argv[1:])
    parser = build_parser()
    # Overrides may come after options (`compare EXP --seeds 1 trainer.epochs=1`); argparse
    # leaves those over as unknown, so take them back when they look like key=value.
    args, extra = parser.parse_known_args(argv)
    if extra and (not hasattr(args, "overrides") or any(x.startswith("-") for x in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return int(args.fn(args))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:
        if e.code == 128 + signal.SIGTERM:
            print("terminated", file=sys.stderr)
        raise
