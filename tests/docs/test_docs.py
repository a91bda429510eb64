"""The README, the documentation pages and CI say the same thing, and name real things.

Every block of the README and the pages is run as written by ``test_doc_blocks.py``; these
checks keep the copies from drifting: the quick-start page repeats the README's four
commands (run once, from the README), ``.ci/run`` runs exactly the README's development
commands, and every module and repository file a page names exists. Each expected value is
read from the README itself, the one source.
"""

from __future__ import annotations

import importlib
import re

from helpers import REPO
from helpers.doc_blocks import pages

README = REPO / "README.md"


def _bash_block(text: str, after: str) -> list[str]:
    """The lines of the first ```bash block after ``after`` (continuations joined)."""
    block = text.split(after, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return re.sub(r"\\\n\s*", "", block).strip().splitlines()


def test_readme_is_at_most_300_lines():
    assert len(README.read_text().splitlines()) <= 300


def test_readme_quickstart_is_four_commands():
    """Train REAF, train its baseline, compare their selectivity, report."""
    commands = [c for c in _bash_block(README.read_text(), "<!-- section:quickstart -->")
                if not c.startswith("#")]  # fmt: skip
    assert [c.split(" ", 1)[0] for c in commands] == [
        "reaf-lightning",
        "reaf-lightning",
        "reaf-analysis",
        "reaf-report",
    ]
    assert "configs/quickstart_baseline.yaml" in commands[1]


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
    assert "mkdocs build --strict" in readme and "pytest -m slow -n 2 --dist loadfile" in readme


def test_development_page_shows_the_readme_development_commands():
    readme = _bash_block(README.read_text(), "## Development")
    page = _bash_block((REPO / "docs" / "development.md").read_text(), "# Development")
    assert page == readme


_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_MODULE = re.compile(r"reaf_lightning(\.\w+)+")
_PATH = re.compile(r"[\w.-]+(/[\w.-]+)+\.(py|yaml|json|sh|md|toml)")


def _resolves(dotted: str) -> bool:
    """``dotted`` is an importable module, or an attribute of one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(target, name):
                return False
            target = getattr(target, name)
        return True
    return False


def test_every_module_and_file_the_pages_name_exists():
    """A page that names ``reaf_lightning.x.y`` or ``tests/a/b.py`` names something real."""
    missing = []
    for path in pages():
        for span in _CODE_SPAN.findall(path.read_text()):
            if _MODULE.fullmatch(span) and not _resolves(span):
                missing.append(f"{path.name}: {span}")
            elif _PATH.fullmatch(span) and not span.startswith(("logs/", "outputs/", "exports/")):
                # repository paths; the tables of tests name them relative to tests/
                if not ((REPO / span).exists() or (REPO / "tests" / span).exists()):
                    missing.append(f"{path.name}: {span}")
    assert not missing, "\n".join(missing)
