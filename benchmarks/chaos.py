"""A real-data run killed at random moments and resumed (``docs/measured/chaos-real.md``).

Runs ``tests/chaos.py --real <kills> --seed <seed>``: Permuted MNIST with 3 tasks (1 epoch of a
few hundred batches each) trained once uninterrupted, then killed with SIGKILL at ``kills``
moments (each kind of moment in turn, at a random call) and resumed after each, and the two
compared: the same matrices, each metric step logged once. Writes what it printed; a run that
is not identical to the uninterrupted one fails the script (exit 1) and writes nothing.

    .venv/bin/python benchmarks/chaos.py [--kills 10] [--seed 0]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import record

IDENTICAL = "identical to the uninterrupted run: True; metric steps logged twice: 0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="kills, each then resumed")
    parser.add_argument("--seed", type=int, default=0, help="the seed of the moments")
    record.add_argument(parser)
    args = parser.parse_args()
    chaos = [sys.executable, str(record.ROOT / "tests" / "chaos.py")]
    command = [*chaos, "--real", str(args.kills), "--seed", str(args.seed)]
    done = subprocess.run(command, cwd=record.ROOT, capture_output=True, text=True)
    print(done.stdout, done.stderr[-3000:], sep="\n")
    if done.returncode or IDENTICAL not in done.stdout:
        sys.exit(f"failed: {' '.join(command)} (exit {done.returncode})")
    # from its own first line on: the uninterrupted run's output comes before
    printed = done.stdout[done.stdout.index("uninterrupted run:") :].strip()
    body = "\n".join(["What it printed:", "", "```", printed, "```", ""])
    record.write("chaos-real", body, args.measured)


if __name__ == "__main__":
    main()
