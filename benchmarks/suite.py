"""The continuous-integration run, timed from a fresh clone (``docs/measured/suite.md``).

Clones the checkout's HEAD into a scratch folder and runs there, one after the other, the
``make`` steps of ``.ci/run`` (read from it: one source of truth), timing each: creating the
environment and the linters, the test suite, the docs site. Writes their times, pytest's
count line and its slowest tests (``--durations``, which `make test` asks for). A step that
fails stops the script with its exit code and writes nothing; the clone is removed either way.

It is the check to run before a commit lands too: what CI runs, on what the commit holds and
nothing else (no ``.venv``, no data, no store). The numbers are only as quiet as the machine:
run it idle (``uptime``).

    .venv/bin/python benchmarks/suite.py
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import record

#: pytest's closing line ("1061 passed, 7 skipped, 3 deselected in 608.12s (0:10:08)").
COUNTS = re.compile(r"^=* ?(\d+ passed.*? in [\d.]+s.*?) ?=*$", re.M)
#: one line of pytest's slowest durations ("70.12s call     tests/test_x.py::test_y").
DURATION = re.compile(r"^([\d.]+)s (call|setup|teardown)\s+(\S+)$", re.M)


def steps(ci: Path) -> list[str]:
    """The ``make`` lines of ``.ci/run``, in order."""
    return [line.strip() for line in ci.read_text().splitlines() if line.startswith("make ")]


def minutes(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    record.add_argument(parser)
    args = parser.parse_args()
    rows, out = [], ""
    with tempfile.TemporaryDirectory(prefix="pipeline-ci-") as scratch:
        clone = Path(scratch) / "clone"
        subprocess.run(["git", "clone", "-q", str(record.ROOT), str(clone)], check=True)
        for step in steps(clone / ".ci" / "run"):
            print(f"$ {step}", flush=True)
            started = time.perf_counter()
            done = subprocess.run(step.split(), cwd=clone, capture_output=True, text=True)
            took = time.perf_counter() - started
            print(done.stdout[-3000:], done.stderr[-3000:], sep="\n", flush=True)
            if done.returncode:
                print(f"failed: {step} (exit {done.returncode})", file=sys.stderr)
                sys.exit(done.returncode)  # the scratch folder goes as the exit unwinds
            rows.append([f"`{step}`", minutes(took)])
            if step.startswith("make test"):
                out = done.stdout
    counts = COUNTS.findall(out)
    slowest = [[f"{float(s):.0f} s", when, f"`{test}`"] for s, when, test in DURATION.findall(out)]
    body = "\n".join(
        [
            "From a fresh clone, the steps of `.ci/run` (the environment from uv's cache, then "
            "the linters, the tests, the docs site):",
            "",
            record.table(["step", "time"], rows),
            "",
            f"pytest: {counts[-1] if counts else 'no count line'}.",
            "",
            "The slowest tests (pytest's `--durations`, each in its own process's time):",
            "",
            record.table(["time", "phase", "test"], slowest),
            "",
        ]
    )
    print(body)
    record.write("suite", body, args.measured)


if __name__ == "__main__":
    main()
