"""What produced a run: package version, git commit of the package's own source, command line.

Not part of the paper; recorded in every run record and logged with every stage.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any


@lru_cache(maxsize=1)
def _source_commit() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the package's own source, wherever the command was started.

    A git checkout (also an editable install) answers with ``git`` run in the
    package's folder, not the current directory; an installed copy with the
    commit pip recorded when installing from a repository (PEP 610
    ``direct_url.json``); otherwise ``(None, None)``.
    """
    source = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", "-C", str(source), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    # Tracked here: this folder is the package's checkout, not a venv inside another repo.
    if git("ls-files", "--error-unmatch", Path(__file__).name) is not None:
        commit = git("rev-parse", "HEAD")
        return commit, bool(git("status", "--porcelain", "--untracked-files=no"))
    try:
        direct_url = distribution("reaf-lightning").read_text("direct_url.json") or "{}"
    except PackageNotFoundError:
        return None, None
    return json.loads(direct_url).get("vcs_info", {}).get("commit_id"), None


def provenance() -> dict[str, Any]:
    """What produced a run: package version, git commit of its source, the command line."""
    try:
        version = distribution("reaf-lightning").version
    except PackageNotFoundError:
        version = None
    commit, dirty = _source_commit()
    return {
        "package_version": version,
        "git_commit": commit,
        "git_dirty": dirty,
        "command": shlex.join(sys.argv),
    }
