"""Numbers that write themselves: a benchmark's result as ``docs/measured/<name>.md``.

The docs pages used to quote benchmark outputs copied by hand, and remeasuring meant editing
pages (27 of 87 commits once did nothing but remeasure by hand). Now each script in
``benchmarks/`` that produces a number the docs show hands its Markdown (tables, a line of
context) to :func:`write`, which puts a header line on top and writes
``docs/measured/<name>.md``; the pages include that file (``--8<-- "measured/<name>.md"``:
``pymdownx.snippets`` in ``mkdocs.yml``, which fails the build on a missing file). Remeasuring
is running the command; no file there is edited by hand.

The header is one line::

    Measured by `<command>` on <date> (took <duration>) at commit `<commit>`; machine: <usable
    cores> of <cores> (<CPU model>), GPU: <name or none>, <platform>, load <1-min> at the start.

- the command as one types it again: the interpreter and the script relative to the repository
  (``.venv/bin/python benchmarks/overhead.py --root data``), every argument as given;
- the date the benchmark started (this module is imported at the start of each script, so its
  clock and the load average are read before any work);
- the commit of the working tree, ``-dirty`` with uncommitted changes
  (:func:`pipeline.provenance.git_commit`, as runs record it);
- the machine: the cores this process may use (``os.sched_getaffinity``) against the machine's,
  the CPU model, the GPUs ``nvidia-smi`` lists, the platform, the load average at the start
  (above the usable cores, the times are noisy).

A script that also keeps a JSON report (``benchmarks/contention.py``) writes it with
:func:`write_json`: the same provenance, plus its raw values.

Our own small code, on purpose: what we need is a Markdown fragment with our header that
MkDocs includes; benchmark runners (pytest-benchmark, asv) keep results in their own formats
for their own reports, and none writes this.

This module imports nothing but the standard library when it is imported (the pipeline's
provenance only when it writes), so that a script timing its own imports can import it first.

A placeholder, for a benchmark not run yet at a commit, is one line a test accepts too::

    Not measured yet at this commit: run `<command>`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: Where the docs include the files from (``--measured`` overrides it, e.g. for a test).
MEASURED = ROOT / "docs" / "measured"
#: Read when the script starts (it imports this module first): the benchmark's date and load.
STARTED = datetime.datetime.now().astimezone()
STARTED_CLOCK = time.perf_counter()
LOAD_AT_START = os.getloadavg()
#: The command line as the script was started (a script may change sys.argv: first_step.py
#: hands its arguments to the pipeline's command line that way).
ARGV = list(sys.argv)
#: What the header line starts with; a placeholder starts with PLACEHOLDER.
MEASURED_BY = "Measured by "
PLACEHOLDER = "Not measured yet at this commit: run "


def add_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--measured DIR`` option every benchmark takes: where its ``<name>.md`` goes."""
    parser.add_argument(
        "--measured",
        default=str(MEASURED),
        metavar="DIR",
        help="folder of the Markdown result the docs include (default: docs/measured)",
    )


def command(argv: Sequence[str] | None = None, executable: str | None = None) -> str:
    """This process's command line as one types it again from the repository root: paths
    inside the repository relative to it, each argument quoted for the shell where it needs."""

    def short(path: str) -> str:
        p = Path(path)
        if not p.is_absolute():
            p = Path.cwd() / p
        try:
            return str(p.relative_to(ROOT))
        except ValueError:
            return path

    argv = list(ARGV if argv is None else argv)
    python = short(executable or sys.executable)
    script = short(argv[0]) if argv else ""
    return shlex.join([python, script, *argv[1:]])


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def gpus() -> list[str]:
    """The GPUs ``nvidia-smi`` lists (none without it); no torch import needed."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def machine() -> dict[str, Any]:
    return {
        "cores": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_model(),
        "gpus": gpus(),
        "platform": platform.platform(),
        "load_at_start": list(LOAD_AT_START),
    }


def provenance(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command, date (the start), duration so far, commit and machine of this benchmark."""
    from pipeline.provenance import git_commit  # here: importing this module stays stdlib-only

    return {
        "command": command(argv),
        "date": STARTED.isoformat(timespec="seconds"),
        "took_s": round(time.perf_counter() - STARTED_CLOCK, 1),
        "commit": git_commit(),
        "machine": machine(),
    }


def duration(seconds: float) -> str:
    """``45 s``, ``3 min 2 s``, ``1 h 4 min``."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def machine_text(m: dict[str, Any] | str) -> str:
    """The machine in words; a string is taken as it is (a measurement recorded by hand)."""
    if isinstance(m, str):
        return m
    gpu = ", ".join(m["gpus"]) if m["gpus"] else "none"
    return (
        f"{m['cores']} usable cores of {m['cpu_count']} ({m['cpu']}), GPU: {gpu}, "
        f"{m['platform']}, load {m['load_at_start'][0]:.2f} at the start"
    )


def header(p: dict[str, Any]) -> str:
    """The header line of a measured file, from :func:`provenance`'s fields."""
    took = f" (took {duration(p['took_s'])})" if p.get("took_s") is not None else ""
    commit = p["commit"]
    if re.fullmatch(r"[0-9a-f]{7,40}(-dirty)?", commit):
        commit = f"`{commit}`"
    return (
        f"{MEASURED_BY}`{p['command']}` on {p['date']}{took} at commit {commit}; "
        f"machine: {machine_text(p['machine'])}."
    )


def spread(values: Sequence[float], unit: str, digits: int = 1) -> str:
    """``39.7 s (38.4 to 43.7)``: the median and the range of the repeats (one: the value)."""
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.{digits}f} {unit}"
    return f"{med:.{digits}f} {unit} ({min(values):.{digits}f} to {max(values):.{digits}f})"


def table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; numbers are expected formatted already (cells are str()'d)."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render(p: dict[str, Any], body: str) -> str:
    return f"{header(p)}\n\n{body.strip()}\n"


def write(name: str, body: str, measured: str | Path = MEASURED) -> Path:
    """Write ``<measured>/<name>.md``: the header line, then ``body`` (Markdown)."""
    path = Path(measured) / f"{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(provenance(), body))
    print(f"written: {path}", flush=True)
    return path


def write_json(path: str | Path, report: dict[str, Any]) -> Path:
    """A JSON report: :func:`provenance` first, then ``report``'s raw values."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**provenance(), **report}, indent=2) + "\n")
    print(f"written: {out}", flush=True)
    return out


#: The line a pipeline run prints at its end, ``MLflow run <id> (store: ...)``: the run's id.
RUN_ID = re.compile(r"MLflow run ([0-9a-f]{32})")
