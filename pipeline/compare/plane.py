"""A comparison's loss-landscape planes: the baseline's weights after tasks A and B, and the
weights after task B of the best method that keeps no raw data (and of the field's landmark,
EWC, when it ran): where each lands between the two tasks' bowls."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline import runfiles
from pipeline.compare.table import Comparison, Row, keeps_raw_data, role_of
from pipeline.landscape import LandscapeError, Options, draw
from pipeline.store import Store
from pipeline.strategies import REGISTRY, Role


def best_raw_free(c: Comparison) -> str | None:
    """The method of a comparison that keeps no raw data (no part of a combination does),
    with the highest mean validation average accuracy over the seeds (validation: choosing one
    is model selection). ``None`` if none ran."""

    def score(strategy: str) -> float:
        row = c.row(strategy)
        assert row is not None
        return float(np.mean([r.summary["val"]["avg_acc"] for r in row.results]))

    candidates = [
        r.strategy
        for r in c.rows
        if role_of(r.strategy) is Role.METHOD and not keeps_raw_data(r.strategy)
    ]
    return max(candidates, key=score, default=None)


def plane_strategies(c: Comparison) -> list[str]:
    """The strategies whose weights after task B make a plane: the best raw-data-free method,
    then every landmark that ran (without repeats)."""
    best = best_raw_free(c)
    landmarks = [
        r.strategy for r in c.rows if r.strategy in REGISTRY and REGISTRY[r.strategy].landmark
    ]
    return list(dict.fromkeys([*([best] if best else []), *landmarks]))


def comparison_plane(
    c: Comparison,
    store: Store,
    data_dir: Path,
    options: Options | None = None,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Planes through the baseline's theta_A and theta_B and another strategy's theta_S, from
    the first seed's runs, into ``<report>/landscape/plane-<strategy>.png`` and the parent
    run's artifacts (see :func:`plane_strategies`). Sequences of more than two tasks use tasks
    0 and 1. When the comparison has no baseline, no raw-data-free method or a single task,
    nothing is drawn and the reason is logged.

    Returns:
        Markdown lines for the comparison's report (the figures, or why there are none).
    """
    baseline = c.with_role(Role.BASELINE)
    others = plane_strategies(c)
    best = best_raw_free(c)
    if baseline is None or best is None:
        why = "needs the baseline and a method that keeps no raw data"
        log(f"landscape not drawn: {why}")
        return [f"Landscape plane not drawn: {why}.", ""]
    if len(c.tasks) < 2:
        log("landscape not drawn: it needs a sequence of at least two tasks")
        return ["Landscape plane not drawn: it needs a sequence of at least two tasks.", ""]
    seed = c.seeds[0]
    lines = [
        "## Forgetting in weight space",
        "",
        f"Losses of {c.displays[0]} (task A) and {c.displays[1]} (task B) on the plane through "
        f"{baseline.strategy}'s weights after task A and after task B and another strategy's "
        f"after task B (seed {seed}'s runs): {best}, the method that keeps no raw data with the "
        "highest mean validation average accuracy"
        + (f", and {', '.join(others[1:])}." if len(others) > 1 else "."),
        "",
    ]
    for other in others:
        lines += _plane_against(c, baseline, other, store, data_dir, options, log)
    return lines


def _plane_against(
    c: Comparison,
    baseline: Row,
    other: str,
    store: Store,
    data_dir: Path,
    options: Options | None,
    log: Callable[[str], None],
) -> list[str]:
    """The plane of the baseline against ``other`` (first seed's runs), drawn and logged; its
    report lines (the figure, or why it is not drawn)."""
    row = c.row(other)
    assert row is not None
    seed = c.seeds[0]
    log(f"\nlandscape: {baseline.strategy} against {other}, the runs of seed {seed}")
    try:
        drawn = draw(
            store,
            baseline.results[0].run_id,
            row.results[0].run_id,
            options=options,
            out_dir=c.report_dir / runfiles.LANDSCAPE_DIR,
            data_dir=data_dir,
            line=False,
            log_to=[c.parent_run_id],
            plane_name=runfiles.plane_name(other),
            log=log,
        )
    except LandscapeError as e:
        log(f"landscape of {baseline.strategy} against {other} not drawn: {e}")
        return [f"Plane of {baseline.strategy} against {other} not drawn: {e}.", ""]
    return [
        f"![loss landscape: {baseline.strategy} vs {other}]"
        f"({runfiles.LANDSCAPE_DIR}/{drawn.files[0].name})",  # with its settings
        "",
    ]
