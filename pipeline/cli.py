"""Command line: ``python -m pipeline <command>`` (the make targets call these).

Commands: run (or resume), runs, config, compare, reproduce, landscape, erase, audit,
unlearn-tune, register, sweep, best, dashboard, ui, data, server (the same as
``python -m pipeline.server``). sweep-worker is internal: sweep starts one per worker.

Where things live is the config's ``paths`` section: every command takes ``paths.<key>=<value>``
overrides (``paths.store``, ``paths.studies``, ``paths.data``, ``paths.reports``), and reads
``$MLFLOW_TRACKING_URI`` and ``$OPTUNA_STORAGE`` when they are not set.

Exit codes: 0 success; 1 a run or provisioning failed (data missing, loss diverged, a sweep
stopped short); 2 a bad config, override or argument, or a store or storage that cannot be
used (nothing was run, no MLflow run was created); 130 interrupted (Ctrl-C); 143 terminated
(SIGTERM). Interrupted or terminated, the MLflow runs end KILLED.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from pipeline.commands import (
    cmd_best,
    cmd_compare,
    cmd_config,
    cmd_dashboard,
    cmd_landscape,
    cmd_reproduce,
    cmd_run,
    cmd_runs,
    cmd_shards,
    cmd_sweep,
    cmd_sweep_worker,
    cmd_ui,
)
from pipeline.config.compose import available
from pipeline.erasure_commands import cmd_audit, cmd_erase, cmd_register, cmd_unlearn_tune
from pipeline.errors import ConfigError, RunFailed
from pipeline.exiting import unwind_on_sigterm
from pipeline.ids_help import ERASE_IDS, RUN_ID


def _experiment_command(
    sub: Any,
    name: str,
    fn: Callable[[argparse.Namespace], int],
    help_: str,
    optional: bool = False,
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_)
    p.add_argument(
        "experiment",
        nargs="?" if optional else None,
        help=f"file in conf/experiment/ ({', '.join(available('experiment'))})",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="overrides: trainer.epochs=1, model=mlp, strategy=[naive], paths.store=... ",
    )
    p.set_defaults(fn=fn)
    return p


def _paths_command(
    sub: Any,
    name: str,
    fn: Callable[[argparse.Namespace], int],
    help_: str,
    positionals: Sequence[tuple[str, str]] = (),
) -> argparse.ArgumentParser:
    """A command that takes no experiment: its positional arguments, then ``paths.*``."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_)
    for arg, arg_help in positionals:
        p.add_argument(arg, help=arg_help)
    p.add_argument("overrides", nargs="*", metavar="paths.<key>=value", help="where things are")
    p.set_defaults(fn=fn)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _experiment_commands(sub)
    _run_commands(sub)
    _erasure_commands(sub)
    _study_commands(sub)
    _table_command(sub)
    p = sub.add_parser("runs", help="the newest runs, what became of them, which can resume")
    p.add_argument("experiment", nargs="?", default="", help="MLflow experiment (default: all)")
    p.add_argument("overrides", nargs="*", metavar="paths.<key>=value", help="where things are")
    p.set_defaults(fn=cmd_runs)
    p = _paths_command(sub, "dashboard", cmd_dashboard, "optuna-dashboard over the studies")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    p = _paths_command(sub, "ui", cmd_ui, "serve the MLflow UI over the project's store")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    # handed whole to their own CLIs (their own --help), see main()
    sub.add_parser("data", help="provision MNIST and Fashion-MNIST (see `data --help`)")
    sub.add_parser("server", help="team mode: PostgreSQL + MLflow server (`server --help`)")
    return parser


def _experiment_commands(sub: Any) -> None:
    """The commands that take an experiment: run, config, compare."""
    p = _experiment_command(sub, "run", cmd_run, "run an experiment, tracked in MLflow", True)
    p.add_argument(
        "--resume",
        default="",
        metavar="RUN_ID",
        help="carry on a run that was cut off, in the same run, from its last checkpoint "
        "(only trainer.threads, trainer.accelerator, trainer.progress_bar, paths.* may change)",
    )
    p.add_argument(
        "--landscape",
        action="store_true",
        help="then draw the loss and accuracy of tasks 0 and 1 along the line between their "
        "checkpoints (make forget)",
    )
    _experiment_command(sub, "config", cmd_config, "print an experiment's resolved config")
    p = _experiment_command(
        sub, "shards", cmd_shards, "write a task of an experiment as litdata shards, to stream"
    )
    p.add_argument("--task", required=True, help="the task's name (as its metrics name it)")
    p.add_argument("--out", required=True, help="folder or s3:// prefix to write them to")
    p = _experiment_command(sub, "compare", cmd_compare, "compare strategies over seeds")
    p.add_argument(
        "--strategies", default="all", help="comma-separated names, a+b for a combination, or all"
    )
    _parent_options(p, "compare", 3, "a comparison that was cut off (same arguments)")


def _parent_options(p: argparse.ArgumentParser, name: str, seeds: int, resumed: str) -> None:
    """The options of a command that runs children under one parent run (compare, reproduce):
    ``--seeds``, ``--out`` and ``--resume``."""
    p.add_argument("--seeds", type=int, default=seeds, help=f"seeds 0..N-1 (default {seeds})")
    p.add_argument("--out", default="", help=f"report folder (default <reports>/{name}-...)")
    p.add_argument(
        "--resume",
        default="",
        metavar="RUN_ID",
        help=f"parent run of {resumed}: its finished runs are kept, the others run",
    )


def _table_command(sub: Any) -> None:
    """reproduce: a published table of ``conf/table/``."""
    p = sub.add_parser("reproduce", help="reproduce a published table (conf/table/)")
    p.set_defaults(fn=cmd_reproduce)
    p.add_argument("table", help=f"a file of conf/table/ ({', '.join(available('table'))})")
    _parent_options(p, "reproduce", 5, "a reproduction cut off (same arguments, or more seeds)")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time, one process each")
    p.add_argument("--cells", default="", help="only these cells: their keys, comma-separated")
    p.add_argument("overrides", nargs="*", help="key=value for every run (after each cell's)")


def _run_commands(sub: Any) -> None:
    """The commands that take a finished run: landscape, register."""
    run_help = f"{RUN_ID}: theta_A, theta_B = its checkpoints after tasks 0, 1"
    p = _paths_command(
        sub, "landscape", cmd_landscape, "loss along a line / over a plane", [("run", run_help)]
    )
    p.add_argument("--vs", default="", help=f"{RUN_ID}: its checkpoint after task 1 is theta_S")
    p.add_argument("--points", type=int, default=31, help="points along the line (default 31)")
    p.add_argument("--grid", type=int, default=21, help="plane grid per axis (default 21)")
    p.add_argument("--samples", type=int, default=2000, help="test samples per task (2000)")
    p.add_argument("--out", default="", help="folder (default <reports>/landscape-<run[:8]>)")
    p = _paths_command(
        sub,
        "register",
        cmd_register,
        "register a run's final model in the MLflow Model Registry (alias champion)",
        [("run", RUN_ID)],
    )
    p.add_argument("--name", default=None, help="registered model (default: the run's experiment)")


def _erasure_commands(sub: Any) -> None:
    """The commands of the right to erasure: erase, unlearn-tune, audit."""
    p = _paths_command(
        sub,
        "erase",
        cmd_erase,
        "erase training samples from a run: retrain it without them (exact unlearning)",
        [("run", RUN_ID)],
    )
    p.add_argument("--task", default="", help="task name (e.g. mnist); optional with --ids-file")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--ids", help="comma-separated sample ids (see the note below)")
    what.add_argument("--ids-file", help="a file of ids: one per line, '<id>' or '<task>,<id>'")
    what.add_argument("--list", action="store_true", help="print the ids each checkpoint holds")
    what.add_argument("--canaries", action="store_true", help="the canaries the run planted")
    p.add_argument("--no-audit", action="store_true", help="skip the audit after unlearning")
    p.add_argument(
        "--mode",
        choices=("exact", "approx", "buffers"),
        default="exact",
        help="exact (default): a new run retrained from the last checkpoint before the "
        "samples, the original's later checkpoints deleted; approx: NegGrad+ fine-tuning, "
        "accepted if it passes the audit (else exact); buffers: remove them from the "
        "checkpoints' stored samples only (the weights still depend on them)",
    )
    p.add_argument("--budget", type=float, default=0.2, help="approx: share of the retraining")
    p.add_argument("--no-fallback", action="store_true", help="approx: no exact if it fails")
    p.epilog = ERASE_IDS
    p = _paths_command(
        sub,
        "unlearn-tune",
        cmd_unlearn_tune,
        "Optuna study of the approximate unlearning's settings, against exact unlearning",
        [("run", RUN_ID)],
    )
    p.add_argument("--task", required=True, help="the task of the validation request")
    p.add_argument("--size", type=int, default=100, help="samples of the validation request")
    p.add_argument("--trials", type=int, default=20, help="trials to finish (default 20)")
    _paths_command(
        sub,
        "audit",
        cmd_audit,
        "membership audit of an unlearned run against models retrained without the samples",
        [("run", RUN_ID)],
    )


def _study_commands(sub: Any) -> None:
    """The commands of sweeps: sweep, sweep-worker, best."""
    p = _experiment_command(sub, "sweep", cmd_sweep, "Optuna search of a strategy (resumes)")
    p.description = (
        "Objectives: plasticity and retention (a Pareto front; Optuna cannot prune "
        "multi-objective studies), or with --sweep accuracy the final average accuracy with "
        "pruning after each task. Trials read validation splits only."
    )
    p.add_argument("--strategy", required=True, help="strategy name(s), e.g. ewc or ewc,replay")
    p.add_argument(
        "--sweep", default="default", help=f"conf/sweep/ ({', '.join(available('sweep'))})"
    )
    p.add_argument(
        "--trials", type=int, default=None, help="trials to finish (default: the file's)"
    )
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--study", default="", help="study name (default <experiment>-<strategy>)")
    p.add_argument("--set", action="append", default=[], metavar="key=value", help="sweep config")
    p = _paths_command(
        sub, "sweep-worker", cmd_sweep_worker, "one worker of a sweep", [("study", "study name")]
    )
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p = _paths_command(
        sub, "best", cmd_best, "choose a trial, write its config, test it once", [("study", "name")]
    )
    p.add_argument(
        "--rule", default="knee", help="knee (default), best, or max:<metric>[,<metric><=X]"
    )
    p.add_argument("--no-eval", action="store_true", help="only choose and write the config")
    p.add_argument("--no-default", action="store_true", help="do not evaluate the defaults")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    unwind_on_sigterm()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["data"]:
        from pipeline.data.command import main as provision_main

        return provision_main(argv[1:])
    if argv[:1] == ["server"]:
        from pipeline.server import main as server_main

        return server_main(argv[1:])
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
        _error(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except RunFailed as e:
        _error(f"error: {e}")
        return 1
    except SystemExit as e:
        if e.code == 128 + signal.SIGTERM:
            _error("terminated")
        raise
    except Exception as e:
        reach = sys.modules.get("pipeline.reach")  # loaded by every command that tracks
        if reach is not None and reach.server_trouble(e):  # outside a run (else ServerDown)
            _error(f"error: the tracking server failed: {reach.first_line(e)}")
            return 1
        _error(None)
        raise
    except BaseException:
        _error(None)
        raise


def entry() -> NoReturn:
    """The ``pipeline`` command and ``python -m pipeline``: :func:`main`, then an exit that
    skips the interpreter's teardown (:func:`pipeline.exiting.exit_now`)."""
    from pipeline.exiting import exit_now

    exit_now(main())


def _error(line: str | None) -> None:
    """Report a failure in one line. In a distributed run, rank 0 also stops the processes it
    started (they would wait for it in a collective) and the others name their rank."""
    distributed = sys.modules.get("pipeline.distributed")  # loaded by a distributed run only
    prefix = ""
    if distributed is not None and distributed.initialized():
        if distributed.is_main():
            distributed.stop_others()
        else:
            prefix = f"[rank {distributed.rank()}] "
    if line is not None:
        print(prefix + line, file=sys.stderr)
