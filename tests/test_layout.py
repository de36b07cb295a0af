"""The shape of the package, read from its source: its layers and no import circle (the
import-linter contracts in pyproject.toml, which `make lint` checks too; imports for type
checking count), no file over 400 lines, no function over 60 lines without a stated reason, and
the literal names of a run's files and of strategies each spelled in one module; every package
it imports declared."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.strategies import REGISTRY

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
LONG_OK = "# long:"  # a function over the limit says why, in a comment starting so


def modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package (a package is its __init__)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def test_the_import_contracts_hold() -> None:
    """`lint-imports` over ``[tool.importlinter]``: the layers, no import circle in any package,
    and what the metrics, the server and the package's ``__init__`` must not import."""
    lint_imports = Path(sys.executable).with_name("lint-imports")  # beside this interpreter
    done = subprocess.run(
        [str(lint_imports), "--no-cache", "--no-logo", "pyproject.toml"],
        cwd=PACKAGE.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_file_over_the_limit(name: str) -> None:
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_FILE_LINES, f"{name}: {lines} lines"


def test_no_long_function_without_a_reason() -> None:
    long = []
    for name, path in modules().items():
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                body = "\n".join(source.splitlines()[node.lineno - 1 : node.end_lineno])
                if size > MAX_FUNCTION_LINES and LONG_OK not in body:
                    long.append(f"{name}.{node.name} ({size} lines)")
    assert not long, long


def string_constants(path: Path) -> set[str]:
    """String literals of the code (docstrings left out: they are prose)."""
    tree = ast.parse(path.read_text())
    docs = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }
    return {
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs
    }


@pytest.mark.parametrize(
    "literal",
    [
        "mlflow.db",
        "checkpoints",
        "accuracy_matrix.json",
        "accuracy_along.csv",
        "retention.json",
        "mlruns",
    ],
)
def test_a_file_name_is_spelled_in_one_module(literal: str) -> None:
    where = [m for m, p in modules().items() if literal in string_constants(p)]
    assert len(where) == 1, f"{literal!r} spelled in {where}"


def test_a_strategy_name_is_spelled_only_in_its_own_module() -> None:
    mods = modules()
    for name, cls in REGISTRY.items():
        where = [m for m, p in mods.items() if name in string_constants(p)]
        assert where == [cls.__module__], f"{name!r} spelled in {where}"


def test_every_package_the_code_imports_is_a_declared_dependency() -> None:
    """A package imported only because another dependency pulls it in breaks when that one
    stops pulling it: what ``pipeline/`` imports is declared in ``pyproject.toml``."""
    import re
    import tomllib
    from importlib.metadata import packages_distributions

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    declared = {norm(re.split(r"[\[<>=!~; ]", d)[0]) for d in project["dependencies"]}
    roots = set()
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                roots.add(node.module.split(".")[0])
    distributions = packages_distributions()
    undeclared = {
        root: distributions.get(root, [])
        for root in roots - set(sys.stdlib_module_names) - {"pipeline"}
        if not {norm(d) for d in distributions.get(root, [])} & declared
    }
    assert not undeclared, f"imported, not declared in pyproject.toml: {undeclared}"
