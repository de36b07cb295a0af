"""What the erasure commands of ``python -m pipeline`` do (erase, unlearn-tune, audit, and
register, which an erasure's registry follows), given their parsed arguments; the other commands
are :mod:`pipeline.commands`. Heavy modules are imported inside each command, once its arguments
have passed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.commands import require_count, store_of
from pipeline.config.compose import compose_paths
from pipeline.errors import ConfigError, RunFailed


def cmd_erase(args: argparse.Namespace) -> int:
    from pipeline.approximate import unlearn_approx
    from pipeline.audit import canaries_of
    from pipeline.erasure import ErasureError, erase, stored
    from pipeline.unlearning import Request, summary, unlearn

    try:
        paths = compose_paths(args.overrides)
        if args.list or args.mode == "buffers" or args.ids is not None:
            _need_task(args)
        if args.list:
            print("\n".join(stored(store_of(paths, False), args.run, args.task)))
            return 0
        ids = (
            canaries_of(store_of(paths, False), args.run, paths)
            if args.canaries
            else _erase_ids(args)
        )
        if args.mode == "buffers":
            (task, wanted), *more = ids.items()
            if more:
                raise ConfigError("--mode buffers: one task at a time (--task)")
            record = erase(store_of(paths, False), args.run, task, wanted, paths.data_dir())
        elif args.mode == "approx":
            done = unlearn_approx(
                store_of(paths, False),
                args.run,
                Request(ids),
                paths,
                args.budget,
                not args.no_fallback,
            )
            print("\n".join(summary(done)))
            return 0
        else:
            done = unlearn(store_of(paths, False), args.run, Request(ids), paths, not args.no_audit)
            print("\n".join(summary(done)))
            if done.audit is not None and not done.audit.passed:
                raise RunFailed(f"audit of run {done.run_id}: " + "; ".join(done.audit.failures))
            return 0
    except ErasureError as e:
        raise ConfigError(str(e)) from e
    for name, n in record["removed"].items():
        print(f"{name}: removed {n} stored sample(s)")
    done_line = f"recorded in run {args.run}: erasures.json, retention/erased_samples"
    print(
        record.get("note", done_line)
    )  # nothing removed: why (the request is recorded all the same)
    print(
        "the weights were still trained on these samples: --mode exact (the default) retrains "
        "without them",
        file=sys.stderr,
    )
    return 0


def cmd_unlearn_tune(args: argparse.Namespace) -> int:
    from pipeline.approximate import study_name, tune
    from pipeline.erasure import ErasureError

    require_count(args.trials, "--trials", "make unlearn-tune TRIALS=<n>")
    paths = compose_paths(args.overrides)
    try:
        study = tune(store_of(paths, False), args.run, paths, args.task, args.size, args.trials)
    except ErasureError as e:
        raise ConfigError(str(e)) from e
    best = study.best_trial
    print(
        f"study {study_name(args.run)}: {len(study.trials)} trial(s); best distance to exact "
        f"unlearning {best.value:.4f} at lr={best.params['lr']:.2e}, "
        f"alpha={best.params['alpha']:.3f} (make erase UNLEARN=approx uses them for this run)"
    )
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from pipeline.audit import audit, format_audit

    paths = compose_paths(args.overrides)
    report = audit(store_of(paths, False), args.run, paths)
    print("\n".join(format_audit(report)))
    if not report.passed:
        raise RunFailed(f"audit of run {report.run_id}: " + "; ".join(report.failures))
    return 0


def _need_task(args: argparse.Namespace) -> None:
    if not args.task:
        raise ConfigError("erase: --task is required (with --ids, --list and --mode buffers)")


def _erase_ids(args: argparse.Namespace) -> dict[str, list[int]]:
    """The request's ids per task, from ``--ids`` (of ``--task``) or ``--ids-file``."""
    from pipeline.ids_help import read_ids

    if args.ids is not None:
        try:
            return {args.task: [int(x) for x in args.ids.split(",") if x.strip()]}
        except ValueError:
            raise ConfigError(
                f"--ids: expected comma-separated integers, got '{args.ids}'"
            ) from None
    try:
        text = Path(args.ids_file).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--ids-file: cannot read {args.ids_file}: {e}") from None
    return read_ids(text, args.task)


def cmd_register(args: argparse.Namespace) -> int:
    from pipeline.config.paths import redact
    from pipeline.registry import register

    store = store_of(compose_paths(args.overrides), create=False)
    done = register(store, args.run, args.name)  # RegistryError (a ConfigError): exit 2
    print(
        f"run {done.run_id}: registered as version {done.version} of model '{done.name}' "
        f"(alias {', '.join(done.aliases)}), with its lineage tags"
    )
    print(f'  load it:  mlflow.pyfunc.load_model("{done.uri}")')
    venv = Path(sys.executable).parent
    print(
        f"  serve it: PATH={venv}:$PATH MLFLOW_TRACKING_URI={redact(store.uri)} "
        f"mlflow models serve -m {done.uri} --env-manager local -p 5001"
    )
    return 0
