"""The README is the five-minute guide and the docs site builds: README.md stays short and its
relative links lead somewhere; `mkdocs build --strict` (what `make docs` and CI run) fails on a
broken link, a missing anchor or an API reference that does not resolve."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from pipeline.config.paths import REPO_ROOT

README = REPO_ROOT / "README.md"
MKDOCS = REPO_ROOT / ".venv" / "bin" / "mkdocs"


def relative_links(text: str) -> list[str]:
    """The targets of the markdown links and images that point into the repository, without
    their #anchor (code blocks left out: their brackets are not links)."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    targets = re.findall(r"\]\(([^)\s]+)\)", prose)
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:|#", t)]


def test_the_readme_is_at_most_250_lines() -> None:
    assert len(README.read_text().splitlines()) <= 250


def test_every_relative_link_of_the_readme_points_at_a_file() -> None:
    links = relative_links(README.read_text())
    assert links, "the README links its docs pages"
    missing = [link for link in links if not (REPO_ROOT / link).exists()]
    assert not missing, missing


def test_the_readme_links_every_page_it_names_on_the_docs_site() -> None:
    """Each docs page the README links is in mkdocs.yml's nav, so the site shows it too."""
    nav = (REPO_ROOT / "mkdocs.yml").read_text()
    pages = {link.removeprefix("docs/") for link in relative_links(README.read_text())}
    assert not [p for p in pages if p.endswith(".md") and p not in nav]


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """What `make docs` runs, into a scratch folder: a warning (a broken link or anchor, a
    docstring mkdocstrings cannot resolve) fails the build."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [str(MKDOCS), "build", "--strict", "--quiet", "--site-dir", str(tmp_path / "site")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "reference" / "metrics" / "index.html").is_file()
