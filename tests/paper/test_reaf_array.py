"""Whole tables on a cluster: the SLURM array script and the W&B sweep files.

What can be tested without a cluster: the command every array index runs
(``REAF_DRY_RUN=1``), the script's checks of its numbers and rows files, what
it hands ``srun`` and ``sbatch`` (fake executables on ``PATH`` that record
their arguments: the script under test is real bash), that every sweep file is
current, names existing configs and has the grid size of its table, that the
sweep's command line parses as W&B's agent writes it, and (slow tier) two
array tasks run for real on tiny runs, one of them twice, as a requeued task
would.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import REPO

from reaf_lightning.paper.sweeps import write_sweeps
from reaf_lightning.paper.tables import paper_rows
from reaf_lightning.training.cli import run

SCRIPT = REPO / "scripts" / "slurm" / "reaf_array.sh"
SWEEPS = REPO / "configs" / "sweeps"


@pytest.fixture(autouse=True)
def _outside_the_repository(tmp_path, monkeypatch):
    """Run where a checkout's configs/ is (the script's paths are relative to it), but not in
    the repository itself: the script creates logs/slurm where it runs."""
    (tmp_path / "configs").symlink_to(REPO / "configs")
    monkeypatch.chdir(tmp_path)


def _array(
    *args: str, task: int | str | None = None, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    environ.update({"REAF_DRY_RUN": "1", **env})
    if task is not None:
        environ["SLURM_ARRAY_TASK_ID"] = str(task)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=cwd, env=environ, capture_output=True, text=True
    )


def _recorder(bin_dir: Path, name: str) -> Path:
    """A fake ``name`` on PATH that appends its arguments, one JSON list per call, to a log."""
    log = bin_dir / f"{name}.calls"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / name
    fake.write_text(
        "#!/usr/bin/env python3\nimport json, sys\n"
        f"with open({str(log)!r}, 'a') as f:\n    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    fake.chmod(0o755)
    return log


def _calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


# -- SLURM array ------------------------------------------------------------------------------
def _check_tasks(tasks: list[int]) -> None:
    """Array tasks of table3 x 3 seeds: each runs row task // 3 with seed task % 3."""
    rows = [f"configs/table3/{row.id}.yaml" for row in paper_rows("table3")]  # the paper's order
    assert len(rows) == len(list((REPO / "configs" / "table3").glob("*.yaml")))
    seeds = 3
    listing = _array("table3", str(seeds))
    total = len(rows) * seeds
    assert listing.returncode == 0
    assert f"sbatch --array=0-{total - 1} " in listing.stdout
    seen = set()
    for task in tasks:
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
    assert len(seen) == len(tasks)  # no two tasks run the same row and seed
    outside = _array("table3", str(seeds), task=total)
    assert outside.returncode == 2 and "outside 0-89" in outside.stderr


def test_array_indices_run_one_row_and_seed():
    _check_tasks([0, 4, 89])  # first, row 1 seed 1, last


@pytest.mark.slow
def test_every_array_index_runs_one_row_and_seed():
    _check_tasks(list(range(90)))


def test_mixed_tables_take_each_rows_own_recipe():
    rows = paper_rows("table6")
    for task in (0, len(rows) - 1):  # a CIFAR-100 row first, an ImageNet row last
        words = shlex.split(_array("table6", "1", task=task).stdout)
        assert words[3:6] == [
            f"configs/recipes/{rows[task].dataset}.yaml",
            "--config",
            f"configs/table6/{rows[task].id}.yaml",
        ]
    assert {rows[0].dataset, rows[-1].dataset} == {"cifar100", "imagenet"}


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
    assert bad.returncode == 2 and "unknown table 'table99'; valid: table1" in bad.stderr


@pytest.mark.parametrize("seeds", ["0x3", "3.0", "1e3", "-1", "three", "0", "1234567890"])
def test_seed_counts_must_be_decimal_integers(seeds):
    result = _array("table4", seeds)
    assert result.returncode == 2 and "SEEDS must be" in result.stderr and not result.stdout


@pytest.mark.parametrize("task", ["1e3", "0x1", " 1", "-1", "", "1234567890", "18"])
def test_array_task_ids_must_be_decimal_and_in_range(task):
    # "" is no array task (the listing), 18 is one past table4's 6 rows x 3 seeds.
    result = _array("table4", "3", task=task)
    if task == "":
        assert result.returncode == 0 and "18 array tasks" in result.stdout
    else:
        assert result.returncode == 2 and not result.stdout, result
        assert "SLURM_ARRAY_TASK_ID must be" in result.stderr or "outside 0-17" in result.stderr


def test_leading_zeros_are_decimal_not_octal():
    # bash reads 08 and 09 as invalid octal, 010 as 8: the script reads decimal.
    listing = _array("table4", "08")
    assert listing.returncode == 0 and "6 rows x 8 seeds = 48 array tasks" in listing.stdout
    words = shlex.split(_array("table4", "010", task="017").stdout)
    assert words[5:8] == ["configs/table4/reaf_resnet18_c72_4-3-4.yaml", "--seed_everything", "7"]


def test_crlf_quoted_rows_file_from_another_directory(tmp_path):
    """CRLF ends, quotes, a path with a space, comments; logs/slurm is created where it runs."""
    folder = tmp_path / "my rows"
    folder.mkdir()
    row = folder / "tiny row.yaml"
    row.write_text("trainer:\n  devices: 2\n  num_nodes: 3\nmodel:\n  arch: test_resnet\n")
    recipe = REPO / "configs" / "recipes" / "cifar100.yaml"
    rows = tmp_path / "rows.txt"
    rows.write_bytes(
        (
            "\ufeff# a comment line\r\n\r\n"
            f'{recipe} "{row}"  # recipe, then the quoted row\r\n'
            f"'{recipe}' '{row}'\r\n"
        ).encode()
    )
    listing = _array(str(rows), "1", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert (tmp_path / "logs" / "slurm").is_dir()  # SLURM's --output folder, made before sbatch
    assert "--nodes=3 --ntasks-per-node=2 --gpus-per-node=2" in listing.stdout
    for task in (0, 1):
        words = shlex.split(_array(str(rows), "1", task=task, cwd=tmp_path).stdout)
        assert words == [
            "reaf-lightning",
            "fit",
            "--config",
            str(recipe),
            "--config",
            str(row),
            "--seed_everything",
            "0",
            "--ckpt_path",
            "last",
        ]


@pytest.mark.parametrize(
    "content,message",
    [
        ('configs/recipes/cifar100.yaml "configs/table4/resnet18.yaml\n', "No closing quotation"),
        ("configs/table4/nothing.yaml\n", "not a paper row's config"),
        ("configs/recipes/cifar100.yaml configs/table4/nothing.yaml\n", "no such config file"),
        ("# only a comment\r\n", "no runs in"),
    ],
)
def test_bad_rows_files_are_refused_in_one_line(tmp_path, content, message):
    rows = tmp_path / "rows.txt"
    rows.write_text(content)
    result = _array(str(rows), "1", task=0)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not result.stdout


def test_srun_gets_the_jobs_cpus_per_task(tmp_path):
    calls = _recorder(tmp_path / "bin", "srun")
    env = {
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "REAF_DRY_RUN": "0",
        "SLURM_JOB_ID": "41",
        "SLURM_CPUS_PER_TASK": "12",
    }
    result = _array("table5", "1", task=2, **env)
    assert result.returncode == 0, result.stderr
    (call,) = _calls(calls)
    assert call[:3] == ["--cpus-per-task=12", "reaf-lightning", "fit"]
    assert call[3:7] == [
        "--config",
        "configs/recipes/imagenet.yaml",
        "--config",
        "configs/table5/resnet50.yaml",
    ]
    bad = _array("table5", "1", task=2, **{**env, "SLURM_CPUS_PER_TASK": "8(x2)"})
    assert bad.returncode == 2 and "SLURM_CPUS_PER_TASK must be a decimal integer" in bad.stderr


def test_submit_lines_ask_for_one_task_per_device(tmp_path):
    """Table 6 mixes CIFAR-100 (1 GPU) and ImageNet (8 GPUs) rows: one sbatch per range."""
    calls = _recorder(tmp_path / "bin", "sbatch")
    env = {"PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}", "REAF_SUBMIT": "1"}
    result = _array("table6", "2", "--trainer.precision", "bf16-mixed", **env)
    assert result.returncode == 0, result.stderr
    rows = paper_rows("table6")
    cifar = sum(r.dataset == "cifar100" for r in rows)
    tail = [str(SCRIPT), "table6", "2", "--trainer.precision", "bf16-mixed"]
    assert _calls(calls) == [
        [f"--array=0-{2 * cifar - 1}", "--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=1"]
        + tail,
        [f"--array={2 * cifar}-{2 * len(rows) - 1}", "--nodes=1", "--ntasks-per-node=8"]
        + ["--gpus-per-node=8"]
        + tail,
    ]
    # The ImageNet recipe's devices is what the ImageNet submit line asks for.
    recipe = yaml.safe_load((REPO / "configs" / "recipes" / "imagenet.yaml").read_text())
    assert recipe["trainer"]["devices"] == 8


# -- W&B sweeps -------------------------------------------------------------------------------
def test_sweep_files_are_current():
    assert write_sweeps(REPO, check=True) == []  # the committed files are what it writes


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
    archs = sorted(r["network"]["arch"] for r in records.values())
    assert archs == ["test_reaf_resnet", "test_resnet"]
    again = _array(str(rows), "1", task=0, **env)  # the same task once more: requeued
    assert again.returncode == 0, again.stderr[-2000:]
    assert "starting a new run" not in again.stderr  # it found the task's last.ckpt
    for path, record in records.items():
        assert json.loads((path / "metrics.json").read_text())["fit"] == record["fit"]
