"""Whole tables on a cluster: the SLURM array script and the W&B sweep files.

What can be tested without a cluster: the command every array index runs
(``REAF_DRY_RUN=1``), that every sweep file is current, names existing configs
and has the grid size of its table, that the sweep's command line parses as
W&B's agent writes it, and (slow tier) two array tasks run for real on tiny
runs, one of them twice, as a requeued task would.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from reaf_lightning.cli import run
from reaf_lightning.models.paper import paper_rows

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "slurm" / "reaf_array.sh"
SWEEPS = REPO / "configs" / "sweeps"


def _array(*args: str, task: int | None = None, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    environ.update({"REAF_DRY_RUN": "1", **env})
    if task is not None:
        environ["SLURM_ARRAY_TASK_ID"] = str(task)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=REPO, env=environ, capture_output=True, text=True
    )


# -- SLURM array ------------------------------------------------------------------------------
@pytest.mark.slow
def test_every_array_index_runs_one_row_and_seed():
    rows = sorted(f"configs/table3/{p.name}" for p in (REPO / "configs" / "table3").glob("*.yaml"))
    assert len(rows) == len(paper_rows("table3"))
    seeds = 3
    listing = _array("table3", str(seeds))
    total = len(rows) * seeds
    assert listing.returncode == 0
    assert f"sbatch --array=0-{total - 1} " in listing.stdout
    seen = set()
    for task in range(total):
        result = _array("table3", str(seeds), "--trainer.precision", "bf16-mixed", task=task)
        assert result.returncode == 0, result.stderr
        row, seed = rows[task // seeds], task % seeds
        assert shlex.split(result.stdout) == [
            "reaf-lightning",
            "fit",
            "--config",
            "configs/recipes/cifar100.yaml",
            "--config",
            row,
            "--seed_everything",
            str(seed),
            "--ckpt_path",
            "last",
            "--trainer.precision",
            "bf16-mixed",
        ]
        seen.add((row, seed))
    assert len(seen) == total  # every row x seed exactly once
    outside = _array("table3", str(seeds), task=total)
    assert outside.returncode == 2 and "outside 0-89" in outside.stderr


def test_mixed_tables_take_each_rows_own_recipe():
    datasets = {row.id: row.dataset for row in paper_rows("table6")}
    for task in range(len(datasets)):
        words = shlex.split(_array("table6", "1", task=task).stdout)
        row_id = Path(words[5]).stem
        assert words[3] == f"configs/recipes/{datasets[row_id]}.yaml"


def test_rows_file_and_launcher(tmp_path):
    rows = tmp_path / "rows.txt"
    rows.write_text(
        "# recipe first, then the row\n\n"
        "configs/recipes/imagenet.yaml configs/table5/resnet50.yaml\n"
        "configs/table4/resnet18.yaml  # recipe read from the file\n"
    )
    first = shlex.split(_array(str(rows), "2", task=1, SLURM_JOB_ID="7").stdout)
    assert first[:6] == [
        "srun",
        "reaf-lightning",
        "fit",
        "--config",
        "configs/recipes/imagenet.yaml",
        "--config",
    ]
    assert first[6:9] == ["configs/table5/resnet50.yaml", "--seed_everything", "1"]
    second = shlex.split(_array(str(rows), "2", task=2, REAF_LAUNCHER="").stdout)
    assert second[:6] == [
        "reaf-lightning",
        "fit",
        "--config",
        "configs/recipes/cifar100.yaml",
        "--config",
        "configs/table4/resnet18.yaml",
    ]
    bad = _array("table99", task=0)
    assert bad.returncode == 2 and "neither a rows file nor a table" in bad.stderr


# -- W&B sweeps -------------------------------------------------------------------------------
def test_sweep_files_are_current():
    spec = importlib.util.spec_from_file_location("sweeps_generate", SWEEPS / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    assert generate.main(["--check"]) == 0  # the committed files are what generate.py writes


def test_sweeps_cover_every_paper_row_with_existing_configs():
    covered = []
    for path in sorted(SWEEPS.glob("*.yaml")):
        sweep = yaml.safe_load(path.read_text())
        assert sweep["program"] == "reaf-lightning" and sweep["method"] == "grid"
        params = sweep["parameters"]
        configs, seeds = params["config"]["values"], params["seed_everything"]["values"]
        command = sweep["command"]
        assert command[:2] == ["${program}", "fit"] and command[-1] == "${args}"
        recipe = command[command.index("--config") + 1]
        assert "--ckpt_path" in command and command[command.index("--ckpt_path") + 1] == "last"
        for config in [recipe, *configs]:
            assert (REPO / config).is_file(), config
        dataset = Path(recipe).stem
        table = path.stem.split("_")[0]
        expected = [r for r in paper_rows(table) if r.dataset == dataset and r.same_as is None]
        assert [Path(c).stem for c in configs] == [r.id for r in expected]
        assert len(configs) * len(seeds) == len(expected) * len(seeds) and len(seeds) >= 3
        covered += [(table, Path(c).stem) for c in configs]
    assert sorted(covered) == sorted((r.table, r.id) for r in paper_rows() if r.same_as is None)


def test_sweep_command_parses_as_the_agent_writes_it(capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # the agent runs in the repository root
    sweep = yaml.safe_load((SWEEPS / "table3.yaml").read_text())
    headline = next(c for c in sweep["parameters"]["config"]["values"] if c.endswith("4-3-4.yaml"))
    point = {"config": headline, "seed_everything": 2}
    args = [f"--{key}={value}" for key, value in point.items()]  # W&B's ${args}
    command = [a for part in sweep["command"][1:] for a in (args if part == "${args}" else [part])]
    with pytest.raises(SystemExit):
        run([*command, "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["seed_everything"] == 2
    assert printed["model"]["arch_kwargs"]["reaf"] == "4-3-4"  # the row file was read
    assert printed["trainer"]["max_epochs"] == 200  # after the recipe
    assert printed["ckpt_path"] == "last"


# -- two array tasks, for real ----------------------------------------------------------------
@pytest.mark.slow
def test_two_array_tasks_run_locally_and_a_requeued_task_resumes(tmp_path):
    tiny = {
        "trainer": {
            "max_epochs": 1,
            "limit_train_batches": 2,
            "limit_val_batches": 2,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "logger": False,
        },
        "model": {"arch_kwargs": {}},
        "data": {"init_args": {"batch_size": 16, "image_size": 8}},
    }
    lines = []
    for name, arch in (("plain", "test_resnet"), ("reaf", "test_reaf_resnet")):
        row = json.loads(json.dumps(tiny))
        row["model"]["arch"] = arch
        row["trainer"]["default_root_dir"] = str(tmp_path / "logs" / "tiny" / name)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(row))
        lines.append(f"{REPO / 'configs' / 'quickstart.yaml'} {tmp_path / name}.yaml")
    rows = tmp_path / "rows.txt"
    rows.write_text("\n".join(lines) + "\n")
    env = {"REAF_DRY_RUN": "0", "REAF_LAUNCHER": "", "WANDB_MODE": "disabled"}
    for task in (0, 1):
        result = _array(str(rows), "1", task=task, **env)
        assert result.returncode == 0, result.stderr[-2000:]
    records = {
        p.parent: json.loads(p.read_text()) for p in (tmp_path / "logs").rglob("metrics.json")
    }
    archs = sorted(r["arch"] for r in records.values())
    assert archs == ["test_reaf_resnet", "test_resnet"]
    again = _array(str(rows), "1", task=0, **env)  # the same task once more: requeued
    assert again.returncode == 0, again.stderr[-2000:]
    assert "starting a new run" not in again.stderr  # it found the task's last.ckpt
    for path, record in records.items():
        assert json.loads((path / "metrics.json").read_text())["fit"] == record["fit"]
