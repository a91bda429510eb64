"""W&B logging: one run per experiment, what every run records, and never a blocked run.

The fast tests run ``reaf-lightning`` in this process with ``WANDB_MODE=offline``
and read the offline run files back (``wandb_records``): a fit, its resumed
continuation are one W&B run, a ``validate`` of the trained run is a W&B run of its own in
the experiment's group (so it never replaces the fit's summary or history), and each
records the package version, the git commit of the package's source and the
command line, also when started outside the repository.

Slow: two real ``reaf-lightning fit`` processes with the project's W&B logger in its
default ``mode: auto`` and no ``WANDB_MODE``: one without any credentials, one
with an API key but no way to reach the server. Where the machine allows it
(root, ``unshare -n``), both run in a network namespace of their own with no
network at all (not even DNS); otherwise the second one points ``WANDB_BASE_URL``
at a closed local port. Both must finish with status 0 and leave a complete
offline W&B run whose summary matches the checkpoint.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import wandb
from helpers import REPO, TESTS
from helpers.fit_processes import tiny_config, write_config
from helpers.wandb_records import run_contents

from reaf_lightning.training.cli import main
from reaf_lightning.training.wandb_logger import WandbLogger, recorded_run_id

pytestmark = pytest.mark.usefixtures("one_thread")


def _run_dir(root: Path) -> Path:
    """``<default_root_dir>/seed0`` for the tiny config's seed 0, where the CLI adds it."""
    return next(p for p in (root / "seed0", root) if (p / "checkpoints").is_dir())


def _launch(monkeypatch, *args: str) -> None:
    """``reaf-lightning ARGS`` in this process, with ``sys.argv`` as a shell would set it."""
    monkeypatch.setattr(sys, "argv", ["reaf-lightning", *args])
    try:
        main(list(args))
    except SystemExit as exit_:
        assert exit_.code in (0, None), f"reaf-lightning {shlex.join(args)} exited {exit_.code}"


def test_fit_and_resume_are_one_wandb_run_and_validate_its_own(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("REAF_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)  # outside the repository: the commit comes from the package
    root = tmp_path / "run"
    cfg = tiny_config(root, max_epochs=1, train_batches=2)
    cfg["trainer"]["logger"] = {
        "class_path": "reaf_lightning.training.wandb_logger.WandbLogger",
        "init_args": {
            "name": "tiny",
            "group": "tables",
            "job_type": "train",
            "tags": ["a", "b"],
            "notes": "one experiment",
        },
    }
    config = str(write_config(tmp_path / "tiny.yaml", cfg))
    commands = [
        ("fit", "--config", config),
        ("fit", "--config", config, "--trainer.max_epochs", "2", "--ckpt_path", "last"),
        ("validate", "--config", config, "--ckpt_path", "last"),
    ]
    for command in commands:
        _launch(monkeypatch, *command)
    wandb.finish()  # the last run is still open in this process; a CLI process would exit,
    wandb.teardown()  # and this waits until W&B's service has written everything

    def runs_in(folder: Path) -> list[dict]:
        files = sorted(  # in start order: the folders begin with the time; W&B adds -1, -2 ...
            glob.glob(str(folder / "wandb" / "offline-run-*" / "run-*.wandb")),  # to a name taken
            key=lambda f: (Path(f).parent.name[:27], len(Path(f).parent.name), Path(f).parent.name),
        )
        return [run_contents(f) for f in files]

    fits = runs_in(_run_dir(root))
    (validation,) = runs_in(_run_dir(root) / "wandb_validate")
    runs = [*fits, validation]
    assert len(fits) == 2
    assert len({r["run"]["id"] for r in fits}) == 1  # one W&B run, resumed once
    first = fits[0]["run"]
    assert (first["name"], first["group"], first["job_type"]) == ("tiny/seed0", "tables", "train")
    # the configured tags, and the data set the run trained on (from its data module)
    assert (first["tags"], first["notes"]) == (["a", "b", "digits"], "one experiment")
    own = validation["run"]
    assert own["id"] != first["id"]
    assert (own["name"], own["group"], own["job_type"]) == (
        "tiny/seed0/validate",
        "tables",
        "validate",
    )
    assert own["tags"] == ["a", "b", "digits"]

    steps = [[h["trainer/global_step"] for h in r["history"] if "val/acc1" in h] for r in runs]
    assert steps[:2] == [[1], [3]]  # the resumed fit continues at epoch 1 (2 steps per epoch)
    assert len(steps[2]) == 1
    # the fit's last summary is the one its last epoch logged, untouched by validate
    last_val = [h for h in fits[1]["history"] if "val/acc1" in h][-1]
    assert fits[1]["summary"]["val/acc1"] == last_val["val/acc1"]

    pyproject = (REPO / "pyproject.toml").read_text()  # (tomllib needs Python 3.11)
    version = re.search(r'^version = "(.+)"$', pyproject, re.MULTILINE)[1]
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    for run, command in zip(runs, commands):
        record = run["config"][f"provenance/{command[0]}"]
        assert record["command"] == shlex.join(["reaf-lightning", *command])
        assert (record["package_version"], record["git_commit"]) == (version, head)
        assert isinstance(record["git_dirty"], bool)


def test_a_cifar10_run_of_a_table3_row_config_is_tagged_and_reported_as_cifar10(
    tmp_path, monkeypatch, capsys
):
    """The paper's CIFAR-100 recipe and a Table 3 row's config, with CIFAR-10 as the data: the
    W&B run is tagged with the data actually used, and ``reaf-report`` lists it apart."""
    from helpers.fake_data import write_cifar10

    from reaf_lightning.report.cli import main as report_main

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("REAF_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    write_cifar10(tmp_path / "cifar10", n_per_batch=8, n_test=16)
    configs = REPO / "configs"
    _launch(
        monkeypatch, "fit", "--config", str(configs / "recipes" / "cifar100.yaml"),
        "--config", str(configs / "table3" / "resnet50.yaml"),
        "--data", "CIFAR10DataModule", "--data.init_args.root", "cifar10",
        "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0",
        "--model.arch", "test_resnet", "--model.arch_kwargs", "{}",
        "--trainer.accelerator", "cpu", "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "3",
        "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
    )  # fmt: skip
    wandb.finish()
    wandb.teardown()
    run_dir = tmp_path / "logs" / "table3" / "resnet50" / "seed0"
    (run_file,) = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert run_contents(run_file)["run"]["tags"] == ["cifar10"]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        report_main(["--log_roots", "[logs]", "--csv", "r.csv"])
    stdout = capsys.readouterr().out
    assert "### Table 3" not in stdout and "| table3/resnet50 | 1 |" in stdout
    note = (tmp_path / "r.csv").read_text()
    assert "trained on cifar10 (CIFAR10DataModule), the paper on cifar100" in note
    assert "10 classes, the paper's 100" in note and "1 epoch planned" in note


def test_the_run_id_is_the_one_recorded_in_the_run_directory(tmp_path, monkeypatch):
    # W&B names its folders [offline-]run-<YYYYmmdd_HHMMSS>-<id>; ids may hold hyphens.
    assert recorded_run_id(tmp_path) is None
    (tmp_path / "wandb" / "run-20260101_120000-older").mkdir(parents=True)
    (tmp_path / "wandb" / "offline-run-20260102_090000-new-er").mkdir()
    (tmp_path / "wandb" / "latest-run").mkdir()
    assert recorded_run_id(tmp_path) == "new-er"
    # The logger picks it up without starting anything; an explicit id wins; a directory
    # without W&B files gets a new id of its own.
    assert WandbLogger(save_dir=str(tmp_path)).version == "new-er"
    assert WandbLogger(save_dir=str(tmp_path), id="mine").version == "mine"
    fresh = [WandbLogger(save_dir=str(tmp_path / d)).version for d in ("x", "y")]
    assert fresh[0] != fresh[1] and all(fresh)
    # Without a run directory (save_dir=None: ./logs, shared by anything) nothing is continued.
    (tmp_path / "logs" / "wandb" / "run-20260101_120000-shared").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert WandbLogger().version not in ("shared", None)


@pytest.mark.slow
def _network_namespace() -> list[str]:
    """``["unshare", "-n"]`` when this user may create a network namespace, else ``[]``."""
    if shutil.which("unshare") is None:
        return []
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    return ["unshare", "-n"] if probe.returncode == 0 else []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_no_network_and_no_credentials_means_offline_not_failure(tmp_path):
    isolate = _network_namespace()
    cases = {
        "no_credentials": ({}, "no W&B credentials for api.wandb.ai"),
        "key_but_no_network": ({"WANDB_API_KEY": "local-" + "0" * 40}, "is not reachable"),
    }
    procs = {}
    for name, (extra, _) in cases.items():
        home = tmp_path / name / "home"
        home.mkdir(parents=True)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("WANDB_") and k not in ("NETRC", "REAF_DEBUG")
        }
        env.update(
            HOME=str(home),
            NETRC=str(home / "no-netrc"),
            WANDB_CONFIG_DIR=str(home / "wandb-config"),
            PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
            **extra,
        )
        if not isolate and extra:
            env["WANDB_BASE_URL"] = f"http://127.0.0.1:{_closed_port()}"
        root = tmp_path / name / "run"
        cfg = tiny_config(root, max_epochs=1)
        cfg["trainer"]["logger"] = {
            "class_path": "reaf_lightning.training.wandb_logger.WandbLogger",
            "init_args": {"project": "reaf-lightning", "name": name},
        }
        config = write_config(tmp_path / name / "tiny.yaml", cfg)
        cmd = [
            *isolate,
            sys.executable,
            "-m",
            "reaf_lightning.training.cli",
            "fit",
            "--config",
            str(config),
        ]
        procs[name] = (
            root,
            subprocess.Popen(
                cmd,
                cwd=tmp_path / name,
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            ),
        )
    for name, (root, proc) in procs.items():
        try:
            out, err = proc.communicate(timeout=300)  # a hang fails here
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"{name}: the run hung")
        assert proc.returncode == 0, f"{name}: {err[-3000:]}"
        reason = cases[name][1]
        assert "W&B logs offline (" in out + err and reason in out + err, name
        (run_file,) = glob.glob(str(_run_dir(root) / "wandb" / "offline-run-*" / "run-*.wandb"))
        summary = run_contents(run_file)["summary"]
        ckpt = torch.load(_run_dir(root) / "checkpoints" / "last.ckpt", weights_only=True)
        (state,) = [v for v in ckpt["callbacks"].values() if "best_model_score" in v]
        assert summary["best/val/acc1"] == pytest.approx(float(state["best_model_score"]))
        assert summary["val/acc1"] == pytest.approx(float(state["best_model_score"]))  # 1 epoch
