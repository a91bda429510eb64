"""The README's quick start, as a user runs it: four commands in a fresh directory.

1. train REAF (``configs/quickstart.yaml``), 2. train its matched plain
baseline (``configs/quickstart_baseline.yaml`` on top), 3. compare their class
selectivity (``reaf-analysis``), 4. print the report (``reaf-report``). The
commands are read from the README's quick-start block, so the README cannot
drift from what is tested. W&B runs offline (no credentials), as in the README.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

#: the console scripts, as modules (they need not be installed for the test)
MODULES = {
    "reaf-lightning": "reaf_lightning.training.cli",
    "reaf-analysis": "reaf_lightning.analysis.cli",
    "reaf-report": "reaf_lightning.report.cli",
}


def readme_commands() -> list[str]:
    """The four commands of the README's quick-start block (continuation lines joined)."""
    section = REPO.joinpath("README.md").read_text().split("<!-- section:quickstart -->")[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    joined = re.sub(r"\\\n\s*", "", block)
    return [line for line in joined.splitlines() if line.split(" ", 1)[0] in MODULES]


def _run(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    words = shlex.split(command)
    args = [sys.executable, "-m", MODULES[words[0]], *words[1:]]
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
    return result


def test_readme_quickstart_has_four_commands():
    commands = readme_commands()
    assert [c.split(" ", 1)[0] for c in commands] == [
        "reaf-lightning",
        "reaf-lightning",
        "reaf-analysis",
        "reaf-report",
    ]
    assert "configs/quickstart_baseline.yaml" in commands[1]


@pytest.mark.slow
def test_quickstart_tells_the_whole_story(tmp_path):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        WANDB_MODE="offline",
        NETRC=str(tmp_path / "no-netrc"),
        WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    )
    env.pop("REAF_DEBUG", None)
    fit_reaf, fit_baseline, analysis, report = readme_commands()
    _run(fit_reaf, tmp_path, env)
    _run(fit_baseline, tmp_path, env)
    records = {}
    for name in ("quickstart", "quickstart_baseline"):
        (path,) = (tmp_path / "logs" / name).rglob("metrics.json")
        records[name] = json.loads(path.read_text())
        assert list(path.parent.glob("wandb/offline-run-*")), "W&B did not log offline"
    if not (tmp_path / "logs" / "quickstart" / "seed0").is_dir():
        analysis = analysis.replace("/seed0/", "/")  # a CLI writing the run dir without seed<N>
    _run(analysis, tmp_path, env)
    shown = _run(report, tmp_path, env).stdout

    reaf, baseline = records["quickstart"], records["quickstart_baseline"]
    assert (reaf["network"]["arch"], baseline["network"]["arch"]) == ("reaf_resnet18", "resnet18")
    assert reaf["finished"] and baseline["finished"] and reaf["format"] == "reaf-run/1"
    assert reaf["fit"]["final"]["val/acc1"] >= 0.95  # as the README and the config promise
    assert baseline["fit"]["final"]["val/acc1"] >= 0.9
    assert abs(baseline["gmacs"] / reaf["gmacs"] - 1) < 0.02  # the same FLOPs class
    out = tmp_path / "outputs" / "quickstart"
    for name in ("selectivity.png", "selectivity.pdf", "selectivity_summary.csv"):
        assert (out / name).is_file(), name
    assert "ResNet18" in (out / "selectivity_summary.csv").read_text()
    for name, record in records.items():
        err1 = 100 * record["fit"]["final"]["val/err1"]
        assert re.search(rf"\| {name} \| 1 \| {err1:.2f} \|", shown), shown
