"""The ``reaf-lightning`` CLI end to end (real Trainer, real W&B in offline mode).

Runs are tiny (a few batches of scikit-learn digits) but go through the same
code path as the paper's experiments: config files, data/model linking, run
directories per seed, checkpointing, resume with ``--ckpt_path last``, W&B
offline run files. The trained run is the session's ``trained_run`` fixture.
"""

from __future__ import annotations

import errno
import glob
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers.fake_data import write_cifar100, write_corrupt_image, write_image_folder
from helpers.fit_processes import tiny_config, write_config
from helpers.tiny_run import QUICKSTART, REPO, TINY_ARGS, finish_wandb, isolate_wandb
from helpers.wandb_records import run_contents
from torch.utils.data import DataLoader, Dataset

from reaf_lightning.commands import run_command
from reaf_lightning.data import (
    CIFAR100DataModule,
    CorruptImageWarning,
    DatasetLayoutError,
    DatasetNotFoundError,
    ImageFolderDataModule,
)
from reaf_lightning.errors import DataError
from reaf_lightning.models import create_model
from reaf_lightning.runs.checkpoint import find_last_checkpoint
from reaf_lightning.training.cli import main, run
from reaf_lightning.training.wandb_logger import WandbLogger, resolve_wandb_mode

pytestmark = pytest.mark.usefixtures("one_thread")

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
    from helpers.fake_data import write_image_folder

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

    monkeypatch.setattr("reaf_lightning.training.module.build_network", no_model)
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


# --- user errors: one line on stderr, exit 2, nothing started ------------------------------
#
# Every case goes through ``main([...])`` (and once the installed console script) and checks
# the exit status, that stderr has exactly one ``reaf-lightning: error:`` line and no
# traceback, and that the line names the offending value. Where a library has its own
# message for the problem, the expected line is that message obtained by calling the
# library directly (an independent path), not a copied string.


PREFIX = "reaf-lightning: error: "


def _fails(args: list[str], capsys, code: int = 2) -> str:
    """Run ``main(args)``; expect ``SystemExit(code)`` and one error line; return it."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("reaf-lightning:")]
    assert len(lines) == 1, err
    assert lines[0].startswith(PREFIX)
    return lines[0][len(PREFIX) :]


@pytest.fixture
def config(tmp_path) -> Path:
    return write_config(tmp_path / "tiny.yaml", tiny_config(tmp_path / "run", max_epochs=1))


def _library_error(fn, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as exc:
        fn(*args, **kwargs)
    return str(exc.value)


# --- 1. bad configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch_kwargs",
    [{"reaf": "4-3-5"}, {"reaf": "4-3-4", "width": 18}, {"reaf": "4-5-4"}],
    ids=["G_O-not-binomial", "channels-not-divisible", "G_M-greater-than-G_I"],
)
def test_invalid_reaf_setting_in_yaml_is_one_line(tmp_path, capsys, arch_kwargs):
    cfg = tiny_config(tmp_path / "run")
    cfg["model"]["arch_kwargs"] = arch_kwargs
    path = write_config(tmp_path / "bad.yaml", cfg)
    expected = _library_error(create_model, "test_reaf_resnet", num_classes=10, **arch_kwargs)
    assert _fails(["fit", "--config", str(path)], capsys) == expected
    assert not (tmp_path / "run").exists()  # nothing was started


def test_reaf_4_3_5_message_names_the_rule(tmp_path, capsys):
    cfg = tiny_config(tmp_path / "run")
    cfg["model"]["arch_kwargs"] = {"reaf": "4-3-5"}
    path = write_config(tmp_path / "bad.yaml", cfg)
    line = _fails(["fit", "--config", str(path)], capsys)
    assert "4-3-5" in line and "C(4, 3) = 4" in line  # what was given and what is valid


def test_unknown_model_and_negative_lr(config, capsys):
    line = _fails(["fit", "--config", str(config), "--model.arch", "resnet5"], capsys)
    assert line == _library_error(create_model, "resnet5")
    assert "'resnet5'" in line and "reaf_resnet50" in line
    line = _fails(["fit", "--config", str(config), "--model.lr", "-0.1"], capsys)
    assert line == "lr must be > 0, got -0.1"


def test_config_parse_errors_are_one_line_in_jsonargparse_words(tmp_path, config, capsys):
    cfg = yaml.safe_load(config.read_text())
    cfg["model"]["learning_rate"] = 0.1
    bad_key = write_config(tmp_path / "key.yaml", cfg)
    assert "learning_rate" in _fails(["fit", "--config", str(bad_key)], capsys)

    cfg = yaml.safe_load(config.read_text())
    cfg["trainer"]["max_epochs"] = "many"
    bad_type = write_config(tmp_path / "type.yaml", cfg)
    line = _fails(["fit", "--config", str(bad_type)], capsys)
    assert 'Parser key "trainer.max_epochs"' in line and "Given value: many" in line

    missing = tmp_path / "nope.yaml"
    line = _fails(["fit", "--config", str(missing)], capsys)
    assert "does not exist" in line and str(missing) in line

    line = _fails(["fit", "--config", str(config), "--trainer.max_epohcs", "3"], capsys)
    assert line == "unrecognized arguments: --trainer.max_epohcs 3"

    line = _fails(["fit", "--config", str(config), "--model.schedule", "linear"], capsys)
    assert 'Parser key "model.schedule"' in line and "Got value: linear" in line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("model:\n  arch: [test_reaf_resnet\n", "is not valid YAML: "),
        ("", "is empty; it must hold a mapping of settings"),
        ("# only a comment\n", "is empty; it must hold a mapping of settings"),
        ("- fit\n- validate\n", "holds a list, not a mapping of settings"),
        ("model:\n  lr: 0.1\n  lr: 0.2\n", "key 'lr' is given twice (lines 2 and 3)"),
    ],
    ids=["broken", "empty", "comment-only", "list", "duplicate-key"],
)
def test_config_files_that_would_be_misread_name_the_file(tmp_path, config, capsys, text, expected):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    line = _fails(["fit", "--config", str(config), "--config", str(bad)], capsys)
    assert str(bad) in line and expected in line
    assert not (tmp_path / "run").exists()


def test_limit_train_batches_zero_says_what_it_means(config, tmp_path, capsys):
    line = _fails(["fit", "--config", str(config), "--trainer.limit_train_batches", "0"], capsys)
    assert line.startswith("trainer.limit_train_batches=0 leaves no batch to train on")


def test_data_module_argument_errors_come_from_the_data_module(config, capsys):
    line = _fails(["fit", "--config", str(config), "--data.init_args.batch_size", "0"], capsys)
    from reaf_lightning.data import DigitsDataModule

    assert line == _library_error(DigitsDataModule, batch_size=0)
    line = _fails(["fit", "--config", str(config), "--data.init_args.batchsize", "8"], capsys)
    assert "batchsize" in line


def test_reaf_debug_shows_the_traceback(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path / "run")
    cfg["model"]["arch_kwargs"] = {"reaf": "4-3-5"}
    path = write_config(tmp_path / "bad.yaml", cfg)
    monkeypatch.setenv("REAF_DEBUG", "1")
    with pytest.raises(ValueError, match=r"G_O must be C\(4, 3\) = 4"):
        main(["fit", "--config", str(path)])


def test_bugs_keep_their_traceback(config, capsys):
    # A ValueError from inside PyTorch mid-run is not a user error: it is re-raised as is.
    with pytest.raises(ValueError, match="batch_size"):
        main(
            [
                "fit",
                "--config",
                str(config),
                "--trainer.callbacks+=helpers.fit_processes.TorchShapeBug",
            ]
        )
    assert PREFIX not in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_user_error_is_one_line(tmp_path):
    script = Path(sys.executable).parent / "reaf-lightning"
    if not script.exists():
        pytest.skip("reaf-lightning is not installed next to this interpreter")
    cfg = tiny_config(tmp_path / "run")
    cfg["model"]["arch_kwargs"] = {"reaf": "4-3-5"}
    path = write_config(tmp_path / "bad.yaml", cfg)
    out = subprocess.run(
        [str(script), "fit", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr + out.stdout
    errors = [line for line in out.stderr.splitlines() if "error" in line.lower()]
    expected = _library_error(create_model, "test_reaf_resnet", num_classes=10, reaf="4-3-5")
    assert errors == [PREFIX + expected]


# --- 2. missing or wrong data -----------------------------------------------------------------


def _folder_args(config: Path, root: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "--config",
        str(config),
        "--data",
        "reaf_lightning.data.ImageFolderDataModule",
        "--data.init_args.root",
        str(root),
        "--data.init_args.image_size",
        "16",
        "--data.init_args.batch_size",
        "4",
        "--data.init_args.num_workers",
        "0",
        "--data.init_args.verify_cache",
        "null",
        *extra,
    ]


def _expected_data_error(root: Path, **kwargs) -> str:
    with pytest.raises((DatasetNotFoundError, DatasetLayoutError)) as exc:
        dm = ImageFolderDataModule(str(root), image_size=16, verify_cache=None, **kwargs)
        dm.prepare_data()
    return str(exc.value)


def test_missing_root(config, tmp_path, capsys):
    root = tmp_path / "no_such_dataset"
    line = _fails(_folder_args(config, root), capsys)
    assert line == _expected_data_error(root) and str(root) in line


def test_empty_class_folder(config, tmp_path, capsys):
    root = tmp_path / "images"
    write_image_folder(root, classes=("a", "b"), n_per_class=2, size=20)
    for image in (root / "train" / "b").iterdir():
        image.unlink()
    line = _fails(_folder_args(config, root), capsys)
    assert line == _expected_data_error(root) and str(root / "train" / "b") in line


def test_class_sets_differ_between_train_and_val(config, tmp_path, capsys):
    root = tmp_path / "images"
    write_image_folder(root, classes=("a", "b"), n_per_class=2, size=20)
    write_image_folder(root, classes=("c",), n_per_class=2, size=20, splits=("train",))
    line = _fails(_folder_args(config, root), capsys)
    assert line == _expected_data_error(root) and "only in train: ['c']" in line


def test_cifar_with_a_missing_batch_file(config, tmp_path, capsys):
    root = tmp_path / "cifar"
    write_cifar100(root, n_train=8, n_test=4)
    (root / "cifar-100-python" / "test").unlink()
    line = _fails(
        [
            "fit",
            "--config",
            str(config),
            "--data",
            "reaf_lightning.data.CIFAR100DataModule",
            "--data.init_args.root",
            str(root),
            "--data.init_args.num_workers",
            "0",
        ],
        capsys,
    )
    with pytest.raises(DatasetNotFoundError) as exc:
        CIFAR100DataModule(str(root)).prepare_data()
    assert line == str(exc.value)
    assert str(root / "cifar-100-python" / "test") in line
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before training


# --- 3. corrupt images --------------------------------------------------------------------------


@pytest.fixture
def folder_with_a_corrupt_image(tmp_path) -> tuple[Path, Path]:
    root = tmp_path / "images"
    write_image_folder(root, classes=("a", "b"), n_per_class=3, size=20)
    bad = write_corrupt_image(root / "train" / "a" / "a_broken.png")
    return root, bad


def test_corrupt_image_is_skipped_and_named_during_a_short_fit(config, folder_with_a_corrupt_image):
    root, bad = folder_with_a_corrupt_image
    args = _folder_args(config, root, "--trainer.limit_train_batches", "1.0")
    with pytest.warns(CorruptImageWarning) as record:
        cli = run(args)
    messages = [str(w.message) for w in record if issubclass(w.category, CorruptImageWarning)]
    assert len(messages) == 1  # warned once for the file, however often it is drawn
    assert str(bad) in messages[0] and "1 unreadable file(s) skipped" in messages[0]
    assert cli.trainer.state.finished and cli.trainer.current_epoch == 1
    assert cli.trainer.global_step == 2  # 7 files (6 readable) in batches of 4: 2 steps


def test_corrupt_image_refused_at_setup_with_on_corrupt_error(
    config, folder_with_a_corrupt_image, tmp_path, capsys
):
    root, bad = folder_with_a_corrupt_image
    line = _fails(_folder_args(config, root, "--data.init_args.on_corrupt", "error"), capsys)
    assert str(bad) in line and "on_corrupt" in line
    assert not (tmp_path / "run" / "checkpoints").exists()


# --- corrupt, unsafe, foreign or incompatible checkpoints ----------------------------------------


@pytest.fixture
def checkpoint(trained_run) -> Path:
    """``last.ckpt`` of the session's one-epoch tiny run (read-only)."""
    return trained_run / "checkpoints" / "last.ckpt"


def _eval_args(*extra: str) -> list[str]:
    return [*TINY_ARGS, *NO_LOGGER, *extra]


@pytest.mark.slow
def test_corrupt_and_foreign_checkpoints(checkpoint, tmp_path, capsys):
    fit = ["fit", *_eval_args(), "--ckpt_path"]

    line = _fails([*fit, str(tmp_path / "missing.ckpt")], capsys)
    assert line == f"checkpoint not found: {tmp_path / 'missing.ckpt'}"

    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    line = _fails([*fit, str(truncated)], capsys)
    assert line.startswith(f"corrupt checkpoint {truncated}:") and "incomplete" in line

    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"PK\x03\x04 not really a zip" + bytes(range(256)))
    assert _fails([*fit, str(garbage)], capsys).startswith(f"corrupt checkpoint {garbage}:")

    for name, content in (("notes.ckpt", b"epoch: 3\n"), ("random.ckpt", bytes(range(7, 250)))):
        other = tmp_path / name
        other.write_bytes(content)
        line = _fails([*fit, str(other)], capsys)
        assert line.startswith(f"{other} is not a PyTorch checkpoint")
        assert "weights_only" not in line  # no advice to turn the safety off

    content = torch.load(checkpoint, weights_only=True)
    bare = tmp_path / "bare.pt"
    torch.save(content["state_dict"], bare)
    line = _fails([*fit, str(bare)], capsys)
    assert line.startswith(f"{bare} is not a Lightning checkpoint: missing state_dict")

    weights = tmp_path / "weights_only.ckpt"
    torch.save({k: v for k, v in content.items() if k != "optimizer_states"}, weights)
    line = _fails([*fit, str(weights)], capsys)
    assert "only the model weights" in line and "cannot resume" in line
    # ... but evaluating such a checkpoint is fine
    metrics = run(["validate", *_eval_args("--ckpt_path", str(weights))])
    assert torch.isfinite(metrics.trainer.callback_metrics["val/acc1"])


def test_a_checkpoint_carrying_code_is_refused_unless_trusted(checkpoint, tmp_path, capsys):
    from helpers.fit_processes import TouchOnLoad

    marker = tmp_path / "payload-ran"
    content = torch.load(checkpoint, weights_only=True)
    content["extra"] = TouchOnLoad(str(marker))
    crafted = tmp_path / "crafted.ckpt"
    torch.save(content, crafted)
    for subcommand in ("fit", "validate"):
        line = _fails([subcommand, *_eval_args("--ckpt_path", str(crafted))], capsys)
        assert line.startswith(f"{crafted} was refused by the safe loader")
        assert "--weights_only false" in line
        assert not marker.exists()  # nothing from the file was executed
    # the one explicit flag, the same in every command, loads it (and so runs its code)
    cli = run(["validate", *_eval_args("--ckpt_path", str(crafted), "--weights_only", "false")])
    assert marker.exists() and torch.isfinite(cli.trainer.callback_metrics["val/acc1"])


def test_incompatible_checkpoint_names_the_mismatch(checkpoint, tmp_path, capsys):
    content = torch.load(checkpoint, weights_only=True)
    name = "net.fc.weight"
    expected_shape = tuple(content["state_dict"][name].shape)
    content["state_dict"][name] = torch.zeros(3, 3)
    changed = tmp_path / "changed.ckpt"
    torch.save(content, changed)
    line = _fails(["validate", *_eval_args("--ckpt_path", str(changed))], capsys)
    assert f"{name}: checkpoint (3, 3) vs model {expected_shape}" in line


# `last` and `best` resolve as in the resume and best-checkpoint tests above; slow tier
@pytest.mark.parametrize(
    "which",
    [
        pytest.param("last", marks=pytest.mark.slow),
        pytest.param("best", marks=pytest.mark.slow),
        "file",
    ],
)
def test_a_checkpoint_of_another_network_is_refused(trained_run, checkpoint, capsys, which):
    """The config decides what is built; ``last``, ``best`` and a path follow the same rule."""
    ckpt = str(checkpoint) if which == "file" else which
    root = str(trained_run.parent)  # + seed0 from quickstart.yaml's seed
    for subcommand in ("fit", "validate"):
        args = _eval_args("--trainer.default_root_dir", root, "--ckpt_path", ckpt)
        line = _fails([subcommand, *args, "--model.arch", "test_resnet"], capsys)
        assert "holds a test_reaf_resnet {} (10 classes) network" in line
        assert "the configuration builds a test_resnet {} (10 classes)" in line


# `last` and `best` resolve as in the resume and best-checkpoint tests above; slow tier
@pytest.mark.parametrize(
    "which",
    [
        pytest.param("last", marks=pytest.mark.slow),
        pytest.param("best", marks=pytest.mark.slow),
        "file",
    ],
)
def test_resuming_with_changed_optimiser_settings_is_refused(
    trained_run, checkpoint, capsys, which
):
    ckpt = str(checkpoint) if which == "file" else which
    root = str(trained_run.parent)
    args = _eval_args("--trainer.default_root_dir", root, "--ckpt_path", ckpt)
    line = _fails(["fit", *args, "--model.lr", "0.05", "--model.warmup_epochs", "0"], capsys)
    assert line.startswith("resuming ") and "model.lr: 0.1 -> 0.05" in line
    assert "model.warmup_epochs: 1.0 -> 0.0" in line


# the one-step fit ends before its first validation, so val/acc1 is never there to monitor
@pytest.mark.filterwarnings("ignore:`ModelCheckpoint\\(monitor='val/acc1'\\)` could not find")
def test_ckpt_path_last_or_best_without_a_previous_run(tmp_path, capsys):
    empty = tmp_path / "fresh"
    for which in ("last", "best"):
        args = _eval_args("--trainer.default_root_dir", str(empty), "--ckpt_path", which)
        line = _fails(["validate", *args], capsys)
        where = empty / "seed0" / "checkpoints"
        assert line.startswith(f"--ckpt_path {which}: no {which} checkpoint in {where.resolve()}")
    # fit starts a new run instead, and says so (the same command line resumes next time)
    cli = run(
        [
            "fit",
            *_eval_args("--trainer.default_root_dir", str(empty), "--ckpt_path", "last"),
            "--trainer.max_steps",
            "1",
        ]
    )
    assert "starting a new run" in capsys.readouterr().err
    assert cli.trainer.ckpt_path is None and cli.trainer.global_step == 1
    assert (empty / "seed0" / "checkpoints" / "last.ckpt").is_file()


# --- outputs: checked before the work, a full disk is one line ----------------------------------


@pytest.mark.parametrize("where", ["checkpoint", "logger", "run"])
def test_an_unwritable_output_location_stops_before_the_work(tmp_path, capsys, where):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way\n")
    target = blocker / "sub"
    flags = {
        "checkpoint": ["--checkpoint.dirpath", str(target)],
        "logger": [
            "--trainer.logger",
            "lightning.pytorch.loggers.CSVLogger",
            "--trainer.logger.init_args.save_dir",
            str(target),
        ],
        "run": ["--trainer.default_root_dir", str(target)],
    }[where]
    args = [*TINY_ARGS, "--trainer.logger", "false", "--trainer.default_root_dir", "out", *flags]
    line = _fails(["fit", *args], capsys)
    assert str(target) in line and ("not a directory" in line.lower() or "in the way" in line)
    assert not (tmp_path / "out" / "seed0" / "checkpoints").exists()  # nothing was trained


def test_disk_full_during_a_save_is_one_line_and_keeps_the_earlier_files(
    trained_run, tmp_path, capsys, monkeypatch
):
    root = tmp_path / "copy"
    shutil.copytree(trained_run, root / "seed0")
    before = {p.name: p.read_bytes() for p in (root / "seed0" / "checkpoints").iterdir()}
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "optimizer_states" in obj:  # a checkpoint, not anything else
            Path(f).write_bytes(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    args = _eval_args("--trainer.default_root_dir", str(root), "--trainer.max_epochs", "2")
    line = _fails(["fit", *args, "--ckpt_path", "last"], capsys)
    assert line.startswith(f"cannot write {root / 'seed0' / 'checkpoints'}")
    assert line.endswith(": no space left on device")
    after = {p.name: p.read_bytes() for p in (root / "seed0" / "checkpoints").iterdir()}
    assert after == before  # earlier checkpoints intact, no partial file left


# --- errors from DataLoader workers -------------------------------------------------------------


class _BrokenSample(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        if index == 2:
            raise DataError(f"sample {index} of /data/x is unreadable")
        return torch.zeros(1)


def test_a_worker_error_reaches_the_user_as_its_own_line(capsys):
    def body() -> None:
        for _ in DataLoader(_BrokenSample(), batch_size=1, num_workers=1):
            pass

    assert run_command("reaf-lightning", body) == 2
    assert capsys.readouterr().err == "reaf-lightning: error: sample 2 of /data/x is unreadable\n"
