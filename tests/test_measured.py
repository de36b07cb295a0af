"""Numbers that write themselves: every measured table the docs include is a file a command
wrote (docs/measured/, by benchmarks/record.py), and every such file names its command.

- each `--8<--` include in docs/ names a file that exists in docs/measured/;
- each docs/measured/*.md starts with its header line, naming a command that exists (a script
  in benchmarks/ or a make target), or is a placeholder naming the command to run;
- record.py's writer, given a tiny body, writes that header with the date, machine and commit;
- docs/index.md's table of measured tables leads to each one: a click to its page, at a heading
  it sits under, and it is there (two clicks from the home page with the site's navigation).
"""

from __future__ import annotations

import datetime
import importlib.util
import re
import shlex
import sys
from pathlib import Path
from types import ModuleType

import pytest

from pipeline.config.paths import REPO_ROOT

DOCS = REPO_ROOT / "docs"
MEASURED = DOCS / "measured"
#: A snippet include on a line of its own (pymdownx.snippets' block form).
INCLUDE = re.compile(r"""^\s*-+8<-+\s+(["'])(?P<path>[^"']+)\1\s*$""", re.M)
#: The header line record.py writes, and the placeholder line.
HEADER = re.compile(
    r"^Measured by `(?P<command>[^`]+)` on (?P<date>.+?)(?: \(took (?P<took>[^)]+)\))? "
    r"at commit (?P<commit>.+?); machine: (?P<machine>.+)\.$"
)
PLACEHOLDER = re.compile(r"^Not measured yet at this commit: run `(?P<command>[^`]+)`\.$")


def load_record() -> ModuleType:
    """benchmarks/record.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("record", REPO_ROOT / "benchmarks" / "record.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_targets() -> set[str]:
    text = (REPO_ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-zA-Z_-]+):", text, re.M))


def names_a_command(command: str) -> bool:
    """A benchmark script that exists, run by the interpreter, or a make target that exists."""
    words = shlex.split(command)
    if words[0] == "make":
        return len(words) > 1 and words[1] in make_targets()
    scripts = [w for w in words[1:2] if w.startswith("benchmarks/") and w.endswith(".py")]
    return bool(scripts) and (REPO_ROOT / scripts[0]).is_file()


def includes() -> list[tuple[str, str]]:
    """(page, included path) for every include in the docs pages."""
    return [
        (str(page.relative_to(DOCS)), m["path"])
        for page in sorted(DOCS.rglob("*.md"))
        if MEASURED not in page.parents
        for m in INCLUDE.finditer(page.read_text())
    ]


def test_every_include_names_an_existing_measured_file() -> None:
    found = includes()
    assert found, "the docs include the benchmarks' results"
    wrong = [(page, path) for page, path in found if not path.startswith("measured/")]
    assert not wrong, f"includes come from docs/measured/ only: {wrong}"
    missing = [(page, path) for page, path in found if not (DOCS / path).is_file()]
    assert not missing, missing


def test_every_measured_file_is_included_somewhere() -> None:
    included = {path for _, path in includes()}
    orphans = [p.name for p in MEASURED.glob("*.md") if f"measured/{p.name}" not in included]
    assert not orphans, f"written but shown on no page: {orphans}"


@pytest.mark.parametrize("path", sorted(MEASURED.glob("*.md")), ids=lambda p: p.name)
def test_every_measured_file_starts_with_the_header_naming_its_command(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    match = HEADER.match(first) or PLACEHOLDER.match(first)
    assert match, f"{path.name}: no header line: {first!r}"
    assert names_a_command(match["command"]), f"{path.name}: {match['command']!r}"


def test_the_writer_puts_command_date_machine_and_commit_on_top(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = [str(REPO_ROOT / "benchmarks" / "storages.py"), "--trials", "2", "--note", "a b"]
    monkeypatch.setattr(sys, "argv", argv)
    record = load_record()  # as a script imports it first: it keeps the command line it sees
    monkeypatch.setattr(sys, "argv", ["pipeline", "run", "changed"])
    body = record.table(["what", "seconds"], [["a step", "1.25"]])
    path = record.write("tiny", f"A line.\n\n{body}", tmp_path / "measured")

    assert path == tmp_path / "measured" / "tiny.md"
    lines = path.read_text().splitlines()
    header = HEADER.match(lines[0])
    assert header, lines[0]
    # the command as one types it again from the repository root
    python = Path(sys.executable)
    expected_python = (
        str(python.relative_to(REPO_ROOT)) if python.is_relative_to(REPO_ROOT) else str(python)
    )
    assert header["command"] == f"{expected_python} benchmarks/storages.py --trials 2 --note 'a b'"
    assert names_a_command(header["command"])
    started = datetime.datetime.fromisoformat(header["date"])
    assert started.tzinfo is not None
    assert abs((datetime.datetime.now().astimezone() - started).total_seconds()) < 3600
    assert re.fullmatch(r"`[0-9a-f]{40}(-dirty)?`", header["commit"]), header["commit"]
    assert re.match(
        r"\d+ usable cores of \d+ \(.+\), GPU: .+, .+, load [\d.]+ at the start$", header["machine"]
    ), header["machine"]
    assert lines[1:] == ["", "A line.", "", "| what | seconds |", "|---|---|", "| a step | 1.25 |"]


def test_a_record_of_an_older_measurement_renders_what_is_not_recorded() -> None:
    """A measurement the docs held before the scripts wrote their files keeps its header shape,
    saying what was not recorded instead of inventing it."""
    record = load_record()
    line = record.header(
        {
            "command": ".venv/bin/python benchmarks/storages.py",
            "date": "2026-12-01",
            "took_s": None,
            "commit": "not recorded",
            "machine": "2 cores, no GPU (CPU model, platform and load not recorded)",
        }
    )
    assert line == (
        "Measured by `.venv/bin/python benchmarks/storages.py` on 2026-12-01 at commit not "
        "recorded; machine: 2 cores, no GPU (CPU model, platform and load not recorded)."
    )
    assert HEADER.match(line)


def test_the_suite_benchmark_runs_the_ci_steps_and_reads_pytests_lines() -> None:
    """benchmarks/suite.py times the make lines of .ci/run and reads pytest's count line and
    slowest tests, as `make test -q --durations` prints them."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))  # it imports record as a sibling
    try:
        spec = importlib.util.spec_from_file_location(
            "suite", REPO_ROOT / "benchmarks" / "suite.py"
        )
        assert spec and spec.loader
        suite = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(suite)
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    assert suite.steps(REPO_ROOT / ".ci" / "run") == ["make lint", "make test", "make docs"]
    out = (
        "....\n============ slowest 15 durations ============\n"
        "70.12s call     tests/test_x.py::test_y[a-b]\n"
        "3.01s setup    tests/test_z.py::test_w\n"
        "1061 passed, 7 skipped, 3 deselected in 668.23s (0:11:08)\n"
    )
    assert suite.COUNTS.findall(out) == [
        "1061 passed, 7 skipped, 3 deselected in 668.23s (0:11:08)"
    ]
    assert suite.DURATION.findall(out) == [
        ("70.12", "call", "tests/test_x.py::test_y[a-b]"),
        ("3.01", "setup", "tests/test_z.py::test_w"),
    ]
    assert suite.minutes(668.23) == "11 min 08 s" and suite.minutes(28.4) == "28 s"


def test_a_tree_changed_only_in_the_benchmarks_outputs_is_not_dirty(tmp_path: Path) -> None:
    """A measured table or figure written into a clone leaves its commit clean; any other
    change makes it dirty."""
    import subprocess

    from pipeline.provenance import OUTPUTS, git_commit

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    for path in [*(f"{o}/a.md" for o in OUTPUTS), "pipeline/code.py"]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("before\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    clean = git_commit(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{40}", clean), clean
    for output in OUTPUTS:
        (tmp_path / output / "a.md").write_text("measured again\n")
    assert git_commit(tmp_path) == clean
    (tmp_path / "pipeline" / "code.py").write_text("changed\n")
    assert git_commit(tmp_path) == f"{clean}-dirty"


def sections_holding(page: Path, path: str) -> set[str]:
    """The anchors of the headings a reader passes on ``page`` to reach the include of
    ``path``: the last heading of each level above it ("" for the page's top)."""
    from markdown.extensions.toc import slugify  # what mkdocs' toc names a heading's anchor

    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code: no headings
    above: dict[int, str] = {}
    for line in text[: text.index(f"measured/{path}")].splitlines():
        if m := re.match(r"^(#{1,6})\s+(.+?)\s*$", line):
            level = len(m[1])
            above = {k: v for k, v in above.items() if k < level}
            above[level] = slugify(m[2].replace("`", ""), "-")
    return {"", *above.values()}


def test_every_measured_table_is_two_clicks_from_the_docs_home() -> None:
    """docs/index.md's table of measured tables links each one's page, at a heading above it."""
    home = (DOCS / "index.md").read_text()
    table = home[home.index("## Every measured table") :]
    links = {tuple(f"{t}#".split("#")[:2]) for t in re.findall(r"\]\(([^)\s]+)\)", table)}
    unreached = [
        f"{page} ({path})"
        for page, path in includes()
        if not any((page, a) in links for a in sections_holding(DOCS / page, path.split("/")[1]))
    ]
    assert not unreached, f"no row of index.md's measured tables leads to: {unreached}"
