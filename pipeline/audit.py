"""The audit of an erasure: does the model that replaced a run still remember the samples?

``make audit RUN=<id>`` (and every exact unlearning, before it deletes the original's weights,
unless ``audit.after_erase=false``) measures, for the samples the run erased (its
``data.erased``, as members) against as many held-out samples of the same tasks (from their
validation splits, never trained on): accuracy, mean loss and the AUC of the loss-threshold
membership attack (:mod:`pipeline.membership`). It does so for the original model (while its
weights exist), for the unlearned one and for ``audit.references`` models retrained from
scratch without the samples, seeds ``seed + 1 ...`` (runs of the same experiment, tagged
``pipeline.audit_reference`` with the config they train: every audit of the same erasure reuses
them). The unlearned model passes
when its AUC and its accuracy on the erased samples lie within the references' spread
(:func:`pipeline.membership.within_spread`); else the command exits 1.

A random sample of MNIST carries little membership signal: a model trained on it and one that
was not classify it alike. Canaries carry one: ``data.canaries=N`` plants N training samples
with a wrong label (:func:`pipeline.data.tasks.plant_canaries`), which only a model trained on
them fits. Their held-out counterparts are validation samples given a wrong label the same way,
so members and others differ only in having been trained on. ``make erase ... CANARIES=1``
erases them. The result goes to the run: ``audit.json`` and ``audit/*`` metrics.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from pipeline import checkpoints, membership, runfiles
from pipeline.config.paths import PathsConfig
from pipeline.config.schema import ExperimentConfig, to_dict
from pipeline.data.datamodule import ContinualDataModule
from pipeline.data.tasks import Batch, Split, canary_rows
from pipeline.errors import ConfigError
from pipeline.module import ContinualModule
from pipeline.runner import run_sequence
from pipeline.store import Store
from pipeline.tracking import Run, scratch_dir

#: on a reference: what it was trained as (:func:`reference_key`), shared by every audit of the
#: same erasure (the exact and the approximate unlearning of one request)
REFERENCE_TAG = "pipeline.audit_reference"
SEED_TAG = "pipeline.audit_seed"


@dataclass
class Scores:
    """One model's scores on the members (the erased samples) and the held-out samples."""

    model: str
    erased_acc: float
    erased_loss: float
    held_out_acc: float
    held_out_loss: float
    auc: float


@dataclass
class Audit:
    """An audit's result: the samples, each model's scores and the verdict."""

    run_id: str
    members: int
    held_out: int
    canaries: int
    unlearned: Scores
    references: list[Scores]
    original: Scores | None = None
    passed: bool = True
    failures: list[str] = field(default_factory=list)

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


def audit_sets(cfg: ExperimentConfig) -> tuple[Batch, Batch, int]:
    """The members (the erased samples, as they were trained on: a canary with its wrong
    label) and as many held-out samples of each task (validation samples, a canary's
    counterparts given a wrong label the same way), and how many members are canaries.

    Raises:
        ConfigError: the run erased nothing.
    """
    erased = {t: ids for t, ids in cfg.data.erased.items() if ids}
    if not erased:
        raise ConfigError("audit: the run erased no sample (data.erased): nothing to audit")
    whole = copy.deepcopy(cfg.data)
    whole.erased = {}
    data = ContinualDataModule(whole, cfg.seed, 0, cfg.scenario, cfg.paths.data_dir())
    data.setup()
    members: list[Batch] = []
    others: list[Batch] = []
    planted = 0
    for task in data.tasks:
        ids = torch.tensor(erased.get(task.name, []), dtype=torch.long)
        if not ids.numel():
            continue
        train, val = task.train, task.val
        assert isinstance(train, Split) and isinstance(val, Split)  # erasure keeps them in memory
        rows = torch.nonzero(torch.isin(train.ids, ids)).squeeze(1)
        members.append(_batch(data, train, rows, train.labels[rows], task.index))
        k = int(torch.isin(ids, torch.tensor(data.canaries.get(task.name, []))).sum())
        planted += k
        n, k = min(len(ids), len(val)), min(k, len(val) - 1)
        flipped, wrong = (
            canary_rows(val, k, cfg.data.canary_seed + 1) if k else (rows[:0], rows[:0])
        )
        order = torch.randperm(len(val), generator=_gen(cfg))
        plain = order[~torch.isin(order, flipped)][: n - k]
        chosen = torch.cat([flipped, plain])
        labels = torch.cat([wrong, val.labels[plain]])
        others.append(_batch(data, val, chosen, labels, task.index))
    return _joined(members), _joined(others), planted


def _gen(cfg: ExperimentConfig) -> torch.Generator:
    return torch.Generator().manual_seed(cfg.data.canary_seed + 2)


def _batch(
    data: ContinualDataModule, split: Split, rows: torch.Tensor, labels: torch.Tensor, task: int
) -> Batch:
    tasks = torch.full((len(rows),), task, dtype=torch.long)
    return data.batch_from(split.images[rows], labels, tasks, split.ids[rows])


def _joined(batches: list[Batch]) -> Batch:
    return Batch(*(torch.cat([getattr(b, f) for b in batches]) for f in Batch._fields))


def scores(name: str, module: ContinualModule, members: Batch, others: Batch) -> Scores:
    """The model's scores on the members and the held-out samples."""
    device = torch.device("cpu")
    module.to(device)
    m_loss, m_right = module.sample_losses(members, device)
    o_loss, o_right = module.sample_losses(others, device)
    return Scores(
        name,
        float(m_right.float().mean()),
        float(m_loss.mean()),
        float(o_right.float().mean()),
        float(o_loss.mean()),
        membership.membership_auc(m_loss.numpy(), o_loss.numpy()),
    )


def verdict(audit: Audit) -> Audit:
    """Whether the unlearned model's AUC and erased accuracy lie within the references'
    spread (:func:`pipeline.membership.within_spread`); what lies outside, in ``failures``."""
    refs, u = audit.references, audit.unlearned
    checks = {
        "auc": membership.auc_noise(audit.members, audit.held_out),
        "erased_acc": membership.accuracy_noise(audit.members),
    }
    audit.failures = []
    for key, noise in checks.items():
        values = [getattr(r, key) for r in refs]
        if not membership.within_spread(getattr(u, key), values, noise):
            audit.failures.append(
                f"{key} {getattr(u, key):.3f} is outside the references' "
                f"{min(values):.3f}..{max(values):.3f} (noise {noise:.3f})"
            )
    audit.passed = not audit.failures
    return audit


def audit(
    store: Store, run_id: str, paths: PathsConfig, original: ContinualModule | None = None
) -> Audit:
    """Audit run ``run_id`` (an unlearned run: its config erased samples), training the
    references it lacks; the result is logged to the run (``audit.json``, ``audit/*``).

    Args:
        paths: this machine's (the data; the references' store is the run's).
        original: the model the run replaced, while its weights exist (an unlearning passes
            it); without it, the original's scores of an earlier audit of the run are kept.

    Raises:
        ConfigError: an unknown run, one without checkpoints, one that erased nothing.
        DataError, DivergenceError: a reference's training failed.
    """
    try:
        run = Run.get(store, run_id)
        unlearned, cfg = _last_model(run)
    except LookupError as e:
        raise ConfigError(f"audit: {e}") from None
    cfg.paths = paths
    members, others, planted = audit_sets(cfg)
    refs = [
        scores(f"reference seed {seed}", module, members, others)
        for seed, module in _references(run, cfg)
    ]
    before = _earlier(run)
    first: Scores | None
    if original is not None:
        first = scores("original", original, members, others)
    else:
        first = Scores(**before["original"]) if before.get("original") else None
    result = Audit(
        run.run_id,
        len(members.y),
        len(others.y),
        planted,
        scores("unlearned", unlearned, members, others),
        refs,
        first,
    )
    verdict(result)
    run.log_json(result.to_record(), runfiles.AUDIT_FILE)
    run.log_metrics(_metrics(result))
    return result


def canaries_of(store: Store, run_id: str, paths: PathsConfig) -> dict[str, list[int]]:
    """The ids of the canaries run ``run_id`` planted (``data.canaries``), by task: what
    ``make erase CANARIES=1`` erases.

    Raises:
        ConfigError: an unknown run, one without checkpoints, one that planted none.
    """
    try:
        _, cfg = _last_model(Run.get(store, run_id))
    except LookupError as e:
        raise ConfigError(f"erase: {e}") from None
    if not cfg.data.canaries:
        raise ConfigError(f"erase: run {run_id} planted no canaries (data.canaries=0)")
    data = ContinualDataModule(cfg.data, cfg.seed, 0, cfg.scenario, paths.data_dir())
    data.setup()
    return data.canaries


def _last_model(run: Run) -> tuple[ContinualModule, ExperimentConfig]:
    files = checkpoints.latest_checkpoints(run)
    if not files:
        raise LookupError(f"run {run.run_id} has no checkpoints")
    with scratch_dir() as tmp:
        try:
            loaded = checkpoints.fetch_checkpoint(run, files[max(files)], tmp)
        except ValueError as e:
            raise LookupError(f"run {run.run_id}: {e}") from None
    last = loaded.cfg.data.tasks[-1].name
    if max(files) != len(loaded.cfg.data.tasks) - 1:  # replaced, or rejected: not its model
        raise LookupError(f"run {run.run_id} has no checkpoint of its last task ({last})")
    return loaded.module, loaded.cfg


def _references(run: Run, cfg: ExperimentConfig) -> list[tuple[int, ContinualModule]]:
    """The models retrained from scratch without the samples, one per seed: reused when an
    earlier audit of the run trained them, else trained now (runs of the same experiment)."""
    client, key = run.client, reference_key(cfg)
    experiment = client.get_experiment(run.experiment_id).name
    name = client.get_run(run.run_id).info.run_name or run.run_id[:8]
    found = {
        r.data.tags.get(SEED_TAG): r.info.run_id
        for r in client.search_runs(
            [run.experiment_id],
            filter_string=f"tags.`{REFERENCE_TAG}` = '{key}' and status = 'FINISHED'",
        )
    }
    out = []
    for seed in range(cfg.seed + 1, cfg.seed + 1 + cfg.audit.references):
        ref_id = found.get(str(seed))
        if ref_id is None:
            ref = copy.deepcopy(cfg)
            ref.seed, ref.tracking.log_checkpoints = seed, True
            tags = {REFERENCE_TAG: key, SEED_TAG: str(seed)}
            opened = Run.factory(run.store, experiment, f"{name}-reference-s{seed}", None, tags)
            ref_id = run_sequence(ref, opened, splits=("val",)).run_id
        out.append((seed, _last_model(Run.get(run.store, ref_id))[0]))
    return out


def reference_key(cfg: ExperimentConfig) -> str:
    """What names a reference: the config it trains (erased samples included), less what
    does not change what it learns (the seed, which each reference sets, the paths, the
    tracking, the audit)."""
    tree = to_dict(cfg)
    for key in ("seed", "paths", "tracking", "audit", "name", "description"):
        tree.pop(key, None)
    for key in ("threads", "progress_bar"):  # where it runs, as a resume may change
        tree["trainer"].pop(key, None)
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:16]


def _earlier(run: Run) -> dict[str, Any]:
    try:
        found = run.read_json(runfiles.AUDIT_FILE)
    except LookupError:
        return {}
    return found if isinstance(found, dict) else {}


def _metrics(a: Audit) -> dict[str, float]:
    out = {
        "audit/unlearned_auc": a.unlearned.auc,
        "audit/unlearned_erased_acc": a.unlearned.erased_acc,
        "audit/reference_auc_min": min(r.auc for r in a.references),
        "audit/reference_auc_max": max(r.auc for r in a.references),
        "audit/passed": float(a.passed),
    }
    if a.original is not None:
        out |= {
            "audit/original_auc": a.original.auc,
            "audit/original_erased_acc": a.original.erased_acc,
        }
    return out


def format_audit(a: Audit) -> list[str]:
    """The audit as the command prints it: one row per model, then the verdict."""
    lines = [
        f"audit of run {a.run_id}: {a.members} erased sample(s) ({a.canaries} canaries) "
        f"against {a.held_out} held-out",
        f"{'model':<20} {'erased acc':>10} {'erased loss':>11} {'held-out acc':>12} "
        f"{'held-out loss':>13} {'MIA AUC':>8}",
    ]
    rows = [*([a.original] if a.original else []), a.unlearned, *a.references]
    for s in rows:
        lines.append(
            f"{s.model:<20} {100 * s.erased_acc:>10.1f} {s.erased_loss:>11.3f} "
            f"{100 * s.held_out_acc:>12.1f} {s.held_out_loss:>13.3f} {s.auc:>8.3f}"
        )
    if a.passed:
        lines.append("passed: the unlearned model is within the retrained references' spread")
    else:
        lines.append("FAILED: " + "; ".join(a.failures))
    return lines
