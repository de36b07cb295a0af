"""How a command's process ends: ``python -m pipeline`` skips the interpreter's teardown of its
modules (2.2 to 2.4 s with torch, Lightning and MLflow loaded), and still does what an exit must."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import atexit, ctypes, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from pipeline.exiting import exit_now

out = Path(sys.argv[1])
atexit.register(lambda: (out / "atexit").write_text("ran"))

def late():
    time.sleep(0.3)
    (out / "thread").write_text("joined")

threading.Thread(target=late).start()
pool = ThreadPoolExecutor(2)  # idle workers wait on their queue: the exit must stop them
pool.submit(lambda: None).result()
sys.stdout.write("python, no newline at the end")
ctypes.CDLL(None).printf(b"from C\n")  # stdout is a pipe: C buffers it
exit_now(3)
"""


def test_a_fast_exit_joins_threads_runs_atexit_and_flushes_python_and_c(tmp_path: Path) -> None:
    # PYTHONUNBUFFERED (set on some machines) would unbuffer C's stdout too, hiding a lost flush
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 3, proc.stderr
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "joined"
    assert "python, no newline at the end" in proc.stdout and "from C" in proc.stdout


ENTRY = r"""
import runpy, sys
from pathlib import Path

class Marker:  # deleted when the interpreter tears its modules down, never after os._exit
    def __init__(self, path):
        self.path = path

    def __del__(self):
        self.path.write_text("torn down")

marker = Marker(Path(sys.argv[1]))
sys.argv = ["pipeline", "run", "synthetic_forgetting", "trainer.epochz=1"]
runpy.run_module("pipeline", run_name="__main__")
"""


def test_python_m_pipeline_exits_with_mains_code_and_skips_the_teardown(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    proc = subprocess.run(
        [sys.executable, "-c", ENTRY, str(marker)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error:"), proc.stderr
    assert not marker.exists(), "the interpreter tore the modules down"
