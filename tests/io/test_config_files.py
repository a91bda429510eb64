"""Every configuration file a command reads refuses duplicate keys and accepts merge keys.

``reaf-lightning`` (its ``--config`` files and a nested ``--model FILE``) is run for real up
to the point where it would train: each case here fails at parsing, or, for the accepted
merge-key file, is stopped by ``--print_config`` before any training.
"""

from __future__ import annotations

import os

import pytest
import yaml
from helpers import REPO

from reaf_lightning.training.cli import main

QUICKSTART = str(REPO / "configs" / "quickstart.yaml")


def _exit(capsys, args: list[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_nested_model_file_with_a_duplicate_key_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "model.yaml"
    model.write_text("arch: test_resnet\nlr: 0.1\narch: test_reaf_resnet\n")
    code, _, err = _exit(capsys, ["fit", "--config", QUICKSTART, "--model", str(model)])
    assert code == 2 and err.startswith("reaf-lightning: error: ") and err.count("\n") == 1
    assert "key 'arch' is given twice" in err
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("value", ["${SCRATCH}/logs", "$HOME/logs", "runs-${USER}"])
def test_an_environment_variable_in_a_config_is_refused_not_taken_literally(
    tmp_path, capsys, monkeypatch, value
):
    """YAML expands no variable: the run would otherwise go to a folder named as written."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCRATCH", str(tmp_path / "scratch"))
    config = tmp_path / "env.yaml"
    config.write_text(f"trainer:\n  default_root_dir: '{value}'\n")
    code, _, err = _exit(capsys, ["fit", "--config", QUICKSTART, "--config", str(config)])
    assert code == 2 and err.count("\n") == 1, err
    assert f"{config}: {value!r} (line 2) names the environment variable" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["env.yaml"]  # nothing created


def test_dollar_signs_that_name_no_variable_are_plain_text(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "notes.yaml"
    config.write_text("trainer:\n  default_root_dir: costs-5$\n")
    code, out, err = _exit(
        capsys, ["fit", "--config", QUICKSTART, "--config", str(config), "--print_config"]
    )
    assert code == 0, err
    assert yaml.safe_load(out)["trainer"]["default_root_dir"] == "costs-5$"


def test_config_with_merge_keys_is_accepted(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "merged.yaml"
    config.write_text(
        "trainer:\n  <<: {limit_train_batches: 1, limit_val_batches: 1}\n  limit_val_batches: 2\n"
    )
    code, out, err = _exit(
        capsys, ["fit", "--config", QUICKSTART, "--config", str(config), "--print_config"]
    )
    assert code == 0, err
    printed = yaml.safe_load(out)
    assert printed["trainer"]["limit_train_batches"] == 1
    assert printed["trainer"]["limit_val_batches"] == 2  # the mapping's own key overrides


@pytest.mark.parametrize("seed", ["-1", "4294967296", "99999999999999999999"])
def test_a_seed_outside_numpys_range_is_a_user_error(tmp_path, capsys, monkeypatch, seed):
    monkeypatch.chdir(tmp_path)
    code, _, err = _exit(capsys, ["fit", "--config", QUICKSTART, "--seed_everything", seed])
    assert code == 2 and err.count("\n") == 1, err
    assert f"seed_everything {seed} is outside numpy's seed range [0, 4294967295]" in err
    assert not (tmp_path / "logs").exists()


def test_the_largest_seed_numpy_takes_is_accepted(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _exit(
        capsys, ["fit", "--config", QUICKSTART, "--seed_everything", "4294967295", "--print_config"]
    )
    assert code == 0, err
    assert yaml.safe_load(out)["seed_everything"] == 4294967295


@pytest.mark.parametrize("command", ["reaf-report", "reaf-analysis", "reaf-lightning"])
@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_a_config_that_is_a_fifo_or_device_is_refused_without_waiting(
    tmp_path, capsys, command, kind
):
    import signal

    from reaf_lightning.analysis.cli import main as analysis_main
    from reaf_lightning.report.cli import main as report_main

    config = tmp_path / "config.yaml"
    if kind == "fifo":
        os.mkfifo(config)
    else:
        config.symlink_to("/dev/zero")
    entry = {"reaf-report": report_main, "reaf-analysis": analysis_main, "reaf-lightning": main}
    entry = entry[command]

    def hung(signum, frame):
        raise AssertionError(f"{command} waited on {kind}")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        with pytest.raises(SystemExit) as exc:
            entry((["fit"] if command == "reaf-lightning" else []) + ["--config", str(config)])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1, err
    assert f"{command}: error: config file {config} is" in err and "not a regular file" in err


def test_a_nested_model_file_that_is_a_fifo_is_refused_without_waiting(tmp_path, capsys):
    import signal

    fifo = tmp_path / "model.yaml"
    os.mkfifo(fifo)

    def hung(signum, frame):
        raise AssertionError("reaf-lightning waited on the FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        code, _, err = _exit(capsys, ["fit", "--config", QUICKSTART, "--model", str(fifo)])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert code == 2 and err.count("\n") == 1, err
    assert f"{fifo} is a FIFO (named pipe), not a regular file" in err
