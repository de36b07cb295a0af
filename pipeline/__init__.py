"""Continual-learning experiment pipeline.

Importing the package sets ``OMP_WAIT_POLICY=PASSIVE`` unless the environment already names a
policy (see :data:`OMP_WAIT_POLICY`).
"""

import os
import sys

# torch's OpenMP threads (libgomp) spin after each parallel region while they wait for the next
# one. Alone on a machine that costs nothing, but beside other CPU-bound processes the spinning
# threads take the cores those need: a run beside two of them took 3.1x its time alone on 2
# cores, where its fair share gives 2x; PASSIVE (the threads sleep) took 1.9x, and the same time
# alone (benchmarks/contention.py). libgomp reads the variable once, when torch loads it, so it
# is set here: this module is the first thing every pipeline process runs (``python -m
# pipeline``, the ``pipeline`` command, the sweep workers, the extra ranks of a DDP run, which
# re-run the command line), before anything imports torch. Processes this one starts inherit
# it. A user's own value (ACTIVE, for a machine of one's own) is kept.
_BEFORE = os.environ.get("OMP_WAIT_POLICY")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

#: The wait policy torch's OpenMP threads run under in this process, for the run's record: the
#: environment's value when torch is loaded after this package (the usual case); where torch was
#: imported first (a script that imports it before the pipeline), what it found then (``None``:
#: unset, libgomp's default, spinning a while before sleeping).
OMP_WAIT_POLICY: str | None = _BEFORE if "torch" in sys.modules else os.environ["OMP_WAIT_POLICY"]
