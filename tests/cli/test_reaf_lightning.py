"""The ``reaf-lightning`` CLI end to end (real Trainer, real W&B in offline mode).

Runs are tiny (a few batches of scikit-learn digits) but go through the same
code path as the paper's experiments: config files, data/model linking, run
directories per seed, checkpointing, resume with ``--ckpt_path last``, W&B
offline run files. The trained run is the session's ``trained_run`` fixture.
"""

from __future__ import annotations

import glob
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import QUICKSTART, REPO, TINY_ARGS, finish_wandb, isolate_wandb
from wandb_records import run_contents

from reaf_lightning.checkpointing import find_last_checkpoint
from reaf_lightning.cli import main, run
from reaf_lightning.loggers import WandbLogger, resolve_wandb_mode

NO_LOGGER = ["--trainer.logger", "false"]


@pytest.fixture(autouse=True)
def _wandb_env(tmp_path, monkeypatch):
    isolate_wandb(monkeypatch, tmp_path)
    monkeypatch.delenv("REAF_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    yield
    finish_wandb()


def _offline_runs(root: Path) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(str(root / "wandb" / "offline-run-*" / "run-*.wandb")))


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# --- fast_dev_run through run() --------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        [],  # the quick start's own REAF-ResNet18 (4-3-4)
        pytest.param(
            ["--model.arch", "test_reaf_plus_resnet", "--model.arch_kwargs", "{}"],
            marks=pytest.mark.slow,
        ),
        pytest.param(
            ["--model.arch", "reaf_plus_mobilenet_v2", "--model.arch_kwargs", "{stem: cifar}"],
            marks=pytest.mark.slow,
        ),
    ],
    ids=["reaf_resnet18", "test_reaf_plus_resnet", "reaf_plus_mobilenet_v2"],
)
def test_fast_dev_run_fit(overrides):
    cli = run(
        [
            "fit",
            "--config",
            QUICKSTART,
            "--trainer.fast_dev_run",
            "true",
            "--data.init_args.batch_size",
            "4",
            *overrides,
        ]
    )
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    for key in ("train/loss", "val/loss", "val/acc1", "val/acc5", "val/err1", "val/err5"):
        assert torch.isfinite(metrics[key]), key
    assert cli.model.net is not None and cli.model.hparams.num_classes == 10  # linked from data


# --- the run directory --------------------------------------------------------------------------


def test_trained_run_holds_checkpoints_config_and_an_offline_wandb_run(trained_run):
    assert trained_run.name == "seed0"  # quickstart.yaml: seed_everything 0
    files = sorted(p.name for p in (trained_run / "checkpoints").iterdir())
    assert files == ["best-epoch=000.ckpt", "last.ckpt"]
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert config["trainer"]["default_root_dir"] == "logs/quickstart/seed0"
    logger = config["trainer"]["logger"]["init_args"]
    assert (logger["name"], logger["group"], logger["save_dir"]) == (
        "quickstart/seed0",
        "quickstart",
        "logs/quickstart/seed0",
    )
    assert "optimizer" not in config and "lr_scheduler" not in config
    (run_file,) = _offline_runs(trained_run)
    contents = run_contents(run_file)
    assert contents["config"]["resolved_config"]["model"]["arch"] == "test_reaf_resnet"
    assert (
        contents["config"]["resolved_config"]["trainer"]["default_root_dir"]
        == "logs/quickstart/seed0"
    )
    last = _ckpt(trained_run / "checkpoints" / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (0, 3)
    # the logged validation equals a fresh evaluation of the saved weights
    val = run(
        [
            "validate",
            *TINY_ARGS,
            *NO_LOGGER,
            "--ckpt_path",
            str(trained_run / "checkpoints" / "last.ckpt"),
        ]
    )
    for key in ("val/acc1", "val/acc5", "val/err1", "val/err5", "val/loss"):
        expected = val.trainer.callback_metrics[key].item()
        assert contents["summary"][key] == pytest.approx(expected, rel=1e-5), key


@pytest.mark.parametrize("seed", ["3", "false", "true"])
def test_each_seed_has_its_own_run_directory(seed):
    cli = run(["fit", *TINY_ARGS, "--trainer.fast_dev_run", "true", "--seed_everything", seed])
    drawn = cli.config.fit.seed_everything  # `true`: the seed Lightning chose, recorded
    expected = Path("logs/quickstart") if seed == "false" else Path(f"logs/quickstart/seed{drawn}")
    assert Path(cli.trainer.default_root_dir) == expected
    assert Path(cli.trainer.checkpoint_callback.dirpath) == (expected / "checkpoints").resolve()
    logger = cli.config.fit.trainer.logger.init_args
    assert logger.save_dir == str(expected)
    assert logger.name == ("quickstart" if seed == "false" else f"quickstart/seed{drawn}")
    assert logger.group == "quickstart"


# --- resume and evaluation ----------------------------------------------------------------------


def test_ckpt_path_last_resumes_the_same_seed(trained_run, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(trained_run, root / "seed0")
    for seed, expected_step in (("0", 6), ("1", 3)):  # seed 1 has no run yet: starts anew
        cli = run(
            [
                "fit",
                *TINY_ARGS,
                *NO_LOGGER,
                "--trainer.max_epochs",
                "2" if seed == "0" else "1",
                "--trainer.default_root_dir",
                str(root),
                "--seed_everything",
                seed,
                "--ckpt_path",
                "last",
            ]
        )
        assert cli.trainer.global_step == expected_step
    # a moved run directory keeps one last.ckpt, the newest state (no version counter)
    assert sorted(p.name for p in (root / "seed0" / "checkpoints").glob("last*")) == ["last.ckpt"]
    assert _ckpt(find_last_checkpoint([root / "seed0" / "checkpoints"]))["global_step"] == 6
    assert _ckpt(root / "seed1" / "checkpoints" / "last.ckpt")["global_step"] == 3


def test_validate_and_test_of_a_checkpoint_agree(trained_run):
    common = [*TINY_ARGS, *NO_LOGGER, "--ckpt_path", str(trained_run / "checkpoints" / "last.ckpt")]
    val = run(["validate", *common]).trainer.callback_metrics
    test = run(["test", "--trainer.limit_test_batches", "2", *common]).trainer.callback_metrics
    # digits has no separate test split: the test loader is the validation loader
    for name in ("acc1", "acc5", "err1", "err5", "loss"):
        assert test[f"test/{name}"].item() == pytest.approx(val[f"val/{name}"].item(), rel=1e-6)


def test_ckpt_path_best_in_a_new_process_finds_the_best_file(trained_run, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(trained_run, root / "seed0")  # a copied run directory finds its own file
    args = [*TINY_ARGS, *NO_LOGGER, "--trainer.default_root_dir", str(root)]
    cli = run(["validate", *args, "--ckpt_path", "best"])
    assert Path(cli.trainer.ckpt_path) == root / "seed0" / "checkpoints" / "best-epoch=000.ckpt"


def test_predict_from_a_checkpoint(trained_run):
    cli = run(
        [
            "predict",
            *TINY_ARGS,
            *NO_LOGGER,
            "--trainer.limit_predict_batches",
            "2",
            "--ckpt_path",
            str(trained_run / "checkpoints" / "last.ckpt"),
        ]
    )
    probs = torch.cat(cli.trainer.predict_loop.predictions)
    assert probs.shape == (32, 10)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(32))


# --- swapping the data module on top of any config ---------------------------------------------


@pytest.mark.slow
def test_data_module_swapped_by_class_path_on_a_paper_config(tmp_path):
    from fake_data import write_image_folder

    write_image_folder(tmp_path / "images", classes=("a", "b", "c"), n_per_class=2, size=36)
    cli = run(
        [
            "fit",
            "--config",
            str(REPO / "configs/recipes/cifar100.yaml"),
            "--config",
            str(REPO / "configs/table3/reaf_resnet50_c72_72_4-3-4.yaml"),
            "--data.class_path",
            "reaf_lightning.data.ImageFolderDataModule",
            "--data.init_args.root",
            str(tmp_path / "images"),
            "--data.init_args.image_size",
            "32",
            "--data.init_args.batch_size",
            "2",
            "--data.init_args.num_workers",
            "0",
            "--trainer.accelerator",
            "cpu",
            "--trainer.fast_dev_run",
            "true",
        ]
    )
    assert type(cli.datamodule).__name__ == "ImageFolderDataModule"
    assert cli.model.hparams.arch == "reaf_resnet50"
    assert cli.model.net.fc.out_features == 3  # num_classes linked from the folders
    assert cli.trainer.state.finished
    assert cli.trainer.default_root_dir == "logs/table3/reaf_resnet50_c72_72_4-3-4/seed0"


# --- help, --print_config and the console script ----------------------------------------------


def test_help_and_argument_errors_build_no_model(monkeypatch, capsys):
    def no_model(*args, **kwargs):
        raise AssertionError("a network was built")

    monkeypatch.setattr("reaf_lightning.module.create_model", no_model)
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--help"])
    assert exc.value.code == 0 and "--model.arch" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["fit", *TINY_ARGS, "--model.lrr", "0.1"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "reaf-lightning: error: unrecognized arguments: --model.lrr 0.1"
    )


def test_print_config_shows_only_groups_that_are_used(capsys):
    with pytest.raises(SystemExit) as exc:
        run(["fit", *TINY_ARGS, "--print_config"])
    assert exc.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert "optimizer" not in config and "lr_scheduler" not in config
    assert config["model"]["arch"] == "test_reaf_resnet" and "checkpoint" in config


@pytest.mark.slow
def test_console_script_prints_config_and_exits_zero():
    script = Path(sys.executable).parent / "reaf-lightning"
    if not script.exists():
        pytest.skip("reaf-lightning is not installed next to this interpreter")
    out = subprocess.run(
        [str(script), "fit", "--config", QUICKSTART, "--print_config"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "arch: reaf_resnet18" in out.stdout and "reaf: 4-3-4" in out.stdout


# --- W&B: online only when possible, never hang -----------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nobody listens on it once the socket is closed


def test_wandb_mode_resolution(tmp_path):
    closed = f"http://127.0.0.1:{_closed_port()}"
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login user password 0123456789abcdef\n")
    with socket.socket() as server:  # a local "W&B server" that accepts connections
        server.bind(("127.0.0.1", 0))
        server.listen()
        listening = f"http://127.0.0.1:{server.getsockname()[1]}"
        nothing = {"NETRC": str(tmp_path / "missing")}
        assert resolve_wandb_mode("auto", nothing)[0] == "offline"
        assert "no W&B credentials" in resolve_wandb_mode("auto", nothing)[1]
        key = {**nothing, "WANDB_API_KEY": "x" * 40}
        assert resolve_wandb_mode("auto", {**key, "WANDB_BASE_URL": listening})[0] == "online"
        unreachable = resolve_wandb_mode("auto", {**key, "WANDB_BASE_URL": closed})
        assert unreachable[0] == "offline" and "not reachable" in unreachable[1]
        from_netrc = {"NETRC": str(netrc), "WANDB_BASE_URL": listening}
        assert resolve_wandb_mode("auto", from_netrc)[0] == "online"
        assert resolve_wandb_mode("auto", {**key, "WANDB_MODE": "offline"})[0] == "offline"
        assert resolve_wandb_mode("online", {**key, "WANDB_MODE": "disabled"})[0] == "disabled"
        assert resolve_wandb_mode("offline", {**key, "WANDB_BASE_URL": listening})[0] == "offline"
    with pytest.raises(ValueError, match="mode='sometimes'"):
        resolve_wandb_mode("sometimes", {})


@pytest.mark.slow
def test_wandb_online_start_failure_falls_back_to_offline(tmp_path, monkeypatch):
    # Credentials present, server down: wandb.init fails after init_timeout, the run goes on.
    monkeypatch.setenv("WANDB_API_KEY", "local-" + "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    logger = WandbLogger(save_dir=str(tmp_path / "wb"), mode="online", init_timeout=3)
    logger.log_metrics({"val/acc1": 0.5}, step=0)
    assert logger.resolved_mode == "offline"
    finish_wandb()
    (run_file,) = _offline_runs(tmp_path / "wb")
    assert run_contents(run_file)["summary"]["val/acc1"] == 0.5
