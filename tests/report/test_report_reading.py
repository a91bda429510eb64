"""``reaf-report`` on crafted run folders: like with like, untrusted files, and its outputs.

Every metrics file here is written by hand (:func:`helpers.run_records.record`), so each case
is exactly the one named; the expected means are computed here with :mod:`statistics` from the
values written.
"""

from __future__ import annotations

import errno
import os
import statistics
from pathlib import Path

import pytest
from helpers.run_records import DIGITS, RESNET50, record, report, rows_of, write


# -- 19.2: like with like -----------------------------------------------------------------------
def test_a_run_of_another_network_in_a_rows_folder_is_never_averaged_in(tmp_path, capsys):
    logs = tmp_path / "logs"
    for seed, err in ((0, 0.22), (1, 0.23)):
        write(logs, "table3/resnet50", seed, record(seed, err))
    write(logs, "table3/resnet50", 2, record(2, 0.30, arch="reaf_resnet18"))
    out = tmp_path / "r.csv"
    code, stdout, stderr = report(capsys, "--log_roots", f"[{logs}]", "--csv", str(out))
    assert code == 0, stderr
    rows = rows_of(out)
    same = rows["resnet50 [network resnet50]"]
    assert same["n_seeds"] == "2" and same["seeds"] == "seed0 seed1"
    assert float(same["top1_err_mean"]) == pytest.approx(statistics.mean([22.0, 23.0]))
    assert float(same["top1_err_diff"]) == pytest.approx(22.5 - RESNET50.paper["top1_err"])
    other = rows["resnet50 [network reaf_resnet18]"]
    assert other["n_seeds"] == "1" and float(other["top1_err_mean"]) == pytest.approx(30.0)
    assert other["top1_err_diff"] == "" and "network reaf_resnet18" in other["diff_note"]
    assert "table3/resnet50 holds runs that trained different things" in stderr
    assert "seed2" in stderr.split("different things")[1]


def test_runs_planned_for_different_epochs_are_separate_rows(tmp_path, capsys):
    logs = tmp_path / "logs"
    write(logs, "mine", 0, record(0, 0.4, epochs=3, data=DIGITS))
    write(logs, "mine", 1, record(1, 0.5, epochs=2, data=DIGITS))
    out = tmp_path / "r.csv"
    code, _, stderr = report(capsys, "--log_roots", f"[{logs}]", "--csv", str(out))
    assert code == 0, stderr
    rows = rows_of(out)
    assert rows["mine [epochs planned 3; epochs trained 3]"]["n_seeds"] == "1"
    assert rows["mine [epochs planned 2; epochs trained 2]"]["n_seeds"] == "1"


def test_finished_runs_that_trained_different_epochs_are_separate_rows(tmp_path, capsys):
    """A fit stopped by its own rule (early stopping, max_steps) finishes with fewer epochs."""
    logs = tmp_path / "logs"
    write(logs, "mine", 0, record(0, 0.4, epochs=3))
    write(logs, "mine", 1, record(1, 0.5, epochs=3, reached=2))
    out = tmp_path / "r.csv"
    assert report(capsys, "--log_roots", f"[{logs}]", "--csv", str(out))[0] == 0
    rows = rows_of(out)
    assert rows["mine [epochs trained 3]"]["n_seeds"] == "1"
    assert rows["mine [epochs trained 2]"]["n_seeds"] == "1"


def test_only_the_data_root_and_workers_may_differ_within_a_group(tmp_path, capsys):
    logs = tmp_path / "logs"
    write(logs, "mine", 0, record(0, 0.4, root="/a"))
    write(logs, "mine", 1, record(1, 0.5, root="/b"))
    out = tmp_path / "r.csv"
    assert report(capsys, "--log_roots", f"[{logs}]", "--csv", str(out))[0] == 0
    assert rows_of(out)["mine"]["n_seeds"] == "2"


@pytest.mark.parametrize(
    "bad, reason",
    [
        (None, "no val/err1 (no validation?)"),
        (float("nan"), "val/err1 was not finite"),
    ],
)
def test_a_seed_without_a_usable_value_is_listed_as_missing_not_counted(
    tmp_path, capsys, bad, reason
):
    logs = tmp_path / "logs"
    write(logs, "mine", 0, record(0, 0.20))
    write(logs, "mine", 1, record(1, 0.30))
    write(logs, "mine", 2, record(2, bad))
    out = tmp_path / "r.csv"
    code, stdout, stderr = report(capsys, "--log_roots", f"[{logs}]", "--csv", str(out))
    assert code == 0, stderr
    row = rows_of(out)["mine"]
    assert row["n_seeds"] == "2" and row["seeds"] == "seed0 seed1"
    assert float(row["top1_err_mean"]) == pytest.approx(25.0)
    assert float(row["top1_err_std"]) == pytest.approx(statistics.stdev([20.0, 30.0]))
    assert row["missing"] == f"seed2: {reason}"
    assert f"* mine: not counted: seed2: {reason}" in stdout


def test_unfinished_runs_are_listed_apart_and_not_averaged(tmp_path, capsys):
    logs = tmp_path / "logs"
    write(logs, "mine", 0, record(0, 0.20))
    write(logs, "mine", 1, record(1, 0.90, reached=3, finished=False))
    out = tmp_path / "r.csv"
    code, stdout, _ = report(capsys, "--log_roots", f"[{logs}]", "--csv", str(out))
    assert code == 0
    row = rows_of(out)["mine"]
    assert row["n_seeds"] == "1" and float(row["top1_err_mean"]) == pytest.approx(20.0)
    assert "### Unfinished runs (not averaged)" in stdout
    assert f"* {logs / 'mine' / 'seed1'} (seed1): 3 of 200 epochs" in stdout


@pytest.mark.parametrize(
    "kwargs, why",
    [
        ({"epochs": 2}, "2 epochs planned, the paper trains 200"),
        ({"reached": 150}, "150 of the paper's 200 epochs trained"),
    ],
)
def test_no_difference_to_the_paper_unless_its_recipe_was_trained(tmp_path, capsys, kwargs, why):
    logs = tmp_path / "logs"
    write(logs, "table3/resnet50", 0, record(0, 0.02, **kwargs))
    out = tmp_path / "r.csv"
    code, stdout, _ = report(capsys, "--log_roots", f"[{logs}]", "--csv", str(out))
    assert code == 0
    row = rows_of(out)["resnet50"]
    assert row["top1_err_diff"] == "" and row["diff_note"] == why
    assert row["paper_top1_err"] == str(RESNET50.paper["top1_err"])  # the paper's number stays
    assert f"n/a ({why})" in stdout


# -- 19.3: every input file is untrusted --------------------------------------------------------
def _malformed(logs: Path) -> dict[str, str]:
    """One malformed metrics.json per case; returns experiment -> what its line must say."""
    cases = {
        "list": ("[1, 2]", "must be a JSON object, not a list"),
        "string": ('"fit"', "must be a JSON object, not a string"),
        "boolean": ("true", "must be a JSON object, not a boolean"),
        "seed_text": ('{"format": "reaf-run/1", "seed": "zero"}', "seed: Input should be"),
        "metric_bool": ('{"fit": {"final": {"val/err1": true}}}', "fit.final.val/err1"),
        "fit_list": ('{"format": "reaf-run/1", "fit": [1]}', "fit: Input should be"),
        "old_seed": ('{"seed": [0], "fit": {"final": {"val/err1": 0.2}}}', "seed: Input"),
        "no_record": ('{"seed": 0, "arch": "resnet50"}', "arch: Extra inputs are not permitted"),
        "deep": ("[" * 100_000 + "]" * 100_000, "nested deeper than 32 levels"),
        "deep_record": (
            '{"format": "reaf-run/1", "recipe": {"a": ' + "[" * 40 + "]" * 40 + "}}",
            "nested deeper than 32 levels",
        ),
        "not_json": ("{", "is not valid JSON"),
        # impossible values: refused by the record's schema, never averaged or shown
        "error_150": ('{"fit": {"final": {"val/err1": 1.5}}}', "val/err1 = 1.5 is not a fraction"),
        "error_neg": ('{"fit": {"final": {"val/err1": -0.1}}}', "val/err1 = -0.1 is not a"),
        "epochs_neg": ('{"format": "reaf-run/1", "epochs": {"reached": -2}}', "epochs.reached"),
        "gmacs_309": ('{"format": "reaf-run/1", "gmacs": 1' + "0" * 308 + "}", "gmacs: Input"),
        "twice": ('{"format": "reaf-run/1", "seed": 0, "seed": 1}', "key 'seed' is given twice"),
        "latin1": (b'{"arch": "\xe9"}', "is not UTF-8 text"),
    }
    expected = {}
    for name, (content, line) in cases.items():
        write(logs, name, 0, content)
        expected[name] = line
    fifo = logs / "fifo" / "seed0" / "metrics.json"
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    expected["fifo"] = "is a FIFO (named pipe), not a regular file"
    zero = logs / "zero" / "seed0" / "metrics.json"
    zero.parent.mkdir(parents=True)
    zero.symlink_to("/dev/zero")
    expected["zero"] = "is a character device, not a regular file"
    huge = write(logs, "huge", 0, "")
    with open(huge, "wb") as handle:
        handle.truncate(1 << 34)  # sparse: 16 GiB on paper
    expected["huge"] = "has 17,179,869,184 bytes, more than the 1,048,576 expected"
    return expected


def test_malformed_metrics_files_give_one_line_each_and_good_runs_are_reported(tmp_path, capsys):
    logs = tmp_path / "logs"
    expected = _malformed(logs)
    odd = os.fsencode(logs) + b"/odd\xff/seed0"  # a directory name that is not UTF-8
    os.makedirs(odd)
    with open(odd + b"/metrics.json", "w") as handle:
        handle.write("{")
    write(logs, "good", 0, record(0, 0.25))
    out = tmp_path / "r.csv"
    code, stdout, stderr = report(capsys, "--log_roots", f"[{logs}]", "--csv", str(out))
    assert code == 0, stderr
    assert rows_of(out)["good"]["n_seeds"] == "1" and "| good | 1 |" in stdout
    lines = stderr.splitlines()
    for name, message in expected.items():
        mine = [line for line in lines if f"/{name}/seed0/metrics.json" in line]
        assert len(mine) == 1 and message in mine[0], (name, mine)
        assert mine[0].startswith("reaf-report: skipped ")
    assert any("odd\\xff/seed0/metrics.json" in line for line in lines)
    assert "Traceback" not in stderr


# -- 19.4: outputs --------------------------------------------------------------------------------
@pytest.fixture
def logs(tmp_path) -> Path:
    root = tmp_path / "logs"
    write(root, "mine", 0, record(0, 0.25))
    return root


def _refused(capsys, logs: Path, *args: str, message: str) -> None:
    code, stdout, stderr = report(capsys, "--log_roots", f"[{logs}]", *args)
    assert code == 2 and stdout == "", stderr
    assert stderr.startswith("reaf-report: error: ") and stderr.count("\n") == 1
    assert message in stderr, stderr


def test_csv_onto_a_fifo_device_directory_or_link_is_refused(tmp_path, logs, capsys):
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    _refused(capsys, logs, "--csv", str(fifo), message="is a FIFO")
    _refused(capsys, logs, "--csv", "/dev/null", message="/dev/null is a character device")
    _refused(capsys, logs, "--csv", str(tmp_path), message="is a directory")
    target = tmp_path / "target.csv"
    target.write_text("mine\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    _refused(capsys, logs, "--csv", str(link), message="is a symbolic link")
    assert target.read_text() == "mine\n" and link.is_symlink()
    assert fifo.exists() and not fifo.is_file()


def test_an_output_onto_a_runs_metrics_file_is_refused_and_the_file_kept(tmp_path, logs, capsys):
    metrics = logs / "mine" / "seed0" / "metrics.json"
    before = metrics.read_bytes()
    _refused(capsys, logs, "--csv", str(metrics), message="is the input")
    _refused(capsys, logs, "--latex", str(metrics), message="is the input")
    assert metrics.read_bytes() == before


def test_two_outputs_on_one_path_are_refused(tmp_path, logs, capsys):
    same = tmp_path / "out.txt"
    _refused(capsys, logs, "--csv", str(same), "--latex", str(same), message="are the same file")
    _refused(
        capsys, logs, "--csv", str(tmp_path / "fig.png"), "--figure", str(tmp_path / "fig"),
        message="are the same file",
    )  # fmt: skip
    assert not same.exists()


def test_a_failing_figure_leaves_every_old_output(tmp_path, logs, capsys, monkeypatch):
    """A full disk while the figure is saved: the CSV and LaTeX written before it are not kept."""
    import reaf_lightning.report.figure as figure

    out = tmp_path / "out"
    out.mkdir()
    for name in ("r.csv", "r.tex", "fig.png", "fig.pdf"):
        (out / name).write_text(f"old {name}\n")

    def full_disk(frame, temporaries):
        temporaries["png"].write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(figure, "save_table3_figure", full_disk)
    code, _, stderr = report(
        capsys, "--log_roots", f"[{logs}]", "--csv", str(out / "r.csv"),
        "--latex", str(out / "r.tex"), "--figure", str(out / "fig"),
    )  # fmt: skip
    assert code == 2 and "no space left on device" in stderr
    assert sorted(p.name for p in out.iterdir()) == ["fig.pdf", "fig.png", "r.csv", "r.tex"]
    for path in out.iterdir():
        assert path.read_text() == f"old {path.name}\n"


# -- 19.6: configuration files -----------------------------------------------------------------
def test_report_config_refuses_duplicate_keys_and_accepts_merge_keys(tmp_path, logs, capsys):
    dup = tmp_path / "dup.yaml"
    dup.write_text(f"log_roots: [{logs}]\ntables: null\nlog_roots: [elsewhere]\n")
    code, _, stderr = report(capsys, "--config", str(dup))
    assert code == 2 and "key 'log_roots' is given twice (lines 1 and 3)" in stderr
    merged = tmp_path / "merged.yaml"
    out = tmp_path / "m.csv"
    merged.write_text(f"<<: {{log_roots: [nowhere], csv: {out}}}\nlog_roots: [{logs}]\n")
    code, _, stderr = report(capsys, "--config", str(merged))
    assert code == 0, stderr
    assert rows_of(out)["mine"]["n_seeds"] == "1"
