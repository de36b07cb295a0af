"""The Makefile passes what users type through whole (quoted), and the `make run` examples of
the README and the docs compose as written. `make -n` prints a target's command without
running it."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config.paths import REPO_ROOT


def dry_run(*make_args: str) -> list[str]:
    """The argv of the pipeline command a make target runs (its last line under `make -n`)."""
    out = subprocess.run(
        ["make", "-s", "-n", *make_args], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    return shlex.split(out.splitlines()[-1])


def test_values_with_spaces_and_quotes_reach_the_command_whole() -> None:
    argv = dry_run("run", "EXP=seed_forgetting", "DATA=my data/it's here")
    assert "paths.data=my data/it's here" in argv
    argv = dry_run("erase", "RUN=abc def", "TASK=mnist", "IDS=1, 2")
    at = argv.index("erase")
    assert argv[at : at + 6] == ["erase", "abc def", "--task", "mnist", "--ids", "1, 2"]
    argv = dry_run("sweep", "STUDY=a b", "STRATEGY=ewc")
    assert argv[argv.index("--study") + 1] == "a b"


def readme_examples() -> list[str]:
    """`make run` lines of the bash blocks of the README and the docs' pages (placeholders like
    <a> left out)."""
    pages = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]
    text = "\n".join(page.read_text() for page in pages)
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    lines = [line.split("  #")[0].strip() for b in blocks for line in b.splitlines()]
    # environment assignments before the command (MASTER_ADDR=... NODE_RANK=1 make run ...)
    lines = [re.sub(r"^(?:[A-Z_]+=\S+\s+)+", "", line) for line in lines]
    # EXP=best/<study> is what `make best` writes (git-ignored): not in a fresh clone
    return [
        line
        for line in lines
        if line.startswith("make run ") and "<" not in line and "EXP=best/" not in line
    ]


@pytest.mark.parametrize("line", readme_examples())
def test_readme_run_examples_compose_as_written(
    line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = dry_run(*shlex.split(line)[1:])
    assert argv[1:4] == ["-m", "pipeline", "run"], argv
    assert main(["config", *argv[4:]]) == 0, capsys.readouterr().err


def test_there_are_readme_examples() -> None:
    assert len(readme_examples()) >= 3


def test_the_installed_packages_carry_their_bytecode() -> None:
    """`make install` writes the packages' .pyc files: where PYTHONDONTWRITEBYTECODE is set,
    nothing else would, and every process would compile torch, Lightning and MLflow from
    source (a run's start-up took twice as long)."""
    import importlib.util

    import lightning.pytorch.trainer.trainer as trainer_module
    import mlflow.tracking.client as client_module
    import torch.nn.modules.conv as conv_module

    for module in (conv_module, trainer_module, client_module):
        assert module.__file__ is not None
        cached = importlib.util.cache_from_source(module.__file__)
        assert Path(cached).is_file(), f"no bytecode for {module.__name__}: run make install"


def test_install_is_quiet_and_ends_with_a_one_line_summary() -> None:
    """A first `make install` printed a "+ package==version" line per package (141): uv runs
    with --quiet, and one line says how many packages went where."""
    lines = subprocess.run(
        ["make", "-s", "-n", "-B", ".venv/.installed"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    (sync,) = [line for line in lines if " sync " in line]
    assert "--quiet" in shlex.split(sync)
    (summary,) = [line for line in lines if line.startswith("echo ")]
    said = subprocess.run(["bash", "-c", summary], cwd=REPO_ROOT, capture_output=True, text=True)
    assert re.fullmatch(r"installed \d+ packages into \.venv/ \(\S+\) from uv\.lock\n", said.stdout)


# Every target that runs a pipeline command, with the variables it needs to run.
TARGETS = {
    "forget": [],
    "run": ["EXP=seed_forgetting"],
    "runs": [],
    "compare": ["STRATEGIES=naive"],
    "landscape": ["RUN=abcdefgh"],
    "sweep": [],
    "best": ["STUDY=s"],
    "erase": ["RUN=abcdefgh", "TASK=mnist", "IDS=1"],
    "audit": ["RUN=abcdefgh"],
    "unlearn-tune": ["RUN=abcdefgh", "TASK=mnist"],
    "shards": ["EXP=split_cifar10", "TASK=cifar10_01", "OUT=/s"],
    "dashboard": [],
    "ui": [],
}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_target_honours_data_args_tracking_and_storage(target: str, tmp_path: Path) -> None:
    """One rule gives every command DATA=, ARGS=, TRACKING= and STORAGE= (`make best DATA=/x`
    read data/ before it)."""
    fake = tmp_path / "python"  # stands in for .venv/bin/python: prints what it was given
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$MLFLOW_TRACKING_URI|$OPTUNA_STORAGE|$*"\n')
    fake.chmod(0o755)
    given = ["DATA=/x y", "ARGS=paths.reports=/r", "TRACKING=http://t:1", "STORAGE=postgresql://s"]
    out = subprocess.run(
        ["make", "-s", "-o", ".venv/.installed", target, f"PY={fake}", *given, *TARGETS[target]],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    tracking, storage, argv = out.strip().splitlines()[-1].split("|")
    assert (tracking, storage) == ("http://t:1", "postgresql://s")
    assert argv.startswith(f"-m pipeline {target if target != 'forget' else 'run'}")
    assert argv.endswith("paths.data=/x y paths.reports=/r"), argv
