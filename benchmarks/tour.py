"""The tour of the getting-started page, timed from a fresh clone (``docs/measured/tour.md``,
and ``docs/measured/forget-output.md``: what ``make forget`` printed).

Clones the checkout's HEAD into a scratch folder and runs there, one after the other, the
commands a newcomer runs first (:data:`STEPS`), timing each and keeping the end of what each
printed; then starts ``make ui`` and times it until the UI answers over HTTP, and stops it; then
checks that ``git status`` is clean (no command writes a tracked file). A step that fails stops
the script with its exit code and writes nothing; the clone is removed either way.

The environment comes from uv's cache (``make install`` here has filled it), the data from the
package registries as ``make data`` fetches them. The numbers are only as quiet as the machine:
run it idle (``uptime``); the sweep's two workers take both of this machine's cores.

    .venv/bin/python benchmarks/tour.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import record
from suite import minutes

from pipeline.server.common import end_session, free_port


@dataclass(frozen=True)
class Step:
    """One command of the tour: what the table calls it, the command, how many of the last
    lines of its output the page shows (0: none)."""

    name: str
    command: str
    tail: int = 0


STEPS = (
    Step("set-up", "make install"),
    Step("set-up", "make data", 4),
    Step("the founding run", "make forget"),  # its whole output: forget-output.md
    Step(
        "three strategies",
        "make compare EXP=quick_forgetting STRATEGIES=naive,ewc,replay SEEDS=1",
        12,
    ),
    Step("a sweep", "make sweep EXP=quick_forgetting STRATEGY=ewc TRIALS=4 WORKERS=2", 12),
    Step("choose and test", "make best STUDY=quick_forgetting-ewc", 24),
)
FORGET = "make forget"
UI_WAIT_S = 120  # the UI's first start compiles nothing, but a loaded machine is slow


def run(step: Step, clone: Path) -> tuple[float, float, str]:
    """Run one step in the clone: its wall time, the peak resident memory of its largest
    process in GiB (``wait4``'s ``ru_maxrss``: the maximum over make and every process it
    waited for), and its standard output (make's own echo of each command left out). Exits
    with the step's code when it fails."""
    print(f"$ {step.command}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            step.command.split(), cwd=clone, stdout=subprocess.PIPE, stderr=err, text=True
        )
        assert proc.stdout is not None
        out = proc.stdout.read()  # to the end (stderr goes to a file: no pipe to fill)
        _, status, usage = os.wait4(proc.pid, 0)  # not proc.wait(): wait4 gives its usage
        took = time.perf_counter() - started
        code = proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        print(out[-3000:], err.read()[-3000:], sep="\n", flush=True)
    if code:
        print(f"failed: {step.command} (exit {code})", file=sys.stderr)
        sys.exit(code)  # the scratch folder goes as the exit unwinds
    shown = [line for line in out.splitlines() if not line.startswith(".venv/bin/")]
    return took, usage.ru_maxrss / 2**20, "\n".join(shown).strip()


def ui_start(clone: Path) -> float:
    """``make ui`` on a free port: the seconds until its page answers; then it is stopped."""
    port = free_port()
    command = ["make", "ui", f"PORT={port}"]
    print(f"$ {' '.join(command)}", flush=True)
    started = time.perf_counter()
    ui = subprocess.Popen(command, cwd=clone, stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        while time.perf_counter() - started < UI_WAIT_S:
            if ui.poll() is not None:
                sys.exit(f"failed: make ui exited {ui.returncode} before it answered")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as page:
                    if page.status == 200:
                        return time.perf_counter() - started
            except OSError:
                time.sleep(0.2)
        sys.exit(f"failed: make ui did not answer within {UI_WAIT_S} s")
    finally:
        end_session(ui)


def fenced(text: str) -> list[str]:
    return ["```", text, "```"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    record.add_argument(parser)
    args = parser.parse_args()
    rows: list[list[str]] = []
    ends: list[str] = []
    forget = ""
    with tempfile.TemporaryDirectory(prefix="pipeline-tour-") as scratch:
        clone = Path(scratch) / "clone"
        subprocess.run(["git", "clone", "-q", str(record.ROOT), str(clone)], check=True)
        total = 0.0
        for step in STEPS:
            took, peak, out = run(step, clone)
            total += took
            rows.append([step.name, f"`{step.command}`", minutes(took), f"{peak:.2f} GiB"])
            if step.command == FORGET:
                forget = out
            if step.tail:
                tail = "\n".join(out.splitlines()[-step.tail :])
                ends += [f"`{step.command}` ended:", "", *fenced(tail), ""]
        rows.append(
            ["browse", "`make ui`, then the printed link", f"up in {minutes(ui_start(clone))}", ""]
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True
        ).stdout.strip()
    clean = "clean" if not dirty else f"not clean:\n\n{chr(10).join(fenced(dirty))}"
    body = "\n".join(
        [
            f"From a fresh clone, one after the other ({minutes(total)} for the steps in all; "
            f"`git status` at the end: {clean}):",
            "",
            record.table(["step", "command", "time", "peak memory"], rows),
            "",
            *ends,
        ]
    )
    print(body)
    record.write("tour", body, args.measured)
    record.write("forget-output", "\n".join(fenced(forget)) + "\n", args.measured)


if __name__ == "__main__":
    main()
