"""Forgetting in weight space: two tasks' losses along a line and over a plane of weights.

docs/landscapes.md explains forgetting with two bowls: task A's loss is low around theta_A (the
weights after task A), task B's around theta_B (after task B), and training on B walks the
weights out of A's bowl. This module draws that picture from a run's checkpoints:

- **line**: loss and accuracy of both tasks at ``theta(a) = (1 - a) theta_A + a theta_B`` for
  ``a`` in [-0.25, 1.25] (:func:`line_values`);
- **plane**: both losses and their sum over the plane through theta_A, theta_B and theta_S, a
  strategy's weights after task B (:func:`plane_values`), in an orthonormal basis built by
  Gram-Schmidt (:func:`gram_schmidt`), so that distances and angles on the figure are those of
  weight space.

The package: :mod:`~pipeline.landscape.geometry` (the math on flat parameter vectors and an
``evaluate(theta) -> values`` callable, checked on quadratics with a closed form),
:mod:`~pipeline.landscape.evaluation` (a network as that callable, the samples, the line and
plane as data), :mod:`~pipeline.landscape.figures` (the plots) and, here, :func:`draw`, which
reads the runs, writes the report files and logs them. Choices, and why:

- **Data**: a fixed subset of each task's *test* split (``samples``, default 2,000, drawn once
  by a seeded permutation: every point of a figure is evaluated on the same samples). The figure
  is a report, like the accuracy matrix, and its endpoints then agree with the run's reported
  test accuracies (up to the subset's sampling error); nothing is selected on it, so it has no
  claim on the validation split, which model selection and sweeps read.
- **Tasks**: theta_A and theta_B are the checkpoints after tasks 0 and 1. For longer sequences
  the picture is of the first two tasks; every later task would need another axis.
- **Parameters**: only the network's parameters (``module.model``) are interpolated, the
  parameters every checkpoint of the same model has; strategy state (Fisher matrices, buffers,
  LwF's model copy) is not part of the function being drawn. A domain-incremental head is shared
  and moves with the rest. A task-incremental ``MultiHead`` holds every task's layer in every
  checkpoint; each sample is evaluated through its own task's layer, as in training.
- **Buffers** come from the checkpoint after task B: in class-incremental runs the
  ``IncrementalHead``'s active classes are those of both tasks everywhere on the figure (one
  function over the whole plane; at theta_A, task A's loss therefore includes the untrained
  outputs of task B's classes).
- **Normalisation layers**: batch norm's running statistics are averages over the data seen,
  not functions of the weights, so they do not interpolate; at every point :class:`ModelLoss`
  recomputes them on the evaluation samples of both tasks
  (:func:`pipeline.landscape.weights.recompute_batchnorm`). Our
  networks (``pipeline.models``: the LeNet-style CNN and the MLP) have no batch norm, so for
  them this never runs and each point is exactly the network at those weights.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure

from pipeline import checkpoints, runfiles
from pipeline.disk import room_for
from pipeline.landscape.evaluation import (
    SPLIT,
    Checkpoint,
    Curve,
    Evaluation,
    Options,
    Surface,
    check_comparable,
    compute_line,
    compute_plane,
    prepare,
)
from pipeline.landscape.figures import plot_line, plot_plane, theta_label
from pipeline.landscape.geometry import LandscapeError, gram_schmidt
from pipeline.landscape.weights import flat_parameters
from pipeline.store import Store
from pipeline.tracking import Run, scratch_dir

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["Landscape", "LandscapeError", "Options", "draw", "load_run"]


@dataclass
class Landscape:
    """What :func:`draw` produced.

    Attributes:
        out_dir: the folder the files were written to.
        files: the files written (PNG and JSON).
        seconds: evaluation time of each figure drawn (``line``, ``plane``).
        summary: values at the marked points, for printing and the docs.
    """

    out_dir: Path
    files: list[Path] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def load_run(store: Store, run_id: str, indices: Sequence[int]) -> list[Checkpoint]:
    """The checkpoints of run ``run_id`` after the tasks ``indices`` (downloaded, loaded).

    Raises:
        LandscapeError: unknown run, a missing checkpoint, a file that does not load.
    """
    try:
        run = Run.get(store, run_id)
    except LookupError as e:
        raise LandscapeError(str(e)) from None
    run_id = run.run_id  # a prefix (as printed): the full id, in messages and records
    found = checkpoints.latest_checkpoints(run)
    missing = [i for i in indices if i not in found]
    if missing:
        have = f"checkpoints after tasks {sorted(found)}" if found else "no checkpoints"
        raise LandscapeError(
            f"run {run_id} has {have}; the landscape needs the checkpoints after tasks "
            f"{list(indices)} (a run of 2+ tasks with tracking.log_checkpoints=true)"
        )
    out = []
    with scratch_dir() as tmp:
        for i in indices:
            try:
                module, cfg, _ = checkpoints.fetch_checkpoint(run, found[i], tmp)
            except KeyError as e:
                raise LandscapeError(
                    f"run {run_id}: {found[i].name} has no {e} entry (written by an older pipeline)"
                ) from e
            except (LookupError, ValueError) as e:
                raise LandscapeError(f"run {run_id}: cannot load {found[i].name} ({e})") from e
            out.append(Checkpoint(run_id, found[i].name, module.model.eval(), cfg))
    return out


def draw(
    store: Store,
    run_id: str,
    vs: str | None = None,
    *,
    options: Options | None = None,
    out_dir: Path,
    data_dir: Path,
    line: bool = True,
    log_to: Sequence[str] | None = None,
    plane_name: str = "",
    log: Callable[[str], None] = print,
) -> Landscape:
    """Draw the line (and, with ``vs``, the plane) for run ``run_id``; save and log them.

    Every check (the runs, their checkpoints, that ``vs`` matches) happens before anything is
    evaluated or written.

    Args:
        store: the MLflow store.
        run_id: the run that gives theta_A and theta_B (checkpoints after tasks 0 and 1).
        vs: a run whose checkpoint after task 1 is theta_S (the plane); ``None``: no plane.
        options: grid, samples...; defaults when ``None``.
        out_dir: where the PNG and JSON files go.
        data_dir: the datasets' folder.
        line: draw the line (``False``: only the plane, as ``make compare`` does).
        log_to: run ids that get the files as artifacts under ``landscape/`` (default: the run).
        plane_name: file stem of the plane (``make compare``); ``""``: ``plane-vs-<vs>`` and
            the settings, as ``line`` (:func:`pipeline.runfiles.landscape_stem`).
        log: progress lines.

    Raises:
        LandscapeError: unknown run, missing checkpoints, ``vs`` from another task sequence,
            bad options.
        DataError: the run's data is missing.
    """
    options = options or Options()
    options.check()
    if not line and vs is None:
        raise LandscapeError("nothing to draw: the plane needs a second run (--vs)")
    (ck_a, ck_b, ck_s), thetas = _thetas(store, run_id, vs)
    run_id = ck_a.run_id  # the full id of a prefix
    runs = [Run.get(store, rid) for rid in (log_to or [run_id])]
    ev = prepare(ck_b.model, ck_b.cfg, options, data_dir)
    common = _record(run_id, ev, options, int(thetas["A"].numel()), (ck_a, ck_b))
    result = Landscape(out_dir)
    if line:
        _draw_line(result, thetas, ev, options, (ck_a, ck_b), common, runs, log)
    if ck_s is not None:
        cks = (ck_a, ck_b, ck_s)
        _draw_plane(result, thetas, ev, options, cks, common, runs, plane_name, log)
    log(
        f"wrote {', '.join(p.name for p in result.files)} to {out_dir}/ and logged them to run(s) "
        f"{', '.join(r.run_id[:8] for r in runs)} under {runfiles.LANDSCAPE_DIR}/"
    )
    return result


def _thetas(
    store: Store, run_id: str, vs: str | None
) -> tuple[tuple[Checkpoint, Checkpoint, Checkpoint | None], dict[str, Tensor]]:
    """The checkpoints of theta_A and theta_B (and theta_S with ``vs``), checked, and their
    weights flattened.

    Raises:
        LandscapeError: a run or checkpoint missing; ``vs`` from another sequence; theta_S on
            the line through theta_A and theta_B (no plane).
    """
    ck_a, ck_b = load_run(store, run_id, (0, 1))
    ck_s = load_run(store, vs, (1,))[0] if vs else None
    thetas = {"A": flat_parameters(ck_a.model), "B": flat_parameters(ck_b.model)}
    if ck_s is not None:
        check_comparable(ck_b, ck_s)
        thetas["S"] = flat_parameters(ck_s.model)
        gram_schmidt(thetas["A"], thetas["B"], thetas["S"])  # no plane (S on the line): fail now
    return (ck_a, ck_b, ck_s), thetas


def _draw_line(
    result: Landscape,
    thetas: dict[str, Tensor],
    ev: Evaluation,
    options: Options,
    cks: tuple[Checkpoint, Checkpoint],
    common: dict[str, Any],
    runs: list[Run],
    log: Callable[[str], None],
) -> None:
    """The line from theta_A to theta_B: computed, drawn, saved and logged into ``result``."""
    ck_a, ck_b = cks
    curve = compute_line(thetas["A"], thetas["B"], ev, options)
    result.seconds["line"], result.summary["line"] = curve.seconds, curve.at_ends()
    log(f"line: {len(curve.alphas)} points x 2 tasks x {_samples(ev)} in {_took(curve, ev)}")
    title = (
        f"{ck_b.cfg.name}, {ck_b.strategy}, run {ck_a.run_id[:8]}: {ev.tasks[0]} then "
        f"{ev.tasks[1]}, {_samples(ev)} per task"
    )
    fig = plot_line(curve.alphas, curve.values, ev.tasks, title, curve.distance)
    stem = runfiles.landscape_stem("line", _changed(options, _LINE_SETTINGS))
    result.files += _save(fig, common | curve.record(), stem, result.out_dir, runs, log)


def _draw_plane(
    result: Landscape,
    thetas: dict[str, Tensor],
    ev: Evaluation,
    options: Options,
    cks: tuple[Checkpoint, Checkpoint, Checkpoint],
    common: dict[str, Any],
    runs: list[Run],
    plane_name: str,
    log: Callable[[str], None],
) -> None:
    """The plane through theta_A, theta_B and theta_S: computed, drawn, saved and logged."""
    ck_s = cks[2]
    surface = compute_plane(thetas, ev, options)
    result.seconds["plane"], result.summary["plane"] = surface.seconds, surface.at
    grid = f"{options.grid}x{options.grid}"
    log(f"plane: {grid} points x 2 tasks x {_samples(ev)} in {_took(surface, ev)}")
    fig = _plane_figure(surface, ev, cks)
    vs_info = {"vs_run_id": ck_s.run_id, "vs_checkpoint": ck_s.file}
    obj = common | vs_info | {"vs_strategy": ck_s.strategy} | surface.record()
    vs_stem = runfiles.vs_plane_name(ck_s.run_id)  # a comparison's folder is its own
    stem = plane_name or runfiles.landscape_stem(vs_stem, _changed(options, _PLANE_SETTINGS))
    result.files += _save(fig, obj, stem, result.out_dir, runs, log)


def _record(
    run_id: str, ev: Evaluation, options: Options, n: int, cks: tuple[Checkpoint, Checkpoint]
) -> dict[str, Any]:
    """What the line's and the plane's JSON files both record."""
    return {
        "run_id": run_id,
        "tasks": ev.tasks,
        "split": SPLIT,
        "samples": ev.samples,
        "sample_seed": options.seed,
        "parameters": n,
        "workers": ev.how,
        "batch_size": options.batch_size,
        "checkpoint_files": {"A": cks[0].file, "B": cks[1].file},
    }


#: The options that change each figure (not batch_size or workers: how, not what, is computed).
_LINE_SETTINGS = ("points", "span", "samples", "seed")
_PLANE_SETTINGS = ("grid", "margin", "samples", "seed")


def _changed(options: Options, keys: Sequence[str]) -> dict[str, object]:
    """The options among ``keys`` that differ from their defaults, for the file names."""
    default = Options()
    return {k: getattr(options, k) for k in keys if getattr(options, k) != getattr(default, k)}


def _samples(ev: Evaluation) -> str:
    return f"{ev.samples[0]:,} {SPLIT} samples"


def _took(what: Curve | Surface, ev: Evaluation) -> str:
    return f"{what.seconds:.1f} s ({ev.how})"


def _plane_figure(
    surface: Surface, ev: Evaluation, cks: tuple[Checkpoint, Checkpoint, Checkpoint]
) -> Figure:
    """The plane's figure, its three points labelled with their run, strategy and losses."""
    ck_a, ck_b, ck_s = cks
    who = {
        "A": f"{ck_a.strategy} after {ev.tasks[0]} (run {ck_a.run_id[:8]})",
        "B": f"{ck_b.strategy} after {ev.tasks[1]} (run {ck_b.run_id[:8]})",
        "S": f"{ck_s.strategy} after {ev.tasks[1]} (run {ck_s.run_id[:8]})",
    }
    at = surface.at
    labels = {
        k: f"{theta_label(k)}: {who[k]}\nloss A {at[k]['loss_a']:.3g}, loss B {at[k]['loss_b']:.3g}"
        for k in who
    }
    title = (
        f"{ck_b.cfg.name}: {ck_b.strategy} vs {ck_s.strategy}, {ev.tasks[0]} then {ev.tasks[1]}, "
        f"{_samples(ev)} per task"
    )
    return plot_plane(surface.plane, ev.tasks, labels, title)


def _save(
    fig: Figure,
    obj: dict[str, Any],
    name: str,
    out_dir: Path,
    runs: Sequence[Run],
    log: Callable[[str], None],
) -> list[Path]:
    """Write ``<name>.png`` and ``<name>.json`` to ``out_dir`` and log them to ``runs``; say so
    when they replace a drawing of the same settings (never silently)."""
    png, js = out_dir / f"{name}.png", out_dir / f"{name}.json"
    if png.exists() or js.exists():
        log(f"replacing {name}.png and {name}.json in {out_dir}/ (drawn before, same settings)")
    with room_for(out_dir, f"the landscape's {name}.png and {name}.json"):
        out_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(png, dpi=110)
        js.write_text(json.dumps(obj, indent=2))
    for run in runs:  # the files just written: log_figure would render the figure again
        runfiles.log_report_files(run, [png, js], runfiles.LANDSCAPE_DIR)
    return [png, js]
