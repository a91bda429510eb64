"""The package's file rules (:mod:`reaf_lightning.io`) on real files, FIFOs, links and devices.

Every command goes through these helpers, so each rule is tested once here on the
helpers and once per command on the command itself (``tests/report``, ``tests/analysis``).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reaf_lightning.errors import ConfigError, DataError, OutputError
from reaf_lightning.io import (
    atomic_outputs,
    check_outputs,
    check_stem,
    import_class,
    install_strict_yaml,
    read_bounded,
    read_text,
    read_yaml,
)


# -- reading ----------------------------------------------------------------------------------
def test_read_bounded_reads_a_small_regular_file(tmp_path):
    path = tmp_path / "a.json"
    path.write_bytes(b'{"x": 1}')
    assert read_bounded(path, 100) == b'{"x": 1}'
    link = tmp_path / "link.json"
    link.symlink_to(path)  # an input may be a link to a regular file
    assert read_bounded(link, 100) == b'{"x": 1}'


def test_read_text_drops_a_byte_order_mark_and_names_the_first_byte_that_is_not_utf8(tmp_path):
    path = tmp_path / "rows.txt"
    path.write_bytes(b"\xef\xbb\xbfconfigs/a.yaml\n")
    assert read_text(path, 100) == "configs/a.yaml\n"
    path.write_bytes(b"ok \xe9t\xe9")
    with pytest.raises(DataError, match=r"rows file .*rows.txt is not UTF-8 text \(byte 3\)$"):
        read_text(path, 100, "rows file")


def test_read_bounded_refuses_a_fifo_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "metrics.json"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match=r"metrics.json is a FIFO \(named pipe\), not a regular"):
        read_bounded(fifo, 100)


def test_read_bounded_refuses_a_link_to_dev_zero_and_a_directory(tmp_path):
    link = tmp_path / "metrics.json"
    link.symlink_to("/dev/zero")
    with pytest.raises(DataError, match="is a character device, not a regular file"):
        read_bounded(link, 100)
    with pytest.raises(DataError, match="is a directory"):
        read_bounded(tmp_path, 100)


def test_read_bounded_refuses_a_file_over_the_cap_without_reading_it(tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as handle:  # sparse: 1 GiB on paper, nothing on disk
        handle.truncate(1 << 30)
    with pytest.raises(DataError, match=r"has 1,073,741,824 bytes, more than the 1,000 expected"):
        read_bounded(big, 1000)
    with pytest.raises(DataError, match="does not exist"):
        read_bounded(tmp_path / "missing", 10)


def test_read_yaml_refuses_duplicate_keys_and_accepts_merge_keys(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("model:\n  arch: a\n  lr: 0.1\n  arch: b\n")
    with pytest.raises(ConfigError, match=r"key 'arch' is given twice \(lines 2 and 4\)"):
        read_yaml(dup)
    merged = tmp_path / "merged.yaml"
    merged.write_text("base: &b {lr: 0.1, wd: 0.5}\nmodel:\n  <<: *b\n  wd: 0.25\n")
    # the merged-in wd overridden by the mapping's own, as YAML defines merge keys
    assert read_yaml(merged)["model"] == {"lr": 0.1, "wd": 0.25}
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="FIFO"):
        read_yaml(fifo)


def test_jsonargparse_loader_refuses_duplicate_keys_after_install(tmp_path):
    from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser

    install_strict_yaml()
    install_strict_yaml()  # twice changes nothing
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--wd", type=float, default=1.0)
    dup = tmp_path / "dup.yaml"
    dup.write_text("lr: 0.1\nwd: 0.2\nlr: 0.3\n")
    with pytest.raises(ArgumentError, match="key 'lr' is given twice"):
        parser.parse_args(["--config", str(dup)])
    # merge keys at the top level of a file: jsonargparse's own loader still resolves them
    merged = tmp_path / "merged.yaml"
    merged.write_text("<<: {lr: 0.1, wd: 0.2}\nwd: 0.5\n")
    cfg = parser.parse_args(["--config", str(merged)])
    assert (cfg.lr, cfg.wd) == (0.1, 0.5)


# -- class paths --------------------------------------------------------------------------------
ALLOWED = {"DigitsDataModule": "reaf_lightning.data.DigitsDataModule"}


@pytest.mark.parametrize(
    "class_path",
    [
        "os.system",
        "reaf_evil_module.DigitsDataModule",  # the allowed name in another package
        "reaf_lightning.dataevil.DigitsDataModule",  # a package whose name only starts alike
        "reaf_lightning.data.CIFAR10DataModule",  # the package's, but not on this list
        "DigitsDataModule",
        "",
        "reaf_lightning.data.DigitsDataModule.__init__",
    ],
)
def test_a_class_path_from_a_file_off_the_allow_list_is_never_imported(class_path):
    import sys

    before = set(sys.modules)
    with pytest.raises(ConfigError, match="run.json names the data module .* it is not imported"):
        import_class(class_path, "data module", ALLOWED, "run.json", "--data.class_path")
    assert set(sys.modules) == before


_NAMES = ["reaf_lightning", "data", "digits", "os", "system", "DigitsDataModule", "", "__init__"]
_PART = st.sampled_from([*_NAMES, "..", "dataevil", "évil"]) | st.text(max_size=8)


@settings(max_examples=200, deadline=None)
@given(st.lists(_PART, min_size=1, max_size=5).map(".".join))
def test_any_class_path_from_a_file_is_the_allowed_class_or_refused_importing_nothing(path):
    import sys

    from reaf_lightning.data import DigitsDataModule

    before = set(sys.modules)
    try:
        found = import_class(path, "data module", ALLOWED, "run.json")
    except ConfigError as err:
        assert "it is not imported" in str(err) and "\n" not in str(err)
    else:
        assert found is DigitsDataModule and path.rpartition(".")[2] == "DigitsDataModule"
        assert path.startswith("reaf_lightning.data.")
    assert set(sys.modules) == before


def test_an_allowed_class_path_imports_the_allow_lists_own_path():
    """A file's path is only matched: the class comes from the allow-list's path, so a file
    naming a module of the package that does not exist imports nothing of the file's text."""
    import sys

    from reaf_lightning.data import DigitsDataModule

    for recorded in ("reaf_lightning.data.digits.DigitsDataModule",
                     "reaf_lightning.data.not_a_module.DigitsDataModule"):  # fmt: skip
        assert import_class(recorded, "data module", ALLOWED, "run.json") is DigitsDataModule
    assert "reaf_lightning.data.not_a_module" not in sys.modules
    # a class the user names is imported as asked, or one line says why not
    assert (
        import_class("collections.OrderedDict", "data module")
        is __import__("collections").OrderedDict
    )
    with pytest.raises(
        ConfigError, match="cannot import the data module 'nowhere.Data': No module"
    ):
        import_class("nowhere.Data", "data module")


# -- writing ----------------------------------------------------------------------------------
@pytest.mark.parametrize("stem", ["", ".", "..", "../x", "a/b", "/abs", "x\0y"])
def test_a_stem_cannot_leave_its_directory(stem):
    with pytest.raises(ConfigError, match="plain file-name prefix"):
        check_stem(stem)


def test_check_stem_accepts_plain_names():
    assert check_stem("figure2.v1") == "figure2.v1"


def test_outputs_refuse_fifo_directory_device_and_symlink(tmp_path):
    fifo = tmp_path / "out.csv"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match=r"out.csv is a FIFO \(named pipe\)"):
        check_outputs([fifo])
    with pytest.raises(OutputError, match="is a directory"):
        check_outputs([tmp_path])
    with pytest.raises(OutputError, match="is a character device"):
        check_outputs(["/dev/null"])
    target = tmp_path / "target.csv"
    target.write_text("keep\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    with pytest.raises(OutputError, match="is a symbolic link"):
        with atomic_outputs([link]) as (temp,):
            temp.write_text("new\n")
    assert link.is_symlink() and target.read_text() == "keep\n"


def test_outputs_never_overwrite_an_input_or_each_other(tmp_path):
    source = tmp_path / "metrics.json"
    source.write_text("{}")
    with pytest.raises(OutputError, match="is the input .*metrics.json of this command"):
        check_outputs([tmp_path / "." / "metrics.json"], inputs=[source])
    hard = tmp_path / "hard.csv"
    os.link(source, hard)
    with pytest.raises(OutputError, match="is the input"):
        check_outputs([hard], inputs=[source])
    with pytest.raises(OutputError, match="are the same file"):
        check_outputs([tmp_path / "t.csv", tmp_path / "sub" / ".." / "t.csv"])
    assert source.read_text() == "{}"


def test_atomic_outputs_restores_every_file_when_a_rename_fails(tmp_path, monkeypatch):
    a, b = tmp_path / "a.csv", tmp_path / "b.png"
    a.write_text("old a\n")
    b.write_text("old b\n")
    real_replace = os.replace
    calls = []

    def replace_then_fail(src, dst):  # the second output's rename fails (a full disk)
        calls.append(dst)
        if Path(dst) == b:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_fail)
    with pytest.raises(OutputError, match="no space left on device"):
        with atomic_outputs([a, b]) as (ta, tb):
            ta.write_text("new a\n")
            tb.write_text("new b\n")
    monkeypatch.setattr(os, "replace", real_replace)
    assert a.read_text() == "old a\n" and b.read_text() == "old b\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.png"]


def test_atomic_outputs_failed_body_leaves_old_files_and_no_new_ones(tmp_path):
    old, new = tmp_path / "old.csv", tmp_path / "new.pdf"
    old.write_text("old\n")
    with pytest.raises(OutputError, match="old.csv: no space left on device"):
        with atomic_outputs([old, new]) as (t_old, t_new):
            t_old.write_text("replaced\n")
            raise OSError(errno.ENOSPC, "disk full")
    assert old.read_text() == "old\n" and not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.csv"]
