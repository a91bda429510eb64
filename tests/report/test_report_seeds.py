"""``reaf-report`` keeps apart what differs, names every difference, and compares over seeds.

Each case writes complete run records by hand (:func:`helpers.run_records.record`, a
finished run of the paper's CIFAR-100 recipe) and changes exactly one thing in some of
them. The intervals are checked against SciPy's own t-tests (``ttest_1samp``,
``ttest_ind(equal_var=False)``), a computation independent of the package's.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable

import pytest
import scipy.stats
from helpers.run_records import CIFAR10, record, report, rows_of, write

REAF = "table3/reaf_resnet50_c72_72_4-3-4"


def _val_part(r: dict) -> None:
    r["fit"]["seen"]["val"].update(limit=2, batches=2, images=256)


def _train_part(r: dict) -> None:
    r["fit"]["seen"]["train"].update(limit=0.5, batches=196, images=25000)


def _precision(r: dict) -> None:
    r["precision"] = "bf16-mixed"


def _augmentation(r: dict) -> None:
    r["data"]["augmentation"] = "none"


def _image_size(r: dict) -> None:
    r["data"]["image_size"] = 24


def _split_sizes(r: dict) -> None:  # another copy of the data set: 45,000 training images
    r["data"]["sizes"]["train"] = r["fit"]["seen"]["train"]["images"] = 45000


def _global_batch(r: dict) -> None:
    r["recipe"].update(world_size=2, global_batch=256)


@pytest.mark.parametrize(
    ("change", "aspect"),
    [
        (_val_part, "validated on 256 of 10000 images in 2 batches (limit_val_batches=2), 100 of"),
        (_train_part, "trained on 25000 of 50000 images in 196 batches (limit_train_batches=0.5)"),
        (_precision, "precision bf16-mixed"),
        (_augmentation, "augmentation none"),
        (_image_size, "image size 24"),
        (_split_sizes, "data set cifar100 (100 classes; train 45000, val 10000, test 10000)"),
        (_global_batch, 'recipe {"global_batch":256,"lr":0.1,"momentum":0.9,"world_size":2}'),
    ],
)
def test_seeds_that_differ_in_one_recorded_thing_are_never_averaged(
    tmp_path, capsys, change: Callable[[dict], None], aspect: str
):
    logs = tmp_path / "logs"
    errors = {0: 0.20, 1: 0.22, 2: 0.90, 3: 0.70}
    for seed, err in errors.items():
        content = record(seed, err)
        if seed >= 2:
            change(content)
        write(logs, "mine", seed, content)
    out = tmp_path / "r.csv"
    code, stdout, stderr = report(capsys, "--log_roots", f"[{logs}]", "--csv", str(out))
    assert code == 0, stderr
    rows = rows_of(out)
    assert len(rows) == 2, list(rows)
    (changed,) = (r for r in rows.values() if r["seeds"] == "seed2 seed3")
    assert changed["row"].startswith("mine [") and aspect in changed["row"]
    assert float(changed["top1_err_mean"]) == pytest.approx(statistics.mean([90.0, 70.0]))
    (same,) = (r for r in rows.values() if r["seeds"] == "seed0 seed1")
    assert float(same["top1_err_mean"]) == pytest.approx(statistics.mean([20.0, 22.0]))
    assert "mine holds runs that trained different things" in stderr and aspect in stderr


def test_a_cifar10_run_in_a_table3_folder_is_listed_apart_with_every_difference(tmp_path, capsys):
    logs = tmp_path / "logs"
    write(logs, "table3/resnet50", 0, record(0, 0.10, data=CIFAR10, epochs=2))
    out = tmp_path / "r.csv"
    code, stdout, stderr = report(capsys, "--log_roots", f"[{logs}]", "--csv", str(out))
    assert code == 0, stderr
    assert "### Table 3" not in stdout  # no run of the paper's CIFAR-100 table
    row = rows_of(out)["table3/resnet50"]
    assert row["table"] == "other" and row["paper_top1_err"] == "" and row["n_seeds"] == "1"
    assert row["diff_note"] == (
        "not the paper's table3/resnet50: trained on cifar10 (CIFAR10DataModule), the paper on "
        "cifar100; 10 classes, the paper's 100; 2 epochs planned, the paper trains 200"
    )
    code, stdout, _ = report(capsys, "--log_roots", f"[{logs}]", "--tables", "[table3]")
    assert code == 0
    assert "| resnet50 | missing |" in stdout  # the paper's row stays without our run


def test_a_validation_that_missed_classes_is_flagged_and_never_compared(tmp_path, capsys):
    logs = tmp_path / "logs"
    content = record(0, 0.0)
    content["fit"]["seen"]["val"].update(limit=2, batches=2, images=256, classes=3)
    write(logs, "table3/resnet50", 0, content)
    out = tmp_path / "r.csv"
    code, stdout, stderr = report(capsys, "--log_roots", f"[{logs}]", "--csv", str(out))
    assert code == 0, stderr
    row = rows_of(out)["resnet50"]
    flags = (
        "validated on 256 of 10000 validation images (limit_val_batches=2); "
        "validated on 3 of 100 classes"
    )
    assert row["data_note"] == flags
    assert row["top1_err_diff"] == "" and row["diff_note"] == flags
    assert f"* resnet50: {flags}" in stdout


def _interval_rows(tmp_path, capsys, base: dict[int, float], reaf: dict[int, float], **kw):
    logs = tmp_path / "logs"
    for seed, err in base.items():
        write(logs, "table3/resnet50", seed, record(seed, err))
    for seed, err in reaf.items():
        write(logs, REAF, seed, record(seed, err, arch="reaf_resnet50", **kw))
    out = tmp_path / "r.csv"
    code, stdout, stderr = report(capsys, "--log_roots", f"[{logs}]", "--csv", str(out))
    assert code == 0, stderr
    return rows_of(out), stdout


def test_each_row_has_a_t_interval_and_a_reaf_row_its_welch_difference(tmp_path, capsys):
    base = {0: 0.2210, 1: 0.2245, 2: 0.2190}
    reaf = {0: 0.2150, 1: 0.2080, 2: 0.2120, 3: 0.2171}
    rows, stdout = _interval_rows(tmp_path, capsys, base, reaf)
    ours = {name: [100 * v for v in errs.values()] for name, errs in (("b", base), ("r", reaf))}
    for row, values in (
        (rows["resnet50"], ours["b"]),
        (rows["reaf_resnet50_c72_72_4-3-4"], ours["r"]),
    ):
        low, high = scipy.stats.ttest_1samp(values, 0.0).confidence_interval(0.95)
        assert float(row["top1_err_ci_low"]) == pytest.approx(low, rel=1e-9)
        assert float(row["top1_err_ci_high"]) == pytest.approx(high, rel=1e-9)
    row = rows["reaf_resnet50_c72_72_4-3-4"]
    welch = scipy.stats.ttest_ind(ours["r"], ours["b"], equal_var=False)
    low, high = welch.confidence_interval(0.95)
    diff = statistics.mean(ours["r"]) - statistics.mean(ours["b"])
    assert row["baseline"] == "resnet50"
    assert float(row["vs_baseline_top1_err"]) == pytest.approx(diff, rel=1e-9)
    assert float(row["vs_baseline_ci_low"]) == pytest.approx(low, rel=1e-9)
    assert float(row["vs_baseline_ci_high"]) == pytest.approx(high, rel=1e-9)
    assert rows["resnet50"]["vs_baseline_top1_err"] == ""  # the baseline itself
    assert f"| {diff:+.2f} [{low:+.2f}, {high:+.2f}] |" in stdout
    assert "Welch's t interval" in stdout and "Student t interval" in stdout


def test_one_seed_gives_no_interval(tmp_path, capsys):
    rows, stdout = _interval_rows(tmp_path, capsys, {0: 0.22}, {0: 0.21, 1: 0.20})
    assert rows["resnet50"]["top1_err_ci_low"] == ""
    row = rows["reaf_resnet50_c72_72_4-3-4"]
    assert float(row["vs_baseline_top1_err"]) == pytest.approx(20.5 - 22.0)
    assert row["vs_baseline_ci_low"] == row["vs_baseline_ci_high"] == ""
    assert "-1.50 (one seed: no interval)" in stdout


def test_a_baseline_trained_otherwise_is_not_subtracted(tmp_path, capsys):
    rows, stdout = _interval_rows(tmp_path, capsys, {0: 0.22, 1: 0.23}, {0: 0.21}, epochs=100)
    row = rows["reaf_resnet50_c72_72_4-3-4"]
    assert row["vs_baseline_top1_err"] == ""
    assert row["vs_baseline_note"] == (
        "table3/resnet50 trained otherwise (epochs planned, epochs trained)"
    )


def test_names_with_a_bar_a_newline_or_latex_specials_keep_the_tables_whole(tmp_path, capsys):
    logs = tmp_path / "logs"
    names = ["a|b", "c\nd", "e#_$%{x}"]
    for name in names:
        write(logs, name, 0, record(0, 0.25))
    tex = tmp_path / "r.tex"
    code, stdout, stderr = report(capsys, "--log_roots", f"[{logs}]", "--latex", str(tex))
    assert code == 0, stderr
    table = [line for line in stdout.splitlines() if line.startswith("| ")]
    columns = table[0].count("|")
    for line in table:  # every row has the header's columns: no bar breaks out of a cell
        assert line.replace("\\|", "").count("|") == columns, line
    assert "| a\\|b | 1 |" in stdout and "| c\\nd | 1 |" in stdout
    rows = [line for line in tex.read_text().splitlines() if line.endswith(r"\\")]
    assert any(line.startswith(r"e\#\_\$\%\{x\} & 1 &") for line in rows), rows
    assert any(line.startswith(r"c\textbackslash{}nd & 1 &") for line in rows), rows


@pytest.mark.parametrize("roots", ["[]", json.dumps([""])])
def test_log_roots_naming_no_directory_are_refused_in_one_line(tmp_path, capsys, roots):
    code, stdout, stderr = report(capsys, "--log_roots", roots)
    assert code == 2 and stdout == ""
    assert stderr.startswith("reaf-report: error: --log_roots ") and "names no directory" in stderr
    assert stderr.count("\n") == 1
