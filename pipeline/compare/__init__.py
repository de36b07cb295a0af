"""Compare strategies on one benchmark over several seeds: one table, one report, one parent run.

Every (strategy, seed) pair is a full :func:`pipeline.runner.run_sequence`, nested as a child
of a parent MLflow run that holds the table, the markdown report and the plots. Besides the
accuracy metrics, the table answers "why not just retrain on all the data?": what each strategy
keeps (raw samples, which privacy law may forbid, and derived state) and what it costs in
training time next to the reference strategy (``joint``), which retrains on everything.

The package: :mod:`~pipeline.compare.table` (the rows and columns, pure),
:mod:`~pipeline.compare.figures`, :mod:`~pipeline.compare.plane` (the loss-landscape planes of a
comparison) and, here, the runs and the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline import runfiles
from pipeline.compare.figures import plot_accuracy_vs_kept, plot_along_sequence
from pipeline.compare.plane import comparison_plane
from pipeline.compare.table import Comparison, Row, format_text, report_lines, table
from pipeline.config.schema import ExperimentConfig, to_dict
from pipeline.disk import room_for
from pipeline.errors import ConfigError
from pipeline.experiment import compose, require_one_process
from pipeline.keys import summary_key
from pipeline.landscape import Options
from pipeline.metrics import percent
from pipeline.runner import run_sequence
from pipeline.store import Store
from pipeline.strategies import REGISTRY, StrategyRefused, default_order
from pipeline.tracking import Run, flatten, param_text

__all__ = ["Comparison", "compare", "default_strategies", "format_text", "strategy_list", "table"]


def default_strategies() -> list[str]:
    """Every registered strategy, baseline and reference first (``all`` on the command line)."""
    return default_order()


def strategy_list(spec: str) -> list[str]:
    """The strategies a ``STRATEGIES=`` value names: ``all`` (:func:`default_strategies`) or
    ``a,b,c+d``."""
    return default_strategies() if spec == "all" else spec.split(",")


def configs_of(
    experiment: str, strategies: Sequence[str], seeds: Sequence[int], overrides: Sequence[str]
) -> tuple[dict[str, list[ExperimentConfig]], dict[str, str]]:
    """Every run's config, by strategy, and the strategies that refuse the setting (why).

    A ``strategies.<name>...`` override goes only to the configs whose strategy list holds
    ``<name>`` (see :func:`overrides_for`); every other override goes to all of them.

    Raises:
        ConfigError: a bad override or strategy name, an override of a strategy that is not
            compared; no strategy can run.
    """
    configs: dict[str, list[ExperimentConfig]] = {}
    skipped: dict[str, str] = {}
    for spec in strategies:
        names = names_of(spec)
        mine = overrides_for(names, strategies, overrides)
        try:
            configs[spec] = [
                compose(experiment, [*mine, f"strategy=[{','.join(names)}]", f"seed={seed}"])
                for seed in seeds
            ]
            require_one_process(configs[spec][0], "compare")
        except StrategyRefused as e:
            skipped[spec] = str(e).removeprefix("strategy: ")
    if not configs:
        raise ConfigError("strategy: no strategy can run in this setting")
    return configs, skipped


def names_of(spec: str) -> list[str]:
    """The strategies of a compared spec: ``ewc+replay`` is ``["ewc", "replay"]``."""
    return [name.strip() for name in spec.split("+")]


def configured_strategy(override: str) -> str | None:
    """The strategy a ``strategies.<name>[.<key>]=<value>`` override configures, else None."""
    section, _, rest = override.partition("=")[0].strip().partition(".")
    if section != "strategies":
        return None
    return rest.partition(".")[0].strip() or None


def overrides_for(
    names: Sequence[str], strategies: Sequence[str], overrides: Sequence[str]
) -> list[str]:
    """The overrides of one compared config: all of them but those of strategies it lacks.

    A single run refuses the parameters of a strategy it does not use; a comparison shares its
    overrides among configs of different strategies, so ``strategies.replay.size=1100`` goes to
    ``replay`` and ``ewc+replay`` and is left out of ``naive``.

    Args:
        names: the strategies of this config (``["ewc", "replay"]`` for ``ewc+replay``).
        strategies: every compared spec (``a+b`` for a combination).
        overrides: the comparison's overrides, in order.

    Raises:
        ConfigError: a ``strategies.<name>`` override where no compared spec holds ``<name>``
            (one line naming it).
    """
    compared = {n for spec in strategies for n in names_of(spec)}
    mine: list[str] = []
    for item in overrides:
        name = configured_strategy(item)
        if name is not None and name not in compared:
            raise ConfigError(
                f"override '{item}': strategy '{name}' is not compared "
                f"(strategies: {','.join(strategies)})"
            )
        if name is None or name in names:
            mine.append(item)
    return mine


def compare(
    experiment: str,
    strategies: Sequence[str],
    seeds: Sequence[int],
    overrides: Sequence[str] = (),
    out_dir: Path | None = None,
    log: Callable[[str], None] = print,
    landscape: Options | None = None,
    resume: str | None = None,
) -> Comparison:
    """Run every strategy on every seed and write the report.

    Args:
        experiment: a file of ``conf/experiment/``.
        strategies: names, ``a+b`` for a combination (``ewc+replay``).
        seeds: experiment seeds.
        overrides: applied to every run (``trainer.epochs=1``, ``scenario=class``...).
        out_dir: where the report goes (default ``<paths.reports>/compare-<experiment>-<time>``).
        landscape: grid and samples of the loss-landscape planes
            (:func:`pipeline.compare.plane.comparison_plane`).
        resume: the parent run of a comparison that was cut off, with the same arguments: its
            finished child runs are read back, not run again.

    Raises:
        ConfigError: a bad override or strategy name, or a ``resume`` run that is not the same
            comparison (before anything runs).
    """
    configs, skipped = configs_of(experiment, strategies, seeds, overrides)
    base = next(iter(configs.values()))[0]
    store = Store.of(base.paths)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = out_dir or base.paths.reports_dir() / f"compare-{experiment}-{stamp}"
    params = _params(experiment, list(configs), seeds, overrides, base)
    done = finished_children(store, resume, params) if resume else {}
    with _parent_run(store, base, experiment, resume) as parent:
        if not resume:
            parent.log_params(params)
        log(f"parent run {parent.run_id} (if cut off, resume it: RESUME={parent.run_id})")
        rows = run_all(configs, store, parent, done, log)
        first = rows[0].results[0]
        c = Comparison(
            experiment,
            first.tasks,
            first.displays,
            base.scenario,
            list(seeds),
            rows,
            skipped,
            parent.run_id,
            out_dir,
        )
        plane = comparison_plane(c, store, base.paths.data_dir(), landscape, log)
        write_report(c, out_dir, parent, plane)
    return c


def _params(
    experiment: str,
    strategies: Sequence[str],
    seeds: Sequence[int],
    overrides: Sequence[str],
    base: ExperimentConfig,
) -> dict[str, str]:
    """The parent run's params: what a resumed comparison must match."""
    return {
        "experiment": experiment,
        "strategies": ",".join(strategies),
        "seeds": ",".join(map(str, seeds)),
        "scenario": base.scenario,
        "overrides": " ".join(overrides),
        "tasks": " -> ".join(t.name for t in base.data.tasks),
    }


def _parent_run(
    store: Store, base: ExperimentConfig, experiment: str, resume: str | None
) -> AbstractContextManager[Run]:
    """The comparison's parent run: the one cut off, reopened; or a new one."""
    if resume:
        return Run.reopen(store, resume)
    tags = {"kind": "comparison", "scenario": base.scenario}
    return Run.start(
        store, base.tracking.experiment or base.name, f"compare-{experiment}", tags=tags
    )


def run_all(
    configs: dict[str, list[ExperimentConfig]],
    store: Store,
    parent: Run,
    done: dict[str, str],
    log: Callable[[str], None],
) -> list[Row]:
    """Every (strategy, seed) run as a child of ``parent``; those in ``done`` (run name -> id,
    a resumed comparison) are read back instead of run again."""
    rows: list[Row] = []
    total = sum(len(c) for c in configs.values())
    for spec, cfgs in configs.items():
        row = Row(spec)
        for cfg in cfgs:
            cfg.tracking.run_name = f"{spec}-seed{cfg.seed}"
            step = (
                f"[{sum(len(r.results) for r in rows) + len(row.results) + 1}/{total}] {spec}, seed"
            )
            name = cfg.tracking.run_name
            changed = changed_settings(store, done[name], cfg) if name in done else ""
            if changed:
                log(
                    f"{step} {cfg.seed}: run {done[name]} trained other settings ({changed}); "
                    "running it again"
                )
            elif name in done:
                run_id = done[name]
                try:
                    row.results.append(runfiles.read_result(store, run_id))
                    log(f"{step} {cfg.seed}: finished before (run {run_id})")
                    continue
                except LookupError as e:
                    log(f"{step} {cfg.seed}: {e}; running it again")
            else:
                log(f"{step} {cfg.seed}")
            row.results.append(run_sequence(cfg, Run.of(cfg, parent.run_id)))
        rows.append(row)
    return rows


def changed_settings(store: Store, run_id: str, cfg: ExperimentConfig) -> str:
    """What the method's settings (``strategies.*``) of the finished run ``run_id`` differ in
    from ``cfg``'s, or ``""``. A resumed comparison or reproduction runs such a child again
    rather than reading it back: its settings changed since (a default or a table cell's
    override changed). A key added since, at its default, is no change: the run trained what
    that default does."""
    logged = store.client().get_run(run_id).data.params
    now = _strategy_params(to_dict(cfg)["strategies"])
    added = _strategy_params({name: asdict(REGISTRY[name].Params()) for name in cfg.strategies})
    for key in sorted(now.keys() | {k for k in logged if k.startswith("strategies.")}):
        before = logged.get(key)
        if before is None and now.get(key) == added.get(key):
            continue
        if before != now.get(key):
            return f"{key} {before or 'unset'}, now {now.get(key, 'unset')}"
    return ""


def _strategy_params(strategies: dict[str, Any]) -> dict[str, str]:
    """The ``strategies.*`` params a run logs for these settings (name -> its fields)."""
    return {k: param_text(v) for k, v in flatten({"strategies": strategies}).items()}


def finished_children(
    store: Store, parent_id: str, params: dict[str, str], kind: str = "comparison"
) -> dict[str, str]:
    """The finished child runs of the comparison ``parent_id`` (or of another parent run of
    children, tagged ``kind``: a reproduction), by run name; children left RUNNING by a crash
    are marked KILLED (they run again).

    Raises:
        ConfigError: no such run, or it is not a ``kind`` run with these ``params``.
    """
    client = store.client()
    try:  # a prefix of the id (as printed) gives the full one, which the children's tag holds
        parent_id = Run.get(store, parent_id).run_id
    except LookupError as e:
        raise ConfigError(f"resume: {e}") from None
    parent = client.get_run(parent_id)
    if parent.data.tags.get("kind") != kind:
        raise ConfigError(f"resume: run '{parent_id}' is not a {kind}")
    differ = [
        f"{k} {parent.data.params[k]!r} (now {v!r})"
        for k, v in params.items()
        if k in parent.data.params and parent.data.params[k] != v
    ]
    if differ:
        raise ConfigError(
            f"resume: run '{parent_id}' compared other settings: {'; '.join(differ)}; "
            "resume it with the same arguments, or start a new comparison"
        )
    done: dict[str, str] = {}
    children = client.search_runs(
        [parent.info.experiment_id],
        f"tags.mlflow.parentRunId = '{parent_id}'",
        order_by=["attributes.start_time ASC"],
    )
    for run in children:
        if run.info.status == "FINISHED":
            done[run.info.run_name] = run.info.run_id  # the latest one wins
        elif run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, "error", "cut off; run again when resumed")
            client.set_terminated(run.info.run_id, status="KILLED")
    return done


def write_report(c: Comparison, out_dir: Path, parent: Run, extra: Sequence[str] = ()) -> None:
    """The table (text and markdown), the plots and ``extra`` markdown lines; to ``out_dir``
    and the parent run."""
    text = "\n".join(report_lines(c, extra))
    files = [out_dir / runfiles.REPORT_FILE, out_dir / runfiles.TABLE_FILE]
    with room_for(out_dir, "the comparison's report"):
        out_dir.mkdir(parents=True, exist_ok=True)
        files[0].write_text(text)
        files[1].write_text(format_text(table(c)) + "\n")
        for name, fig in (
            (runfiles.ALONG_SEQUENCE_FIGURE, plot_along_sequence(c)),
            (runfiles.VS_KEPT_FIGURE, plot_accuracy_vs_kept(c)),
        ):
            fig.savefig(out_dir / name, dpi=120)
            files.append(out_dir / name)
    runfiles.log_report_files(parent, files)
    parent.log_metrics(
        {
            summary_key("test", f"avg_acc/{r.strategy.replace('+', '_and_')}"): percent(
                r.values("avg_acc").mean()
            )
            for r in c.rows
        }
    )
