"""Where a run comes from, as it records it: its name, the command (MLflow's Source), the
commit, the package versions, and the links to it in the MLflow UI."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from pipeline.config.paths import REPO_ROOT, redact
from pipeline.config.schema import ExperimentConfig
from pipeline.server.ui_app import TRAINING_VIEW

TRACKED_PACKAGES = (
    "torch",
    "torchvision",
    "lightning",
    "mlflow",
    "optuna",
    "omegaconf",
    "numpy",
)


def source_name() -> str:
    """The command that runs, as the runs table's Source shows it (``pipeline run
    seed_forgetting``), passwords redacted; empty when not our command line."""
    argv = sys.argv
    if not argv or Path(argv[0]).resolve() != (REPO_ROOT / "pipeline" / "__main__.py"):
        return ""
    return redact(" ".join(["pipeline", *argv[1:3]]))[:200]


def ui_link(base: str, experiment_id: str | None = None, run_id: str | None = None) -> str:
    """``base``'s page of the experiments, an experiment's runs or a run, in the training view."""
    path = "/#/experiments"
    if experiment_id is not None:
        path += f"/{experiment_id}/runs" + (f"/{run_id}" if run_id else "")
    return f"{base}{path}?workflowType={TRAINING_VIEW}"


def default_run_name(cfg: ExperimentConfig) -> str:
    """``naive-domain-seed0-20261201-225637-3fa1``: what ran, when, and four hex digits from
    the OS (MLflow's own names come from Python's ``random``, which the experiment seed fixes:
    every run of a seed got the same name)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{'+'.join(cfg.strategy)}-{cfg.scenario}-seed{cfg.seed}-{stamp}-{os.urandom(2).hex()}"


#: What the benchmarks write into the repository (``benchmarks/record.py``: the measured tables
#: and the figures the docs show): outputs, not code, so a tree changed only there is not dirty;
#: else every benchmark run after another in one clone would name its commit ``-dirty``.
OUTPUTS = ("docs/measured", "docs/img")


def git_commit(root: Path = REPO_ROOT) -> str:
    """Commit of the working tree at ``root`` (with ``-dirty`` when it has uncommitted changes
    outside :data:`OUTPUTS`)."""
    outside = ["--", ".", *(f":(exclude){p}" for p in OUTPUTS)]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", *outside],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
