"""The ``reaf-lightning`` CLI end to end (real Trainer, real W&B in offline mode).

Runs are tiny (a few batches of scikit-learn digits) but go through the same
code path as the paper's experiments: config files, data/model linking,
checkpointing, resume with ``--ckpt_path last``, W&B offline run files.
"""

from __future__ import annotations

import glob
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import wandb
from wandb_records import run_contents

from reaf_lightning.cli import run
from reaf_lightning.loggers import WandbLogger, resolve_wandb_mode

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")
TINY = [  # a few batches of digits with a tiny REAF network
    "--model.arch",
    "test_reaf_resnet",
    "--model.arch_kwargs",
    "{}",
    "--data.init_args.batch_size",
    "16",
    "--trainer.limit_train_batches",
    "3",
    "--trainer.limit_val_batches",
    "2",
]


def _isolate_wandb(mp: pytest.MonkeyPatch, home: Path) -> None:
    """No credentials and no user settings: ``auto`` mode must choose offline."""
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_DIR", "WANDB_PROJECT"):
        mp.delenv(var, raising=False)
    mp.setenv("NETRC", str(home / "no-netrc"))
    mp.setenv("WANDB_CONFIG_DIR", str(home / "wandb-config"))


def _finish_wandb() -> None:
    """End the run and wait until W&B has written everything to disk.

    ``wandb.finish()`` alone may return before the background service has flushed
    the run file; ``wandb.teardown()`` waits for it. A run left open would also be
    reused by the next test's logger.
    """
    wandb.finish()
    wandb.teardown()


@pytest.fixture(autouse=True)
def _wandb_env(tmp_path, monkeypatch):
    _isolate_wandb(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)
    yield
    _finish_wandb()


def _offline_runs(root: Path) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(str(root / "wandb" / "offline-run-*" / "run-*.wandb")))


# --- fast_dev_run through main() -------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        [],  # the quick start's own REAF-ResNet18 (4-3-4)
        ["--model.arch", "test_reaf_plus_resnet", "--model.arch_kwargs", "{}"],
        ["--model.arch", "reaf_plus_mobilenet_v2", "--model.arch_kwargs", "{stem: cifar}"],
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


# --- a real (tiny) run: checkpoints, W&B offline, resume, evaluation --------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny ``fit`` of one epoch; yields its root directory and the CLI object."""
    tmp = tmp_path_factory.mktemp("fit")
    with pytest.MonkeyPatch.context() as mp:
        _isolate_wandb(mp, tmp)
        mp.chdir(tmp)
        cli = run(
            [
                "fit",
                "--config",
                QUICKSTART,
                "--trainer.max_epochs",
                "1",
                "--trainer.default_root_dir",
                "logs/run",
                *TINY,
            ]
        )
        _finish_wandb()
        yield tmp / "logs" / "run", cli


def test_fit_writes_checkpoints_config_and_an_offline_wandb_run(trained):
    root, cli = trained
    assert (root / "checkpoints" / "last.ckpt").is_file()
    best = cli.trainer.checkpoint_callback.best_model_path
    assert Path(best).parent == (root / "checkpoints").resolve() and Path(best).is_file()
    assert (root / "config.yaml").is_file()
    (run_file,) = _offline_runs(root)
    contents = run_contents(run_file)
    config, summary = contents["config"], contents["summary"]
    # the full resolved config, the model's complexity and the final metrics
    assert config["config"]["model"]["arch"] == "test_reaf_resnet"
    assert config["config"]["data"]["class_path"] == "reaf_lightning.data.DigitsDataModule"
    assert config["complexity/params"] == sum(p.numel() for p in cli.model.net.parameters())
    assert config["complexity/input_size"] == [3, 16, 16]
    metrics = cli.trainer.callback_metrics
    for key in ("val/acc1", "val/acc5", "val/err1", "val/err5", "val/loss"):
        assert summary[key] == pytest.approx(metrics[key].item(), rel=1e-6), key
    assert summary["best/val/acc1"] == pytest.approx(
        cli.trainer.checkpoint_callback.best_model_score.item()
    )
    assert cli.trainer.checkpoint_callback.monitor == "val/acc1"


def test_ckpt_path_last_resumes(trained, tmp_path):
    root, _ = trained
    first = torch.load(root / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert (first["epoch"], first["global_step"]) == (0, 3)
    cli = run(
        [
            "fit",
            "--config",
            QUICKSTART,
            "--trainer.max_epochs",
            "2",
            "--trainer.default_root_dir",
            str(root),
            *TINY,
            "--ckpt_path",
            "last",
        ]
    )
    assert Path(cli.trainer.ckpt_path).name == "last.ckpt"
    assert cli.trainer.current_epoch == 2 and cli.trainer.global_step == 6
    _finish_wandb()
    newest = _offline_runs(root)[-1]
    epochs = {row["epoch"] for row in run_contents(newest)["history"] if "epoch" in row}
    assert epochs == {1}  # only the second epoch was trained again


def test_validate_and_test_of_a_checkpoint_agree(trained):
    root, _ = trained
    ckpt = str(root / "checkpoints" / "last.ckpt")
    common = [
        "--config",
        QUICKSTART,
        *TINY,
        "--trainer.default_root_dir",
        "logs/eval",
        "--trainer.logger",
        "false",
        "--ckpt_path",
        ckpt,
    ]
    val = run(["validate", *common]).trainer.callback_metrics
    test = run(["test", "--trainer.limit_test_batches", "2", *common]).trainer.callback_metrics
    # digits has no separate test split: the test loader is the validation loader
    for name in ("acc1", "acc5", "err1", "err5", "loss"):
        assert test[f"test/{name}"].item() == pytest.approx(val[f"val/{name}"].item(), rel=1e-6)


def test_predict_from_a_checkpoint(trained):
    root, _ = trained
    cli = run(
        [
            "predict",
            "--config",
            QUICKSTART,
            *TINY,
            "--trainer.limit_predict_batches",
            "2",
            "--trainer.logger",
            "false",
            "--ckpt_path",
            str(root / "checkpoints" / "last.ckpt"),
        ]
    )
    probs = torch.cat(cli.trainer.predict_loop.predictions)
    assert probs.shape == (32, 10)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(32))


# --- swapping the data module on top of any config ---------------------------------------------


def test_data_module_swapped_by_class_path_on_a_paper_config(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
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


# --- the console script -------------------------------------------------------------------------


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


def test_wandb_online_start_failure_falls_back_to_offline(tmp_path, monkeypatch):
    # Credentials present, server down: wandb.init fails after init_timeout, the run goes on.
    monkeypatch.setenv("WANDB_API_KEY", "local-" + "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    logger = WandbLogger(save_dir=str(tmp_path / "wb"), mode="online", init_timeout=3)
    logger.log_metrics({"val/acc1": 0.5}, step=0)
    assert logger.resolved_mode == "offline"
    _finish_wandb()
    (run_file,) = _offline_runs(tmp_path / "wb")
    assert run_contents(run_file)["summary"]["val/acc1"] == 0.5
