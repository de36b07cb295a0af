"""The right to erasure on the founding sequence (MNIST then Fashion-MNIST): what exact unlearning
gives and costs, what the audit sees with canaries, and the approximate unlearning beside it.

1. The founding run (``conf/experiment/seed_forgetting.yaml``), then 100 MNIST training samples
   erased exactly (``make erase``, the audit off: its cost is timed alone), against a run from
   scratch without them: the largest weight difference, whether the accuracy matrices are
   identical, and the time of each.
2. From the unlearned run, 100 Fashion-MNIST samples: the rewind skips MNIST's training.
3. The same sequence with 200 canaries planted in Fashion-MNIST (``data.canaries=200``, the
   last task, which the final model remembers), erased approximately (``UNLEARN=approx``, no
   fallback, untuned settings), then exactly; each audited against ``audit.references``
   models retrained from scratch (shared by both audits). Its model was registered first
   (``make register``): the registry's versions show what the erasures withdrew.

It prints the tables and writes ``docs/measured/unlearning.md`` (``--measured``), which the
docs include. Everything runs in a scratch MLflow store; about 25 minutes on 2 cores.

    .venv/bin/python benchmarks/unlearning.py [--root data] [--samples 100] [--canaries 200]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import record
import torch

from pipeline import checkpoints, runfiles
from pipeline.approximate import AuditFailed, unlearn_approx
from pipeline.audit import Audit, Scores, canaries_of
from pipeline.config.paths import PathsConfig
from pipeline.config.schema import ExperimentConfig
from pipeline.data.datamodule import ContinualDataModule
from pipeline.experiment import compose
from pipeline.registry import register
from pipeline.runner import run_sequence
from pipeline.store import Store
from pipeline.tracking import Run, scratch_dir
from pipeline.unlearning import MODE_TAG, TO_TAG, Request, unlearn

#: ``--set`` overrides of every run (a smoke test: ``--set trainer.max_batches=10``)
SETTINGS: list[str] = []


def founding(paths: PathsConfig, *overrides: str) -> ExperimentConfig:
    """The founding experiment in the scratch store, with ``overrides``."""
    where = [f"paths.{k}={getattr(paths, k)}" for k in ("store", "data", "reports")]
    every = [*where, "trainer.progress_bar=false", *SETTINGS, *overrides]
    return compose("seed_forgetting", every)


def timed_run(cfg: ExperimentConfig) -> tuple[str, float]:
    started = time.perf_counter()
    result = run_sequence(cfg, Run.of(cfg))
    return result.run_id, time.perf_counter() - started


def weights(store: Store, run_id: str) -> dict[str, torch.Tensor]:
    r = Run.get(store, run_id)
    files = checkpoints.latest_checkpoints(r)
    with scratch_dir() as tmp:
        return checkpoints.read_checkpoint(r.download(files[max(files)].path, tmp))["state_dict"]


def compare(store: Store, a: str, b: str) -> tuple[float, bool]:
    """The largest weight difference of two runs' final models; whether their matrices match."""
    wa, wb = weights(store, a), weights(store, b)
    gap = max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa)
    ra, rb = runfiles.read_result(store, a), runfiles.read_result(store, b)
    same = all((ra.matrix[s] == rb.matrix[s]).all() for s in ("val", "test"))
    return gap, bool(same)


def sample_ids(cfg: ExperimentConfig, task: int, n: int, seed: int) -> list[int]:
    data = ContinualDataModule(cfg.data, cfg.seed, 0, cfg.scenario, cfg.paths.data_dir())
    data.setup()
    ids = data.tasks[task].train.ids
    g = torch.Generator().manual_seed(seed)
    return sorted(ids[torch.randperm(len(ids), generator=g)[:n]].tolist())


def exact_rows(args: argparse.Namespace, paths: PathsConfig) -> list[list[object]]:
    store = Store.of(paths)
    cfg = founding(paths)
    original, full = timed_run(cfg)
    print(f"founding run {original[:8]}: {full:.1f} s", flush=True)
    rows: list[list[object]] = []
    erased: dict[str, list[int]] = {}
    source = original
    for index, task in enumerate(("mnist", "fashion_mnist")):
        ids = sample_ids(cfg, index, args.samples, seed=index)
        started = time.perf_counter()
        done = unlearn(store, source, Request({task: ids}), paths, audited=False)
        took = time.perf_counter() - started
        erased[task] = ids
        scratch = founding(paths)
        scratch.data.erased = copy.deepcopy(erased)
        reference, ref_took = timed_run(scratch)
        gap, same = compare(store, done.run_id, reference)
        rows.append(
            [
                f"{args.samples} {task} samples" + (" (after the MNIST ones)" if index else ""),
                f"{done.tasks[done.rewind]}",
                f"{gap:.1e}",
                "yes" if same else "no",
                f"{took:.1f} s",
                f"{ref_took:.1f} s",
                f"{took / ref_took:.0%}",
            ]
        )
        print(rows[-1], flush=True)
        source = done.run_id
    return rows


def audit_row(name: str, s: Scores) -> list[object]:
    return [
        name,
        f"{100 * s.erased_acc:.1f}",
        f"{s.erased_loss:.3f}",
        f"{100 * s.held_out_acc:.1f}",
        f"{s.held_out_loss:.3f}",
        f"{s.auc:.3f}",
    ]


def canary_part(args: argparse.Namespace, paths: PathsConfig) -> tuple[str, list[list[object]]]:
    store = Store.of(paths)
    cfg = founding(
        paths,
        f"data.canaries={args.canaries}",
        "data.canary_task=fashion_mnist",
        f"audit.references={args.references}",
    )
    original, full = timed_run(cfg)
    registered = register(store, original, "founding")
    request = Request(canaries_of(store, original, paths))
    try:
        unlearn_approx(store, original, request, paths, fallback=False)
        verdict = "accepted"
    except AuditFailed:
        verdict = "rejected"
    c = store.client()
    (approx,) = c.search_runs(
        [c.get_run(original).info.experiment_id], filter_string=f"tags.`{MODE_TAG}` = 'approximate'"
    )
    approx_audit = Run.get(store, approx.info.run_id).read_json(runfiles.AUDIT_FILE)
    source = Run.get(store, original).tags.get(TO_TAG, original)
    done = unlearn(store, source, request, paths)
    assert done.audit is not None and done.audit.original is not None
    report: Audit = done.audit
    rows = [
        audit_row("original (trained on them)", report.original),
        audit_row("exact unlearning", report.unlearned),
        audit_row(f"approximate, {verdict}", Scores(**approx_audit["unlearned"])),
        *(audit_row(r.model, r) for r in report.references),
    ]
    seconds = float(approx.data.tags["unlearning_seconds"])
    text = (
        f"{args.canaries} canaries planted in Fashion-MNIST (the founding run: {full:.1f} s). "
        f"Exact unlearning: {done.seconds:.1f} s, its audit "
        f"{'passed' if report.passed else 'FAILED: ' + '; '.join(report.failures)}. "
        f"Approximate unlearning (NegGrad+, 20% of the retraining's samples, untuned settings): "
        f"{seconds:.1f} s of fine-tuning, {verdict} by its audit"
        + ("" if verdict == "accepted" else f" ({'; '.join(approx_audit['failures'])})")
        + f". The {args.references} references were trained once, for both audits."
    )
    return text + "\n\n" + registry_table(store, registered.name), rows


def registry_table(store: Store, name: str) -> str:
    """The registered model's versions after the erasures: which run, its aliases, what
    withdrew it."""
    client = store.client()
    rows = []
    for v in sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version)):
        tags = v.tags or {}
        rows.append(
            [
                v.version,
                (v.run_id or "")[:8],
                ", ".join(client.get_model_version(name, v.version).aliases) or "-",
                tags.get("pipeline.erased", "-"),
                (tags.get("pipeline.superseded_by") or "-")[:8],
            ]
        )
    head = ["version", "run", "aliases", "withdrawn by request", "superseded by run"]
    return "The model registry (`make register` before the erasures):\n\n" + record.table(
        head, rows
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="data", help="the datasets (make data)")
    parser.add_argument("--samples", type=int, default=100, help="samples erased per request")
    parser.add_argument("--canaries", type=int, default=200, help="canaries planted")
    parser.add_argument("--references", type=int, default=3, help="audit references")
    parser.add_argument("--set", action="append", default=[], help="override of every run")
    record.add_argument(parser)
    args = parser.parse_args()
    SETTINGS.extend(args.set)
    with tempfile.TemporaryDirectory() as tmp:
        paths = PathsConfig(data=str(Path(args.root).resolve()), store=str(Path(tmp) / "mlruns"))
        paths.reports = str(Path(tmp) / "reports")
        exact = exact_rows(args, paths)
        text, audit_rows = canary_part(args, paths)
    head = [
        "request",
        "retrained from",
        "max weight diff vs scratch",
        "matrices identical",
        "unlearning",
        "retrain from scratch",
        "cost",
    ]
    audit_head = [
        "model",
        "erased acc %",
        "erased loss",
        "held-out acc %",
        "held-out loss",
        "MIA AUC",
    ]
    body = (
        "Exact unlearning against a run from scratch without the samples (seed_forgetting, "
        "seed 0, CPU, deterministic algorithms; both timed end to end, data loading included):"
        "\n\n"
        + record.table(head, exact)
        + "\n\n"
        + text
        + "\n\n"
        + record.table(audit_head, audit_rows)
        + "\n"
    )
    print(body)
    record.write("unlearning", body, args.measured)


if __name__ == "__main__":
    main()
