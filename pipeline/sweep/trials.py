"""How a study's trials are counted towards its total, and drawn: the sampler (seeded per
worker) and the pruner."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import optuna
from optuna.trial import FrozenTrial, TrialState

from pipeline.sweep.config import SweepConfig

WORKERS_ATTR = "pipeline.workers_started"  # seeds each new worker's sampler differently
# Trial states that count towards the requested number of trials. A failure counts when the
# trial itself failed (its loss diverged, its config was refused); a failure recorded because
# the worker died does not: its parameters are retried.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's INFO lines ("A new study created...") and experimental warnings off."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


# -- counting --------------------------------------------------------------------------------------
def failed_on_its_own(t: FrozenTrial) -> bool:
    """A failure of the trial itself (a diverging loss, a refused config), not of its worker."""
    # Failures recorded as "SystemExit"/"SIGTERMException" were interrupts inside Lightning that
    # studies of an earlier version took for the trial's own failure: they do not count either.
    interrupted = str(t.user_attrs.get("fail_reason", "")).startswith(
        ("SystemExit", "SIGTERMException")
    )
    return t.state == TrialState.FAIL and not t.user_attrs.get("crashed") and not interrupted


def finished(trials: Sequence[FrozenTrial]) -> int:
    """Trials that are over and count towards the total."""
    return sum(1 for t in trials if t.state in FINISHED or failed_on_its_own(t))


def counted(trials: Sequence[FrozenTrial]) -> int:
    """Trials that count towards the total: finished, or running."""
    return finished(trials) + sum(1 for t in trials if t.state == TrialState.RUNNING)


def make_sampler(sweep: SweepConfig, offset: int) -> optuna.samplers.BaseSampler:
    """The sampler, seeded with ``seed + offset`` (see :func:`claim_offset`)."""
    seed = sweep.seed + offset
    if sweep.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if sweep.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=sweep.startup_trials,
            multivariate=True,
            constant_liar=True,  # parallel workers: pending trials count as bad, not as unknown
        )


def claim_offset(study: optuna.Study) -> int:
    """A sampler seed offset no other worker of the study has (call under the storage lock):
    the count of workers started on it, times 1000. The first worker of a new study gets 0,
    so a sweep with one worker is reproducible; parallel and resumed workers, even started at
    the same moment on different machines, draw different random points."""
    n = int(study.user_attrs.get(WORKERS_ATTR, 0))
    study.set_user_attr(WORKERS_ATTR, n + 1)
    return 1000 * n


def make_pruner(sweep: SweepConfig) -> optuna.pruners.BasePruner:
    if sweep.objective != "accuracy" or sweep.pruner == "none":
        return optuna.pruners.NopPruner()
    if sweep.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=sweep.pruner_startup_trials)
