"""``metrics.json`` and ``reaf-report`` on real tiny runs trained with the CLI.

Five runs are trained once per session through ``reaf_lightning.training.cli`` (the quick
start narrowed to a tiny network, 2 epochs of 2 batches): three seeds of a
plain network filed as Table 3's ``resnet50`` row and two seeds of a REAF
network filed as its ``reaf_resnet50_c72_72_4-3-4`` row. The REAF runs log to
a CSV logger, which is the independent record the metrics file is checked
against; the plain runs train with ``--trainer.logger false``. The report's
mean ± std is recomputed here from the metrics files with :mod:`statistics`.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import scipy.stats
import yaml
from helpers import REPO

from reaf_lightning.models import create_model
from reaf_lightning.models.complexity import count_macs, count_parameters
from reaf_lightning.paper.tables import paper_rows
from reaf_lightning.report.cli import main as report_main
from reaf_lightning.runs.find import experiment_of
from reaf_lightning.runs.layout import LOCK, LOCK_HOLDER
from reaf_lightning.training.cli import run

QUICKSTART = str(REPO / "configs" / "quickstart.yaml")
PLAIN, REAF = "table3/resnet50", "table3/reaf_resnet50_c72_72_4-3-4"
SEEDS = {PLAIN: (0, 1, 2), REAF: (0, 1)}
ARCH = {PLAIN: "test_resnet", REAF: "test_reaf_resnet"}
TINY = {
    "trainer": {
        "max_epochs": 2,
        "limit_train_batches": 2,
        "limit_val_batches": 2,
        "log_every_n_steps": 1,
        "num_sanity_val_steps": 0,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    },
    "model": {"arch_kwargs": {}},
    "data": {"init_args": {"batch_size": 16, "image_size": 8}},
}


def _overlay(path: Path, experiment: str, logger: object) -> Path:
    content = json.loads(json.dumps(TINY))
    content["model"]["arch"] = ARCH[experiment]
    content["trainer"]["logger"] = logger
    path.write_text(yaml.safe_dump(content))
    return path


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> Path:
    """``<root>/logs`` holding the five runs; returns ``<root>``."""
    root = tmp_path_factory.mktemp("report")
    for experiment, seeds in SEEDS.items():
        for seed in seeds:
            run_dir = root / "logs" / experiment / f"seed{seed}"
            logger = False
            if experiment == REAF:
                logger = {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": str(run_dir), "name": "csv", "version": 0},
                }
            overlay = _overlay(root / f"tiny_{seed}_{ARCH[experiment]}.yaml", experiment, logger)
            run(
                ["fit", "--config", QUICKSTART, "--config", str(overlay)]
                + ["--seed_everything", str(seed), "--trainer.default_root_dir", str(run_dir)]
            )
    return root


def _metrics_files(logs: Path, experiment: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((logs / experiment).rglob("metrics.json"))]


def _report(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        report_main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


# -- metrics.json -----------------------------------------------------------------------------
def test_metrics_file_holds_final_and_best_as_logged(tiny_runs):
    for seed in SEEDS[REAF]:
        run_dir = next((tiny_runs / "logs" / REAF).rglob(f"seed{seed}"))
        record = json.loads((run_dir / "metrics.json").read_text())
        logged = pd.read_csv(next(run_dir.rglob("metrics.csv")))
        val = logged.dropna(subset=["val/err1"]).sort_values("epoch")
        assert len(val) == 2  # one validation per epoch
        final, best = record["fit"]["final"], record["fit"]["best"]
        assert record["fit"]["epoch"] == val["epoch"].iloc[-1] == 1
        for name in ("val/acc1", "val/acc5", "val/err1", "val/err5", "val/loss"):
            assert final[name] == pytest.approx(val[name].iloc[-1], rel=1e-6)
            extreme = val[name].max() if "acc" in name else val[name].min()
            assert best[name] == pytest.approx(extreme, rel=1e-6)
        assert record["seed"] == seed
        assert record["network"]["arch"] == "test_reaf_resnet"
        assert record["data"]["class_path"].endswith("DigitsDataModule")
        # the data set as its module describes it: digits' 1797 images, 20% (360) held out
        data = {k: v for k, v in record["data"].items() if k not in ("class_path", "init_args")}
        mean, std = data.pop("mean"), data.pop("std")  # of the grey training images
        assert len(set(mean)) == len(set(std)) == 1 and 0 < mean[0] < 1 and 0 < std[0] < 1
        assert data == {
            "dataset": "digits", "num_classes": 10, "image_size": 8, "augmentation": "none",
            "sizes": {"train": 1437, "val": 360, "test": 360},
            "classes": [str(digit) for digit in range(10)],
        }  # fmt: skip
        # what the last epoch fed: 2 batches of 16 (limit 2), the validation images in the
        # class-mixed order, whose first 32 hold every class (about 36 images of each)
        seen = record["fit"]["seen"]
        assert seen["val"] == {"limit": 2, "batches": 2, "images": 32, "classes": 10}
        assert {k: seen["train"][k] for k in ("limit", "batches", "images")} == {
            "limit": 2, "batches": 2, "images": 32,
        }  # fmt: skip
        assert record["epochs"] == {"planned": 2, "reached": 2} and record["finished"]
        net = create_model("test_reaf_resnet", num_classes=10)
        assert record["params_m"] == pytest.approx(count_parameters(net) / 1e6, rel=1e-12)
        assert record["gmacs"] == pytest.approx(count_macs(net, (3, 8, 8)) / 1e9, rel=1e-12)


def test_runs_without_a_logger_still_leave_their_metrics(tiny_runs):
    records = _metrics_files(tiny_runs / "logs", PLAIN)
    assert sorted(r["seed"] for r in records) == list(SEEDS[PLAIN])
    for record in records:
        final = record["fit"]["final"]
        assert final["val/err1"] == pytest.approx(1 - final["val/acc1"], abs=1e-6)
        assert record["fit"]["best"]["val/err1"] <= final["val/err1"]
    assert not list((tiny_runs / "logs" / PLAIN).rglob("wandb"))


def test_validate_and_test_update_only_their_own_key(tiny_runs, tmp_path):
    source = next((tiny_runs / "logs" / PLAIN).rglob("seed0"))
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    before = json.loads((run_dir / "metrics.json").read_text())
    overlay = _overlay(tmp_path / "tiny.yaml", PLAIN, False)
    for stage, split in (("validate", "val"), ("test", "test")):
        cli = run(
            [stage, "--config", QUICKSTART, "--config", str(overlay), "--seed_everything", "false"]
            + ["--trainer.default_root_dir", str(run_dir)]
            + ["--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")]
        )
        record = json.loads((run_dir / "metrics.json").read_text())
        logged = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
        assert record[stage]["final"] == pytest.approx(
            {k: v for k, v in logged.items() if k.startswith(f"{split}/")}
        )
        assert record["fit"] == before["fit"] and record["seed"] == before["seed"] == 0


# -- grouping ---------------------------------------------------------------------------------
def test_experiment_is_the_run_dir_without_its_seed(tmp_path):
    logs = tmp_path / "logs"
    assert experiment_of(logs / "table3" / "resnet50" / "seed3", logs)[0] == "table3/resnet50"
    assert experiment_of(logs / "a" / "seed1" / "seed1", logs)[0] == "a"
    assert experiment_of(logs / "quickstart", logs)[0] == "quickstart"
    assert experiment_of(logs / "seed7x", logs)[0] == "seed7x"


# -- reaf-report ------------------------------------------------------------------------------
def _expected(records: list[dict], kind: str, metric: str) -> tuple[float, float | None]:
    values = [100 * r["fit"][kind][metric] for r in records]
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def test_report_recomputes_mean_and_std_over_seeds(tiny_runs, tmp_path, capsys):
    extra = tmp_path / "extra"  # a second log root, with a run that matches no paper row
    shutil.copytree(next((tiny_runs / "logs" / PLAIN).rglob("seed1")), extra / "mine" / "seed1")
    out_csv, out_tex = tmp_path / "out" / "report.csv", tmp_path / "out" / "report.tex"
    code, stdout, stderr = _report(
        capsys,
        "--log_roots",
        json.dumps([str(tiny_runs / "logs"), str(extra)]),
        "--csv",
        str(out_csv),
        "--latex",
        str(out_tex),
    )
    assert code == 0, stderr
    rows = {r["experiment"]: r for r in csv.DictReader(out_csv.open())}
    for experiment in (PLAIN, REAF):
        records = _metrics_files(tiny_runs / "logs", experiment)
        row = rows[experiment]
        assert int(row["n_seeds"]) == len(SEEDS[experiment])
        for column, (kind, metric) in {
            "top1_err": ("final", "val/err1"),
            "top5_err": ("final", "val/err5"),
            "best_top1_err": ("best", "val/err1"),
        }.items():
            mean, std = _expected(records, kind, metric)
            assert float(row[f"{column}_mean"]) == pytest.approx(mean, rel=1e-9)
            assert float(row[f"{column}_std"]) == pytest.approx(std, rel=1e-9)
            values = [100 * r["fit"][kind][metric] for r in records]
            low, high = scipy.stats.ttest_1samp(values, 0.0).confidence_interval(0.95)
            assert float(row[f"{column}_ci_low"]) == pytest.approx(low, rel=1e-9)
            assert float(row[f"{column}_ci_high"]) == pytest.approx(high, rel=1e-9)
        # digits runs in a Table 3 row's folder are not that row: listed apart, every
        # difference from the row's recipe named
        assert row["table"] == "other" and row["paper_top1_err"] == ""
        assert row["diff_note"].startswith(f"not the paper's {experiment}: network test_")
        for part in (
            "trained on digits (DigitsDataModule), the paper on cifar100",
            "10 classes, the paper's 100",
            "2 epochs planned, the paper trains 200",
            "trained on 32 of 1437 training images per epoch (limit_train_batches=2)",
            "validated on 32 of 360 validation images (limit_val_batches=2)",
        ):
            assert part in row["diff_note"], part  # fmt: skip
    assert not [r for r in rows.values() if r["table"] == "table3"]
    # the run that matches no row: reported, one seed, std and interval undefined (empty)
    mine = rows["mine"]
    assert mine["table"] == "other" and mine["n_seeds"] == "1" and mine["top1_err_std"] == ""
    assert mine["paper_top1_err"] == "" and mine["top1_err_ci_low"] == ""
    # Markdown on stdout, LaTeX in the file
    assert "### Table 3" not in stdout
    assert "Other runs (no row of the tables shown)" in stdout and "| mine | 1 |" in stdout
    mean, std = _expected(_metrics_files(tiny_runs / "logs", PLAIN), "final", "val/err1")
    assert f"| {PLAIN} | 3 | {mean:.2f} ± {std:.2f} |" in stdout
    assert "Student t interval of the mean over seeds" in stdout
    tex = out_tex.read_text()
    assert tex.count(r"\begin{tabular}") == 1 and r"$\pm$" in tex


def test_report_chosen_tables_list_rows_without_runs(tiny_runs, capsys):
    code, stdout, _ = _report(
        capsys, "--log_roots", json.dumps([str(tiny_runs / "logs")]), "--tables", "[table4]"
    )
    assert code == 0
    assert "### Table 4" in stdout and "### Table 3" not in stdout
    table4 = [r for r in paper_rows("table4")]
    assert stdout.count("| missing |") == len(table4)
    assert "| table3/resnet50 | 3 |" in stdout  # the Table 3 runs are not dropped


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--log_roots", "[nowhere]"], "log root nowhere does not exist"),
        (["--log_roots", "[empty]"], "no finished runs"),
        (["--tables", "[table9]"], "unknown table 'table9'"),
        (["--csv", "blocker/report.csv"], "blocker"),
        (["--log_root", "logs"], "log_root"),
    ],
)
def test_report_user_errors_are_one_line(tiny_runs, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "blocker").write_text("a file where a directory should be")
    shutil.copytree(tiny_runs / "logs", tmp_path / "logs")
    code, stdout, stderr = _report(capsys, *args)
    assert code == 2 and stdout == ""
    assert stderr.startswith("reaf-report: error: ") and message in stderr
    assert stderr.count("\n") == 1


def test_unfinished_runs_are_listed_apart(tiny_runs, tmp_path, capsys):
    logs = tmp_path / "logs"
    shutil.copytree(tiny_runs / "logs" / PLAIN, logs / "a")
    (logs / "b" / "seed0").mkdir(parents=True)
    (logs / "b" / "seed0" / "metrics.json").write_text('{"seed": 0, "validate": {}}')
    code, stdout, stderr = _report(capsys, "--log_roots", json.dumps([str(logs)]))
    assert code == 0
    assert "| a | 3 |" in stdout
    assert f"### Unfinished runs (not averaged)\n\n* {logs / 'b' / 'seed0'} (seed0)" in stdout


@pytest.mark.slow
def test_report_figure_is_an_ieee_column_png_and_pdf(tiny_runs, tmp_path, capsys):
    import matplotlib.image

    stem = tmp_path / "fig" / "table3"
    code, _, stderr = _report(
        capsys, "--log_roots", json.dumps([str(tiny_runs / "logs")]), "--figure", str(stem)
    )
    assert code == 0, stderr
    png = matplotlib.image.imread(stem.with_suffix(".png"))
    assert png.shape[1] == round(3.5 * 300)  # one IEEE column at 300 dpi
    pdf = stem.with_suffix(".pdf").read_bytes()
    assert b"/FontFile2" in pdf and b"/Type3" not in pdf  # TrueType fonts (pdf.fonttype 42)


@pytest.mark.slow
def test_resumed_fit_keeps_the_best_of_earlier_epochs(tmp_path):
    run_dir = tmp_path / "logs" / "resume"
    csv_logger = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(run_dir), "name": "csv"},  # version_0, then version_1
    }
    overlay = _overlay(tmp_path / "tiny.yaml", REAF, csv_logger)
    args = ["fit", "--config", QUICKSTART, "--config", str(overlay), "--seed_everything", "0"]
    args += ["--trainer.default_root_dir", str(run_dir)]
    run([*args, "--trainer.max_epochs", "2"])
    cli = run([*args, "--trainer.max_epochs", "4", "--ckpt_path", "last"])
    record = json.loads((Path(cli.trainer.default_root_dir) / "metrics.json").read_text())
    logged = pd.concat(pd.read_csv(p) for p in sorted(run_dir.rglob("metrics.csv")))
    val = logged.dropna(subset=["val/err1"])
    assert sorted(val["epoch"]) == [0, 1, 2, 3]
    assert record["fit"]["epoch"] == 3
    for name, value in record["fit"]["best"].items():
        assert value == pytest.approx(val[name].max() if "acc" in name else val[name].min())


@pytest.mark.slow
def test_metrics_file_under_ddp_holds_the_synchronised_metrics(tmp_path, monkeypatch):
    """Two gloo processes: one file, by rank 0, with the metrics over both ranks' images."""
    overlay = _overlay(tmp_path / "tiny.yaml", REAF, False)
    run_dir = tmp_path / "logs" / "ddp"
    common = ["--config", QUICKSTART, "--config", str(overlay), "--seed_everything", "0"]
    common += ["--trainer.default_root_dir", str(run_dir)]
    env = {k: v for k, v in os.environ.items() if k != "REAF_DEBUG"}
    ddp = [sys.executable, "-m", "reaf_lightning.training.cli", "fit", *common]
    ddp += [
        "--trainer.strategy",
        "ddp",
        "--trainer.devices",
        "2",
        "--data.init_args.batch_size",
        "8",
    ]
    done = subprocess.run(ddp, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = run_dir.rglob("metrics.json")
    hidden = {p.name for p in path.parent.iterdir() if p.name.startswith(".")}
    assert hidden <= {LOCK, LOCK_HOLDER}  # the run's lock files, no leftover temporaries
    final = json.loads(path.read_text())["fit"]["final"]
    # the same 32 validation images (2 ranks x 2 batches x 8) in one process: 2 batches of 16
    monkeypatch.chdir(tmp_path)
    single = run(
        ["validate", *common[:4], "--seed_everything", "false", "--data.init_args.batch_size"]
        + ["16", "--trainer.default_root_dir", str(tmp_path / "single")]
        + ["--ckpt_path", str(path.parent / "checkpoints" / "last.ckpt")]
    )
    for name in ("val/acc1", "val/acc5", "val/err1", "val/loss"):
        expected = float(single.trainer.callback_metrics[name])
        assert final[name] == pytest.approx(expected, rel=1e-5, abs=1e-6), name
