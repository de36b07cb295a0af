"""The OpenMP wait policy of a pipeline process (pipeline/__init__.py): PASSIVE unless the user
names one, so that a run takes its fair share of a busy machine (benchmarks/contention.py)."""

import os
import subprocess
import sys

import pytest

# A process that imports the package, then torch, as every pipeline process does. libgomp prints
# its settings when torch loads it under OMP_DISPLAY_ENV=verbose: GOMP_SPINCOUNT tells what its
# threads really do, where OMP_WAIT_POLICY does not (unset prints as PASSIVE, yet spins 300000
# times; ACTIVE spins 3e10 times).
PROBE = "import pipeline, torch; print(pipeline.OMP_WAIT_POLICY)"


@pytest.mark.parametrize(
    ("given", "policy", "spins"),
    [(None, "PASSIVE", "0"), ("ACTIVE", "ACTIVE", "30000000000")],
    ids=["default", "user's"],
)
def test_wait_policy_is_passive_unless_the_user_sets_one(
    given: str | None, policy: str, spins: str
) -> None:
    # Not this process's environment as it is: importing the package here set the variable.
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["OMP_DISPLAY_ENV"] = "verbose"
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"OMP_WAIT_POLICY = '{policy}'" in proc.stderr
    assert f"GOMP_SPINCOUNT = '{spins}'" in proc.stderr
    assert proc.stdout.split() == [policy]  # what the run records (tag omp_wait_policy)
