"""Configs found by name (reaf_lightning.config_names) and through the two commands.

The reference is the repository's ``configs/`` folder, walked here with ``Path.rglob``,
and the same command run with the file's path instead of its name.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import REPO

from reaf_lightning.commands import config_dir, config_names, find_config, prepare_arguments
from reaf_lightning.errors import ConfigError


def test_every_yaml_of_the_configs_folder_has_a_name_that_finds_that_file():
    files = sorted(REPO.joinpath("configs").rglob("*.yaml"))
    names = config_names()
    assert len(names) == len(files) and "quickstart" in names
    assert "table5/reaf_resnet50_c72_4-3-4" in names and "analysis/figure2" in names
    for name in names:
        packaged = Path(find_config(name))
        assert packaged.read_bytes() == (REPO / "configs" / f"{name}.yaml").read_bytes()
        assert packaged.parent.is_relative_to(config_dir())


@pytest.mark.parametrize(
    "spelling", ["table3/resnet50", "table3/resnet50.yaml", "configs/table3/resnet50.yaml"]
)
def test_names_with_or_without_folder_and_suffix(spelling, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here: the name is looked up
    assert Path(find_config(spelling)) == config_dir() / "table3" / "resnet50.yaml"


def test_an_existing_file_wins_over_a_name_and_yaml_text_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("quickstart").write_text("seed_everything: 3\n")
    assert find_config("quickstart") == "quickstart"
    assert find_config("{trainer: {max_epochs: 1}}") == "{trainer: {max_epochs: 1}}"


@pytest.mark.parametrize(
    ("value", "close"),
    [
        ("quikstart", "quickstart"),
        ("tabel5/resnet50", "table5/resnet50"),
        ("reaf_resnet50_c72_4-3-4", "table5/reaf_resnet50_c72_4-3-4"),
    ],
)
def test_unknown_name_is_one_line_with_close_names(value, close, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        find_config(value)
    message = str(err.value)
    assert message.startswith(f"--config {value!r} does not exist: no such file")
    assert "\n" not in message
    assert close in message.split("close names: ")[1].split(", ")


def test_a_name_never_reaches_outside_the_configs_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for escape in ("../pyproject", "../reaf_lightning/cli", "../../etc/hosts"):
        with pytest.raises(ConfigError, match="no packaged config"):
            find_config(escape)


def test_a_folder_of_the_same_name_does_not_hide_a_packaged_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quickstart").mkdir()
    (tmp_path / "nothing").mkdir()
    assert find_config("quickstart") == str(config_dir() / "quickstart.yaml")
    with pytest.raises(ConfigError, match=r"'nothing' is a directory, not a config file"):
        find_config("nothing")


def test_prepare_rewrites_every_config_flag_form_and_only_those(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["fit", "-c", "recipes/imagenet", "--config=table5/resnet50", "--model.arch", "x"]
    assert prepare_arguments(args) == [
        "fit", "-c", str(config_dir() / "recipes/imagenet.yaml"),
        f"--config={config_dir() / 'table5/resnet50.yaml'}", "--model.arch", "x",
    ]  # fmt: skip
    plain = ["fit", "--trainer.max_epochs", "1"]
    assert prepare_arguments(plain) == plain
    assert prepare_arguments(["--config", "figure3"], groups=("analysis",)) == [
        "--config",
        str(config_dir() / "analysis/figure3.yaml"),
    ]
    monkeypatch.setattr(sys, "argv", ["reaf-lightning", "fit", "--config", "quickstart"])
    assert prepare_arguments(["fit"]) == ["fit"]  # sys.argv is never read nor rewritten
    assert sys.argv[1:] == ["fit", "--config", "quickstart"]


@pytest.mark.slow  # about 10 s: the CLI's import and two full parses
def test_reaf_lightning_prints_the_same_config_by_name_as_by_path(tmp_path, monkeypatch, capsys):
    from reaf_lightning.training.cli import main

    row = ["--config", "recipes/cifar100", "--config", "table3/reaf_resnet50_c72_72_4-3-4"]
    by_path = [str(REPO / "configs" / f"{row[i]}.yaml") for i in (1, 3)]
    monkeypatch.chdir(tmp_path)
    outputs = []
    for config in (row, ["--config", by_path[0], "--config", by_path[1]]):
        with pytest.raises(SystemExit) as done:
            main(["fit", *config, "--print_config"])
        assert done.value.code in (0, None)
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and "arch: reaf_resnet50" in outputs[0]
    with pytest.raises(SystemExit) as failed:
        main(["fit", "--config", "table3/reaf_resnet50_c72_4-3-4"])
    assert failed.value.code == 2
    names = capsys.readouterr().err.strip().split("close names: ")[1].split(", ")
    assert "table3/reaf_resnet50_c72_72_4-3-4" in names
