"""A published table to reproduce, as ``conf/table/<name>.yaml`` declares it: the source, the
protocol (an experiment of ``conf/experiment/``), the tolerance, and one cell per published
number (the method as the table names it, the scenario, our strategies and the authors'
hyperparameters as overrides, the published mean and spread, a note). Read and checked here
before anything runs; nothing here imports torch."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from omegaconf import MISSING, OmegaConf

from pipeline.config.compose import available, build, load_yaml, merge
from pipeline.config.schema import SCENARIOS
from pipeline.errors import ConfigError

GROUP = "table"
#: The columns of a result a table may compare (``pipeline.compare.table.COLUMNS``), in %.
METRICS = ("avg_acc", "bwt", "forgetting", "plasticity")
#: How a mean is judged against a published one (:attr:`Table.rule`).
RULES = ("within", "at_least")


@dataclass
class Published:
    """A published number.

    Attributes:
        mean: the published mean, in % (points).
        sd: the published spread across runs, in points (0: not given): a cell is within the
            tolerance when ours is within ``max(tolerance, sd)`` of the mean.
    """

    mean: float = MISSING
    sd: float = 0.0


@dataclass
class Tune:
    """The fallback for a cell whose published hyperparameters do not reproduce: an Optuna
    study on the validation split chooses the method's own (``make sweep``'s machinery, one
    objective: the final average accuracy), and the cell's runs take the best trial's values.
    Trial 0 runs the published values; the test split is not read.

    Attributes:
        sweep: the sweep file (``conf/sweep/``), single-objective (``objective: accuracy``).
        trials: the study's trials.
        seed: the run seed of every trial (the cell's runs keep theirs).
    """

    sweep: str = "method"
    trials: int = 20
    seed: int = 0


@dataclass
class Cell:
    """One published number and how we run it.

    Attributes:
        method: the method as the table names it (``EWC``, ``None``, ``Offline``).
        scenario: ``task``, ``domain`` or ``class``.
        strategy: our strategies for it; a name not registered here makes the cell a miss
            with the reason "not implemented here" until the strategy lands.
        overrides: ``key=value`` for this cell's runs (the authors' hyperparameters).
        published: the source's number.
        note: a reason written beside the cell (a known difference of protocol or loss form).
        tolerance: this cell's tolerance in points, where the source gives each number its
            own (continual-learning-baselines' tests); unset: the table's.
        tune: unset: the published hyperparameters; set: a study on validation chooses them.
    """

    method: str = MISSING
    scenario: str = MISSING
    strategy: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    published: Published = field(default_factory=Published)
    note: str = ""
    tolerance: float | None = None
    tune: Tune | None = None

    @property
    def key(self) -> str:
        """The cell's name in run names, metric names and reports: ``class-online-ewc``,
        ``class-dgr-distill`` (letters, digits and dashes: what an MLflow metric name allows)."""
        return f"{self.scenario}-{re.sub(r'[^a-z0-9]+', '-', self.method.lower()).strip('-')}"


@dataclass
class Table:
    """A published table (``conf/table/<name>.yaml``).

    Attributes:
        name: the file's name (set when read).
        description: one line.
        source: the publication and the table in it.
        experiment: the protocol, a file of ``conf/experiment/``.
        metric: the compared number of each run's test split (:data:`METRICS`).
        tolerance: points within which a mean reproduces a published one (or the published
            spread, when larger).
        rule: ``within`` (the default): ours at most ``tolerance`` from the published mean,
            either side; ``at_least``: ours at most ``tolerance`` below it, any amount above
            (a target to reach: continual-learning-baselines' tests check only a shortfall).
        cells: the published numbers.
    """

    name: str = ""
    description: str = ""
    source: str = MISSING
    experiment: str = MISSING
    metric: str = "avg_acc"
    tolerance: float = 2.0
    rule: str = "within"
    cells: list[Cell] = field(default_factory=list)

    def tolerance_of(self, cell: Cell) -> float:
        """The cell's own tolerance, or the table's."""
        return self.tolerance if cell.tolerance is None else cell.tolerance


def load_table(name: str) -> Table:
    """Read and check ``conf/table/<name>.yaml``.

    Raises:
        ConfigError: no such table, an unknown key or a wrong type, a bad value (one line).
    """
    if not name:
        raise ConfigError(
            f"reproduce: no table named (make reproduce TABLE=<name>; available: "
            f"{', '.join(tables()) or 'none'})"
        )
    source = f"conf/{GROUP}/{name}.yaml"
    raw = load_yaml(GROUP, name)
    table = build(merge(OmegaConf.structured(Table), raw, source), [], source, Table)
    table.name = name
    check(table, source)
    return table


def select(table: Table, keys: Sequence[str]) -> Table:
    """The table with only the cells named (their :attr:`Cell.key`, in the table's order); all
    of them when none is named.

    Raises:
        ConfigError: a key that is no cell of the table (one line, with the keys there are).
    """
    if not keys:
        return table
    known = [c.key for c in table.cells]
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise ConfigError(
            f"reproduce: conf/{GROUP}/{table.name}.yaml has no cell {', '.join(unknown)} "
            f"(its cells: {', '.join(known)})"
        )
    return replace(table, cells=[c for c in table.cells if c.key in keys])


def check(table: Table, source: str) -> None:
    """The value rules a type cannot state."""

    def require(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(f"{source}: {message}")

    require(table.experiment in available("experiment"), f"no experiment '{table.experiment}'")
    require(table.metric in METRICS, f"metric '{table.metric}' is not one of {', '.join(METRICS)}")
    require(0 < table.tolerance <= 100, "tolerance must be in (0, 100] points")
    require(table.rule in RULES, f"rule '{table.rule}' is not one of {', '.join(RULES)}")
    require(bool(table.cells), "the table has no cells")
    keys = [c.key for c in table.cells]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    require(not repeated, f"cells repeat: {', '.join(repeated)}")
    for cell in table.cells:
        where = f"cell {cell.key}"
        require(cell.scenario in SCENARIOS, f"{where}: scenario must be one of {SCENARIOS}")
        require(bool(cell.strategy), f"{where}: no strategy")
        require(-100 <= cell.published.mean <= 100, f"{where}: published mean outside +-100")
        require(0 <= cell.published.sd <= 100, f"{where}: published sd outside 0..100")
        own = table.tolerance_of(cell)
        require(0 < own <= 100, f"{where}: tolerance must be in (0, 100] points")
        if cell.tune is not None:
            require(cell.tune.trials >= 1, f"{where}: tune.trials must be at least 1")
            require(
                cell.tune.sweep in available("sweep"),
                f"{where}: tune.sweep: no conf/sweep/{cell.tune.sweep}.yaml",
            )


def tables() -> list[str]:
    """The tables of ``conf/table/``."""
    return available(GROUP)
