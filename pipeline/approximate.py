"""Approximate unlearning, for when rewinding costs too much: ``make erase UNLEARN=approx``, and
``make unlearn-tune``, the Optuna study that chooses its settings.

The run's final model is fine-tuned with NegGrad+ (:mod:`pipeline.neggrad`) for a fraction of
the samples the exact retraining would process (``Params.budget``, 20% unless the study chose
otherwise). The result is a new run tagged ``pipeline.unlearning=approximate`` (its erasure
record says ``"mode": "approximate"``, and ``make erase`` prints it), holding the checkpoints of
the tasks before the erased samples (carried over, as the exact unlearning does) and the
fine-tuned model as its last task's checkpoint. It is audited (:mod:`pipeline.audit`) before it
is accepted: only a model within the spread of models retrained without the samples replaces the
original (whose later weights are then deleted). One that fails is tagged
``pipeline.rejected``, its model deleted, and the exact unlearning runs instead, unless the
command was told not to (``FALLBACK=0``: it exits 1 and the original is left as it was).

The study (``make unlearn-tune RUN=<id>``) asks what the approximate unlearning should be close
to: it unlearns a validation request exactly (``--size`` samples of ``--task`` drawn by the
seed, never the samples of a real request), in a run tagged ``pipeline.unlearning=validation``
that replaces nothing, then each trial fine-tunes a copy of the original with NegGrad+ and
scores its distance to that exact model: the gaps in the membership AUC and the accuracy on the
erased samples (against held-out ones, as the audit measures them) plus the gap in mean
validation accuracy. No test sample is read. Its best settings are
what ``UNLEARN=approx`` then uses for that run (study ``unlearn-<run id's first 8>``).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict

import optuna
import torch

from pipeline import checkpoints
from pipeline.audit import audit, audit_sets, scores
from pipeline.config.paths import PathsConfig
from pipeline.config.schema import to_dict
from pipeline.data.datamodule import ContinualDataModule
from pipeline.data.tasks import Batch
from pipeline.erasure import ErasureError
from pipeline.errors import RunFailed
from pipeline.keys import acc_key
from pipeline.metrics import percent
from pipeline.module import ContinualModule
from pipeline.neggrad import Params, neggrad
from pipeline.runner import evaluate, log_run_info
from pipeline.store import Store
from pipeline.sweep.storage import open_storage
from pipeline.tracking import Run, scratch_dir
from pipeline.unlearning import (
    APPROX_FROM_TAG,
    FROM_TAG,
    MODE_TAG,
    REQUEST_TAG,
    Plan,
    Request,
    Unlearned,
    plan,
    replace_original,
    retrain,
    unlearn,
)

REJECTED_TAG = "pipeline.rejected"


class AuditFailed(RunFailed):
    """The approximate unlearning failed its audit and was told not to fall back (exit 1)."""


def study_name(run_id: str) -> str:
    """The study that tunes the approximate unlearning of run ``run_id``."""
    return f"unlearn-{run_id[:8]}"


def chosen(run_id: str, paths: PathsConfig) -> tuple[Params, bool]:
    """The settings the run's study chose, and whether there was one (else the defaults)."""
    try:
        study = optuna.load_study(
            study_name=study_name(run_id), storage=open_storage(paths.studies_uri())
        )
        best = study.best_trial.params
    except (KeyError, ValueError):  # no such study, or no finished trial
        return Params(), False
    return Params(lr=best["lr"], alpha=best["alpha"]), True


def unlearn_approx(
    store: Store,
    run_id: str,
    request: Request,
    paths: PathsConfig,
    budget: float = Params.budget,
    fallback: bool = True,
) -> Unlearned:
    """Erase ``request`` from run ``run_id`` approximately, for ``budget`` of the exact
    retraining's samples; exactly when its audit fails and ``fallback`` is on.

    Raises:
        ErasureError: a budget outside (0, 1]; as :func:`pipeline.unlearning.plan`.
        AuditFailed: the audit failed and ``fallback`` is off (the original untouched).
    """
    if not 0 < budget <= 1:
        raise ErasureError(
            f"--budget: {budget}; the approximate unlearning's share of the exact retraining's "
            "samples is in (0, 1]"
        )
    p = plan(store, run_id, request, paths)
    params, tuned = chosen(p.source.run_id, paths)
    params.budget = budget
    started = time.perf_counter()
    original, data, erased = _inputs(p)
    module = copy.deepcopy(original)
    samples = neggrad(module, data, p.rewind, erased, _budget(p, params), params, p.cfg.seed)
    seconds = time.perf_counter() - started
    new = _record(p, module, data, {**asdict(params), "tuned": tuned, "samples": samples})
    new.set_tags({"unlearning_seconds": f"{seconds:.1f}"})  # the fine-tuning alone
    report = audit(store, new.run_id, paths, original)
    if report.passed:
        done = replace_original(
            p, new, seconds, False, "approximate", settings=asdict(params), tuned=tuned
        )
        done.audit = report
        return done
    why = "; ".join(report.failures)
    new.set_tags({REJECTED_TAG: f"audit failed: {why}"[:5000]})
    for f in checkpoints.checkpoint_files(new).get(len(p.cfg.data.tasks) - 1, []):
        new.delete_file(f.path)
    if not fallback:
        raise AuditFailed(
            f"the approximate unlearning (run {new.run_id}) failed its audit ({why}); "
            f"run {p.source.run_id} is left as it was (without FALLBACK=0: exact unlearning)"
        )
    print(f"the approximate unlearning failed its audit ({why}): unlearning exactly instead")
    return unlearn(store, run_id, request, paths)


def _inputs(p: Plan) -> tuple[ContinualModule, ContinualDataModule, Batch]:
    """The original's final model, the sequence less the erased samples, the erased ones."""
    files = checkpoints.latest_checkpoints(p.source)
    with scratch_dir() as tmp:
        original = checkpoints.fetch_checkpoint(p.source, files[max(files)], tmp).module
    data = ContinualDataModule(p.cfg.data, p.cfg.seed, 0, p.cfg.scenario, p.cfg.paths.data_dir())
    data.setup()
    return original, data, audit_sets(p.cfg)[0]


def _budget(p: Plan, params: Params) -> int:
    """``params.budget`` of the samples the exact retraining from ``p.rewind`` processes (as
    the original's tasks from there on did; their count is in its last checkpoint)."""
    files = checkpoints.latest_checkpoints(p.source)
    with scratch_dir() as tmp:
        raw = checkpoints.read_checkpoint(p.source.download(files[max(files)].path, tmp))
    records = raw["pipeline"].get("progress", {}).get("records", [])
    total = sum(int(r["samples"]) for r in records[p.rewind :])
    if not total:
        raise ErasureError(f"run {p.source.run_id} records no training samples to budget from")
    return max(1, int(params.budget * total))


def _record(
    p: Plan, module: ContinualModule, data: ContinualDataModule, settings: dict[str, object]
) -> Run:
    """The approximate unlearning's run: its config and settings, the carried checkpoints,
    the model as its last task's checkpoint, and every task's accuracy."""
    source = p.source
    name = source.client.get_run(source.run_id).info.run_name or source.run_id[:8]
    experiment = source.client.get_experiment(source.experiment_id).name
    tags = {
        FROM_TAG: source.run_id,
        REQUEST_TAG: p.request.key,
        MODE_TAG: "approximate",
        APPROX_FROM_TAG: str(p.rewind),
    }
    device = torch.device("cpu")
    with Run.start(source.store, experiment, f"{name}-approx", None, tags) as run:
        log_run_info(run, p.cfg, data.tasks, device, p.splits)
        run.log_params({f"unlearning.{k}": v for k, v in settings.items()})
        config = to_dict(p.cfg)
        for f in p.carried:
            checkpoints.copy_checkpoint(source, f, run, config)
        last = data.tasks[-1]
        meta = checkpoints.CheckpointMeta(
            run.run_id,
            last.index,
            last.name,
            data.classes_per_task,
            config,
            {"rows": {s: [] for s in p.splits}},
            list(data.input_shape),
        )
        checkpoints.save_checkpoint(run, module, [], meta)
        acc = evaluate(module, data, device, p.splits)
        run.log_metrics(
            {
                acc_key(t.name, s): percent(a)
                for s in p.splits
                for t, a in zip(data.tasks, acc[s], strict=True)
            },
            step=last.index,
        )
    return run


def tune(
    store: Store, run_id: str, paths: PathsConfig, task: str, size: int, trials: int
) -> optuna.Study:
    """The study of NegGrad+'s settings for run ``run_id``, against the exact unlearning of a
    validation request of ``size`` samples of ``task`` (resumed when it exists).

    Raises:
        ErasureError: as :func:`pipeline.unlearning.plan`, for the validation request.
    """
    p = plan(store, run_id, _validation_request(store, run_id, paths, task, size), paths)
    exact = _exact_model(p)
    original, data, _ = _inputs(p)
    members, others, _ = audit_sets(p.cfg)
    budget = _budget(p, Params())
    target = _scores(exact, data, members, others)
    storage = open_storage(paths.studies_uri())
    study = optuna.create_study(
        study_name=study_name(p.source.run_id),
        storage=storage,
        load_if_exists=True,
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=p.cfg.seed),
    )

    def distance(trial: optuna.Trial) -> float:
        params = Params(
            lr=trial.suggest_float("lr", 1e-5, 1e-2, log=True),
            alpha=trial.suggest_float("alpha", 0.5, 0.999),
        )
        module = copy.deepcopy(original)
        neggrad(module, data, p.rewind, members, budget, params, p.cfg.seed)
        got = _scores(module, data, members, others)
        return sum(abs(a - b) for a, b in zip(got, target, strict=True))

    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    study.optimize(distance, n_trials=max(0, trials - done))
    return study


def _validation_request(
    store: Store, run_id: str, paths: PathsConfig, task: str, size: int
) -> Request:
    """``size`` training samples of ``task`` drawn by the run's seed, none erased before."""
    source = Run.get(store, run_id)
    files = checkpoints.latest_checkpoints(source)
    if not files:
        raise ErasureError(f"run {source.run_id} has no checkpoints")
    with scratch_dir() as tmp:
        cfg = checkpoints.fetch_checkpoint(source, files[min(files)], tmp).cfg
    cfg.paths = paths
    data = ContinualDataModule(cfg.data, cfg.seed, 0, cfg.scenario, paths.data_dir())
    data.setup()
    names = [t.name for t in data.tasks]
    if task not in names:
        raise ErasureError(
            f"task '{task}' is not in run {source.run_id} (tasks: {', '.join(names)})"
        )
    ids = data.tasks[names.index(task)].train.ids
    if not 1 <= size < len(ids):
        raise ErasureError(f"--size: {size} of the {len(ids)} samples task '{task}' trains on")
    g = torch.Generator().manual_seed(cfg.seed)
    return Request({task: ids[torch.randperm(len(ids), generator=g)[:size]].tolist()})


def _exact_model(p: Plan) -> ContinualModule:
    """The validation request unlearned exactly: the run an earlier study trained, or a new
    one (tagged ``validation``; it replaces nothing)."""
    client = p.source.client
    found = client.search_runs(
        [p.source.experiment_id],
        filter_string=(
            f"tags.`{FROM_TAG}` = '{p.source.run_id}' and tags.`{REQUEST_TAG}` = "
            f"'{p.request.key}' and tags.`{MODE_TAG}` = 'validation' and status = 'FINISHED'"
        ),
    )
    run_id = found[0].info.run_id if found else retrain(p, "validation", **{MODE_TAG: "validation"})
    run = Run.get(p.source.store, run_id)
    files = checkpoints.latest_checkpoints(run)
    with scratch_dir() as tmp:
        return checkpoints.fetch_checkpoint(run, files[max(files)], tmp).module


def _scores(
    module: ContinualModule, data: ContinualDataModule, members: Batch, others: Batch
) -> list[float]:
    """What the study brings close to the exact model's: the membership AUC and the accuracy
    on the erased samples (as the audit measures them), and the mean validation accuracy
    over the tasks."""
    s = scores("", module, members, others)
    val = evaluate(module, data, torch.device("cpu"), ("val",))["val"]
    return [s.auc, s.erased_acc, sum(val) / len(val)]
