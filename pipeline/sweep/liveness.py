"""Which sweep workers still run their trials, and what becomes of a dead one's trial.

Liveness, for crash recovery. Our workers use Optuna's ask/tell interface, where Optuna's own
heartbeat does not run (it lives inside ``study.optimize``), so a worker writes its own: a
``heartbeat`` user attribute of its running trial, rewritten every ``heartbeat_s``. Another
worker decides that a running trial's worker died:

- on the same host, at once, from the process table (the pid and its start time);
- on another host, when it has seen the trial's heartbeat unchanged for ``grace_s`` by its *own*
  clock (:class:`Liveness`). Machines' clocks may disagree; comparing one machine's timestamp
  with another's clock could reap a live trial, watching for a change cannot.

A dead worker's trial is marked failed with the reason (its MLflow run too) and its parameters
are enqueued again, so the study still reaches its total with no trial lost or duplicated.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from pipeline.processes import process_alive
from pipeline.store import Store
from pipeline.tracking import Run


class Liveness:
    """Whether the worker of a running trial is still there (see the module docstring).

    Args:
        grace_s: how long a remote trial's heartbeat may stay unchanged.
        clock: this worker's monotonic clock (a test's fake one).
    """

    def __init__(self, grace_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace_s = grace_s
        self.clock = clock
        self._seen: dict[int, tuple[Any, float]] = {}  # trial id -> (heartbeat, first seen)

    def alive(self, trial: FrozenTrial) -> bool:
        local = process_alive(str(trial.user_attrs.get("worker", "")))
        if local is not None:
            return local
        beat, now = trial.user_attrs.get("heartbeat"), self.clock()
        seen = self._seen.get(trial._trial_id)
        if seen is None or seen[0] != beat:
            self._seen[trial._trial_id] = (beat, now)
            return True
        return now - seen[1] < self.grace_s


class Heartbeat:
    """Writes the time into a running trial every ``interval`` seconds (a daemon thread)."""

    def __init__(self, trial: optuna.Trial, interval: float) -> None:
        self.trial, self.interval = trial, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):  # a missed beat is not worth failing a trial
                self.trial.set_user_attr("heartbeat", time.time())

    def __enter__(self) -> Heartbeat:
        self.trial.set_user_attr("heartbeat", time.time())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _set_attr(study: optuna.Study, trial: FrozenTrial, key: str, value: Any) -> None:
    # A FrozenTrial has no setter, and the trial may belong to a dead worker: write through the
    # storage (Optuna's own retry callbacks work on the storage the same way).
    study._storage.set_trial_user_attr(trial._trial_id, key, value)


def abandon(study: optuna.Study, trial: FrozenTrial, store: Store, reason: str) -> None:
    """Mark a trial cut off by a crash or an interrupt as failed and enqueue its parameters.

    Its MLflow run (the trial records its id), if still running, is marked failed with the
    reason.
    """
    _set_attr(study, trial, "crashed", True)
    _set_attr(study, trial, "fail_reason", reason)
    study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    attrs: dict[str, Any] = {"retry_of": trial.number}
    if trial.user_attrs.get("default"):
        attrs["default"] = True
    study.enqueue_trial(dict(trial.params), user_attrs=attrs, skip_if_exists=False)
    run_id = trial.user_attrs.get("mlflow_run_id")
    try:
        run = Run.get(store, run_id) if run_id else None
    except LookupError:  # in a store this worker does not see: the trial is retried anyway
        run = None
    if run is not None:
        if run.status == "RUNNING":
            run.end("FAILED", {"error": reason})
        run.set_tags({"optuna.state": "FAIL"})


def reap(study: optuna.Study, store: Store, liveness: Liveness, log: Callable[[str], None]) -> None:
    """Fail and re-enqueue the running trials whose worker has died."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not liveness.alive(t):
            reason = f"crashed: worker {t.user_attrs.get('worker', '?')} stopped mid-trial"
            abandon(study, t, store, reason)
            log(f"trial {t.number}: {reason}; its parameters are queued again")
