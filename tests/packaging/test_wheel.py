"""The wheel is the product: build the sdist and wheel, check them, install the wheel into a
fresh environment outside the repository and run the quick start and every paper config by name.

Slow tier (about a minute or two). Offline: ``python -m build --no-isolation`` uses this
environment's setuptools (the ``dev`` extra), and the fresh venv reaches torch, Lightning
and the rest through a ``.pth`` file naming this environment's ``site-packages`` folders
(their own ``.pth`` files, among them the editable install of the repository, are not run),
so ``pip install --no-deps`` installs only the wheel. Every command runs from a temporary
folder, and the test checks that ``reaf_lightning`` is imported from the fresh venv.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml
from helpers import REPO

pytestmark = pytest.mark.slow


def _run(*cmd: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: int = 600):
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, REPO, cwd=out)
    return out


def _wheel(dist: Path) -> Path:
    (wheel,) = dist.glob("reaf_lightning-*.whl")
    return wheel


def test_twine_accepts_the_sdist_and_the_wheel(dist):
    files = sorted(dist.iterdir())
    assert {f.suffix for f in files} == {".whl", ".gz"}
    done = _run(sys.executable, "-m", "twine", "check", "--strict", *files, cwd=dist)
    assert done.stdout.count("PASSED") == 2


def test_the_wheel_holds_the_package_its_configs_and_data_and_no_top_level_analysis(dist):
    names = zipfile.ZipFile(_wheel(dist)).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"reaf_lightning", "reaf_lightning-0.1.0.dist-info"}  # no 'analysis' module
    assert "reaf_lightning/analysis/cli.py" in names
    configs = {p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yaml")}
    packaged = {n.removeprefix("reaf_lightning/") for n in names if n.endswith(".yaml")}
    assert packaged == configs and "configs/table5/reaf_resnet50_c72_4-3-4.yaml" in packaged
    data = {p.relative_to(REPO).as_posix() for p in (REPO / "reaf_lightning").rglob("*.json")}
    assert data and data <= set(names)
    sources = {p.relative_to(REPO).as_posix() for p in (REPO / "reaf_lightning").rglob("*.py")}
    assert sources <= set(names)
    entry_points = zipfile.ZipFile(_wheel(dist)).read(
        "reaf_lightning-0.1.0.dist-info/entry_points.txt"
    )
    for command in ("reaf-lightning", "reaf-zoo", "reaf-analysis", "reaf-report"):
        assert f"{command} = ".encode() in entry_points
    (sdist,) = dist.glob("*.tar.gz")
    members = {m.split("/", 1)[1] for m in tarfile.open(sdist).getnames() if "/" in m}
    assert {"pyproject.toml", "README.md", "configs/quickstart.yaml", "analysis/cli.py"} <= members


@pytest.fixture(scope="module")
def venv(dist, tmp_path_factory) -> Path:
    """A fresh venv outside the repository with only the wheel installed in it."""
    home = tmp_path_factory.mktemp("fresh")
    env_dir = home / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", env_dir, cwd=home)
    python = env_dir / "bin" / "python"
    site_dir = Path(
        _run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=home)
        .stdout.strip()
    )  # fmt: skip
    ours = [p for p in sys.path if p.endswith("site-packages")] + site.getsitepackages()
    site_dir.joinpath("reaf_base_env.pth").write_text("\n".join(dict.fromkeys(ours)) + "\n")
    _run(
        sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
        _wheel(dist), cwd=home,
    )  # fmt: skip
    return env_dir


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "PYTHONPATH"))}
    env.update(
        HOME=str(home), WANDB_MODE="offline", WANDB_CONFIG_DIR=str(home / "wandb"),
        OMP_NUM_THREADS="1",
    )  # fmt: skip
    return env


def test_the_fresh_venv_imports_the_installed_wheel_not_the_repository(venv, tmp_path):
    probe = (
        "import importlib.util, json, reaf_lightning, reaf_lightning.analysis, "
        "reaf_lightning.commands as c; print(json.dumps([reaf_lightning.__file__, "
        "reaf_lightning.analysis.__file__, str(c.config_dir()), "
        "importlib.util.find_spec('analysis') is None]))"
    )
    done = _run(venv / "bin" / "python", "-c", probe, cwd=tmp_path, env=_env(tmp_path))
    package, analysis, configs, no_top_level_analysis = json.loads(done.stdout)
    for path in (package, analysis, configs):
        assert Path(path).is_relative_to(venv) and not Path(path).is_relative_to(REPO)
    assert no_top_level_analysis


def test_the_quick_start_runs_from_the_wheel_by_name(venv, tmp_path):
    run_dir = tmp_path / "run"
    _run(
        venv / "bin" / "reaf-lightning", "fit", "--config", "quickstart",
        "--trainer.max_epochs", "1", "--trainer.default_root_dir", run_dir,
        "--trainer.enable_progress_bar", "false", cwd=tmp_path, env=_env(tmp_path),
    )  # fmt: skip
    metrics = json.loads((run_dir / "seed0" / "metrics.json").read_text())
    assert (run_dir / "seed0" / "checkpoints" / "last.ckpt").is_file()
    assert "val/acc1" in json.dumps(metrics)


_PRINT_EVERY_PAPER_CONFIG = """
import contextlib, io, json, sys, yaml
from reaf_lightning.training.cli import main
results = []
for recipe, row in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main(["fit", "--config", recipe, "--config", row, "--print_config"])
    printed = yaml.safe_load(out.getvalue() or "{}") or {}
    results.append([row, printed.get("model", {}).get("arch"),
                    printed.get("data", {}).get("class_path")])
print(json.dumps(results))
"""


def test_every_paper_config_prints_by_name_from_the_wheel(venv, tmp_path):
    """The sweep files say which recipe goes with which row; together they cover every row."""
    pairs, rows = [], set()
    for sweep in sorted((REPO / "configs" / "sweeps").glob("*.yaml")):
        spec = yaml.safe_load(sweep.read_text())
        command = spec["command"]
        recipe = command[command.index("--config") + 1]
        pairs += [(recipe, row) for row in spec["parameters"]["config"]["values"]]
    rows = {row for _, row in pairs}
    tables = {p.relative_to(REPO).as_posix() for p in (REPO / "configs").glob("table*/*.yaml")}
    assert rows == tables  # every paper config is printed below
    done = _run(
        venv / "bin" / "python", "-c", _PRINT_EVERY_PAPER_CONFIG, json.dumps(pairs),
        cwd=tmp_path, env=_env(tmp_path),
    )  # fmt: skip
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(printed) == len(pairs)
    for (recipe, row), (_, arch, data_class) in zip(pairs, printed, strict=True):
        expected_arch = yaml.safe_load((REPO / row).read_text())["model"]["arch"]
        expected_data = yaml.safe_load((REPO / recipe).read_text())["data"]["class_path"]
        assert (arch, data_class) == (expected_arch, expected_data), row
    analysis = _run(
        venv / "bin" / "reaf-analysis", "--config", "figure2", "--print_config",
        cwd=tmp_path, env=_env(tmp_path),
    )  # fmt: skip
    assert yaml.safe_load(analysis.stdout)["model_b"]["label"] == "REAF-ResNet50"
