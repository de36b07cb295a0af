"""A run's files: the one module that knows their names and folders, and that writes and reads
them through MLflow's artifact API (:class:`pipeline.tracking.Run`), so a run in a remote store
(a tracking server's ``mlflow-artifacts:/``) works exactly as one in ``mlruns/``.

A task sequence's run holds::

    config.yaml                   the resolved config (compose can read it back)
    data_checksums.json           the MD5 of every dataset file
    checkpoints/task00-mnist.ckpt one per task: network, optimizer, strategy state, metadata;
                                  an erasure writes a new revision (task00-mnist.r1.ckpt) and
                                  then removes the old one (see rewrite_checkpoints)
    accuracy_matrix.json / .png   R[i][j] per split, the untrained accuracies, the summaries
    accuracy_along.csv / .png     each task's accuracy (%) after each task: per split, a row
                                  per task trained; the figure, a line per task (test split)
    retention.json                the retention ledger and cost of every task
    erasures.json                 every erasure request carried out on the run
    audit.json                    the audit of the erasures that made the run (make audit)
    landscape/                    line and plane figures with their values (make landscape)
    model/                        the final model as an MLflow pyfunc model, once registered
                                  in the Model Registry (make register: pipeline.registry)

A comparison's parent run holds the report (``report.md``, ``table.txt``, its figures,
``landscape/plane-<strategy>.png``); a sweep's parent run the study's settings, summary, trials
table and figures. Their names are here too.

``erasures.json`` is read back and rewritten by every erasure, through MLflow, which does not
write an artifact atomically: a crash or a full disk can leave it cut anywhere. JSON has no
reader of a cut document, so :func:`whole_records` parses the whole records at its start
(``json.JSONDecoder.raw_decode``, one element at a time).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pipeline.config.schema import ExperimentConfig, to_yaml
from pipeline.data.tasks import Task
from pipeline.report import along_sequence, heatmap
from pipeline.results import AccuracyAlong, SequenceResult, accuracy_along
from pipeline.store import Store
from pipeline.tracking import Run, scratch_dir

# -- names ---------------------------------------------------------------------------------------
CONFIG_FILE = "config.yaml"
CHECKSUMS_FILE = "data_checksums.json"
CHECKPOINT_DIR = "checkpoints"
MATRIX_FILE = "accuracy_matrix.json"
MATRIX_FIGURE = "accuracy_matrix.png"
ALONG_TABLE = "accuracy_along.csv"  # a run's own; a comparison's is ALONG_SEQUENCE_FIGURE
ALONG_FIGURE = "accuracy_along.png"
LEDGER_FILE = "retention.json"
ERASURES_FILE = "erasures.json"
AUDIT_FILE = "audit.json"  # an erasure's audit (pipeline.audit)
LANDSCAPE_DIR = "landscape"
MODEL_DIR = "model"  # the pyfunc model a registered model version serves (pipeline.registry)
# a comparison's parent run (and its report folder)
REPORT_FILE = "report.md"
TABLE_FILE = "table.txt"
ALONG_SEQUENCE_FIGURE = "accuracy_along_sequence.png"
VS_KEPT_FIGURE = "accuracy_vs_data_kept.png"
# a sweep's parent run (and its report folder)
SWEEP_SETTINGS_FILE = "sweep_settings.json"
SWEEP_SUMMARY_FILE = "summary.json"
TRIALS_FILE = "trials.csv"
PARETO_FIGURE = "pareto_front.png"


def history_figure(objective: str) -> str:
    return f"history_{objective}.png"


def importances_figure(objective: str) -> str:
    return f"importances_{objective}.png"


def plane_name(strategy: str) -> str:
    """File stem of a comparison's plane of the baseline against ``strategy``."""
    return f"plane-{strategy}"


def vs_plane_name(vs_run_id: str) -> str:
    """File stem of ``make landscape``'s plane against the run ``vs_run_id`` (``VS=``): planes
    against different runs keep their own files."""
    return f"plane-vs-{vs_run_id[:8]}"


def landscape_stem(base: str, settings: dict[str, object]) -> str:
    """``base`` followed by the settings that change the picture (those not at their default),
    ``line-points7-samples30``: a landscape drawn with other settings never replaces one."""
    parts = [base]
    for key, value in settings.items():
        shown = "to".join(f"{v:g}" for v in value) if isinstance(value, tuple) else f"{value:g}"
        parts.append(f"{key}{shown}")
    return "-".join(parts)


def read_config(run: Run) -> dict[str, Any]:
    """The run's resolved config (``config.yaml``) as plain containers.

    Raises:
        LookupError: the run has no readable config.
    """
    if CONFIG_FILE not in run.list_files():
        raise LookupError(
            f"run {run.run_id} was cut off before it stored its config ({CONFIG_FILE}): "
            "nothing of it can be carried on; start it again"
        )
    with scratch_dir() as tmp:
        try:
            node = OmegaConf.load(run.download(CONFIG_FILE, tmp))
        except (OSError, ValueError) as e:
            raise LookupError(f"run {run.run_id}: {CONFIG_FILE} is not readable: {e}") from e
    tree = OmegaConf.to_container(node, resolve=True)
    if not isinstance(tree, dict):
        raise LookupError(f"run {run.run_id}: {CONFIG_FILE} holds no mapping")
    return {str(k): v for k, v in tree.items()}


# -- a sequence's results and records --------------------------------------------------------------
def write_run_info(run: Run, cfg: ExperimentConfig, tasks: Sequence[Task]) -> None:
    """The resolved config (YAML) and the dataset checksums."""
    run.log_text(to_yaml(cfg), CONFIG_FILE)
    run.log_json({t.name: t.md5 for t in tasks}, CHECKSUMS_FILE)


def write_results(run: Run, cfg: ExperimentConfig, result: SequenceResult) -> None:
    """The accuracy matrix (JSON), its heatmap (PNG), each task's accuracy along the sequence
    (CSV, PNG) and the ledger of every task; no PNG with ``tracking.figures`` off."""
    run.log_json(
        [{"task": n, **asdict(r)} for n, r in zip(result.tasks, result.records, strict=True)],
        LEDGER_FILE,
    )
    run.log_json(result.matrix_record(cfg.scenario), MATRIX_FILE)
    title = (
        f"{cfg.name}: {' -> '.join(result.displays)} ({cfg.scenario}-incremental, "
        f"{'+'.join(cfg.strategy)})"
    )
    matrices: dict[str, Any] = {s: result.matrix[s] for s in ("test", "val") if s in result.matrix}
    tables = accuracy_along(result)
    run.log_text(along_csv(tables), ALONG_TABLE)
    if not cfg.tracking.figures:
        return
    run.log_figure(heatmap(matrices, result.displays, title), MATRIX_FIGURE)
    shown = tables[0]  # the test split where the run has one
    # Display names on the axis (MNIST, Fashion-MNIST); the title on two lines, as it is narrow.
    wrapped = title.replace(" (", "\n(", 1)
    figure = along_sequence(shown.rows, result.displays, wrapped, shown.split, shown.init)
    run.log_figure(figure, ALONG_FIGURE)


def along_csv(tables: Sequence[AccuracyAlong]) -> str:
    """The tables as CSV: ``split``, ``after_task``, one column per task; values in % with
    2 decimals."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["split", "after_task", *(tables[0].tasks if tables else [])])
    for table in tables:
        for after, row in zip(table.tasks, table.rows, strict=True):
            writer.writerow([table.split, after, *(f"{v:.2f}" for v in row)])
    return out.getvalue()


def read_result(store: Store, run_id: str) -> SequenceResult:
    """The result of a finished run, read back from its artifacts (a comparison resumes so).

    Raises:
        LookupError: no such run, or it has no readable result (it did not finish).
    """
    run = Run.get(store, run_id)
    try:
        acc, kept = run.read_json(MATRIX_FILE), run.read_json(LEDGER_FILE)
        return SequenceResult.from_records(run_id, run.experiment_id, acc, kept)
    except (LookupError, TypeError, ValueError) as e:  # a KeyError is a LookupError
        raise LookupError(f"run {run_id} has no readable result ({e})") from None


def read_erasures(run: Run) -> list[dict[str, Any]]:
    """The erasure requests recorded on the run (none yet: an empty list).

    A torn file gives its whole records, with a warning line; the file as found is kept in
    the run, as ``erasures.json.torn-<time>``, before the next erasure rewrites it.

    Raises:
        LookupError: the file cannot be fetched, or is no JSON list (nothing to recover).
    """
    if ERASURES_FILE not in run.list_files():
        return []
    with scratch_dir() as tmp:
        local = run.download(ERASURES_FILE, tmp)
        text = local.read_bytes().decode("utf-8", errors="replace")  # a cut may split a char
        found = whole_records(text)
        if found is None:
            raise LookupError(
                f"run {run.run_id}: {ERASURES_FILE} is not a JSON list of erasure records: "
                "restore it, or move it out of the run"
            )
        records, whole = found
        if not whole:
            kept = tmp / "kept" / f"{ERASURES_FILE}.torn-{time.strftime('%Y%m%d-%H%M%S')}"
            kept.parent.mkdir()
            shutil.copyfile(local, kept)  # byte for byte
            run.log_file(kept)
            print(
                f"warning: run {run.run_id}: {ERASURES_FILE} is torn (a write cut short): "
                f"recovered {len(records)} whole record(s), the rest is unreadable; the file "
                f"as found is kept as {kept.name}",
                file=sys.stderr,
            )
    return records


def whole_records(text: str) -> tuple[list[dict[str, Any]], bool] | None:
    """The whole records at the start of a JSON list of objects that may be cut short, and
    whether the list is whole.

    Returns:
        ``None`` where ``text`` is no JSON list, whole or cut; an empty or blank text is a
        list cut before its first record.
    """
    try:
        whole = json.loads(text)
    except ValueError:
        pass
    else:
        return (list(whole), True) if isinstance(whole, list) else None
    decoder = json.JSONDecoder()
    pos = _skip_blank(text, 0)
    if pos == len(text):
        return [], False
    if text[pos] != "[":
        return None
    records: list[dict[str, Any]] = []
    pos += 1
    while True:
        try:
            record, after = decoder.raw_decode(text, _skip_blank(text, pos))
        except json.JSONDecodeError:
            return records, False  # cut inside this record, or before it
        if not isinstance(record, dict):
            return records, False  # a record is an object: what it was cut from is unknown
        records.append(record)
        pos = _skip_blank(text, after)
        if not text.startswith(",", pos):
            return records, False  # cut just after it, or garbage follows
        pos += 1


def _skip_blank(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def write_erasures(run: Run, history: list[dict[str, Any]]) -> None:
    run.log_json(history, ERASURES_FILE)


def log_report_files(run: Run, files: Sequence[Path], folder: str | None = None) -> None:
    """Log files already written to a report folder (a figure rendered once, not twice)."""
    for path in files:
        run.log_file(path, folder)
