"""``scripts/selectivity_study.py``, the documented study, on a tiny setting.

Two seeds of one epoch of two batches instead of ten seeds of four epochs: the same
script, commands and files, run as a user runs it; then run again, when every run is
finished and kept.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from helpers import REPO

from reaf_lightning.runs.record import read_record

SCRIPT = REPO / "scripts" / "selectivity_study.py"


def _study(tmp_path) -> subprocess.CompletedProcess:
    args = [sys.executable, str(SCRIPT), "--seeds", "2", "--epochs", "1",
            "--train_batches", "2", "--val_batches", "2", "--root", str(tmp_path / "logs"),
            "--output_dir", str(tmp_path / "out"),
            "--figure", str(tmp_path / "figure.png")]  # fmt: skip
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.slow
def test_the_study_trains_both_networks_per_seed_then_reports_and_compares(tmp_path):
    first = _study(tmp_path)
    runs = {f"{name}/seed{seed}": tmp_path / "logs" / name / f"seed{seed}"
            for name in ("quickstart_baseline", "quickstart") for seed in (0, 1)}  # fmt: skip
    for run in runs.values():
        record = read_record(run / "metrics.json")
        assert record.finished and record.epochs.reached == 1
        epochs = pd.read_csv(run / "selectivity.csv").epoch  # the callback, every epoch
        assert set(epochs) == {0}
    assert record.network.arch == "reaf_resnet18" and record.seed == 1
    out = tmp_path / "out"
    report = (out / "report.md").read_text()
    assert "| quickstart | 2 |" in report and "| quickstart_baseline | 2 |" in report
    seeds = pd.read_csv(out / "study_seeds.csv", keep_default_na=False)
    assert set(seeds.model) == {"ResNet18", "REAF-ResNet18"} and set(seeds.runs) == {2}
    difference = pd.read_csv(out / "study_difference.csv", keep_default_na=False)
    assert set(difference.model_b) == {"REAF-ResNet18"} and difference.ci_low.notna().all()
    assert (tmp_path / "figure.png").read_bytes() == (out / "study.png").read_bytes()
    timing = json.loads((out / "timing.json").read_text())
    assert sorted(timing["fits_s"]) == sorted(runs) and timing["seeds"] == 2
    assert "REAF-ResNet18 minus ResNet18 over seeds" in first.stdout
    # the callback's record, over the seeds: recomputed from the runs' own files
    epochs = pd.read_csv(out / "by_epoch.csv")
    row = epochs[(epochs.model == "ResNet18") & (epochs.layer == "layer4")].iloc[0]
    per_run = [pd.read_csv(runs[f"quickstart_baseline/seed{s}"] / "selectivity.csv")
               for s in (0, 1)]  # fmt: skip
    means = [t[t.layer == "layer4"].si.mean() for t in per_run]
    assert row.seeds == 2 and row["mean"] == pytest.approx(sum(means) / 2, rel=1e-5)

    before = {name: (run / "checkpoints" / "last.ckpt").stat().st_mtime_ns
              for name, run in runs.items()}  # fmt: skip
    again = _study(tmp_path)  # finished runs are kept: only the report and analysis are redone
    assert again.stdout.count("finished, kept") == 4
    after = {name: (run / "checkpoints" / "last.ckpt").stat().st_mtime_ns
             for name, run in runs.items()}  # fmt: skip
    assert after == before
    assert json.loads((out / "timing.json").read_text())["fits_s"] == timing["fits_s"]


def test_one_seed_is_refused_it_has_no_spread(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--seeds", "1", "--root",
                             str(tmp_path / "logs")], capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 2 and "--seeds must be at least 2" in result.stderr
    assert list(tmp_path.iterdir()) == []
