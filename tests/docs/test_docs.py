"""The README, the documentation pages and CI say the same thing.

The README's quick start is run as written by ``tests/cli/test_quickstart.py``; these checks
keep its copies from drifting: the quick-start page repeats the same four commands, and
``.ci/run`` runs exactly the README's development commands. Each expected value is read
from the README itself, the one source.
"""

from __future__ import annotations

import re

from helpers import REPO

README = REPO / "README.md"


def _bash_block(text: str, after: str) -> list[str]:
    """The lines of the first ```bash block after ``after`` (continuations joined)."""
    block = text.split(after, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return re.sub(r"\\\n\s*", "", block).strip().splitlines()


def test_readme_is_at_most_300_lines():
    assert len(README.read_text().splitlines()) <= 300


def test_quickstart_page_shows_the_readme_commands():
    readme = _bash_block(README.read_text(), "<!-- section:quickstart -->")
    page = _bash_block((REPO / "docs" / "quickstart.md").read_text(), "# Quick start")
    assert page == readme


def test_ci_runs_exactly_the_readme_development_commands():
    readme = _bash_block(README.read_text(), "## Development")
    lines = (REPO / ".ci" / "run").read_text().splitlines()
    start = lines.index('# README "Development", in order') + 1
    assert [line for line in lines[start:] if line.strip()] == readme
    assert "set -euo pipefail" in lines
    assert "mkdocs build --strict" in readme and "pytest -m slow" in readme


def test_development_page_shows_the_readme_development_commands():
    readme = _bash_block(README.read_text(), "## Development")
    page = _bash_block((REPO / "docs" / "development.md").read_text(), "# Development")
    assert page == readme
