"""Run records written by hand for the ``reaf-report`` tests, and the command run in-process.

:func:`record` is the ``metrics.json`` a finished run of the paper's CIFAR-100 recipe writes
(every image of both splits seen); a test changes exactly the one thing it is about.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from reaf_lightning.paper.tables import paper_rows
from reaf_lightning.report.cli import main as report_main

CIFAR = "reaf_lightning.data.CIFAR100DataModule"
CIFAR10 = "reaf_lightning.data.CIFAR10DataModule"
DIGITS = "reaf_lightning.data.DigitsDataModule"
RESNET50 = next(r for r in paper_rows("table3") if r.id == "resnet50")
#: What each data module records of its data set: name, classes and split sizes.
DATA_SETS = {
    CIFAR: ("cifar100", 100, {"train": 50000, "val": 10000, "test": 10000}),
    CIFAR10: ("cifar10", 10, {"train": 50000, "val": 10000, "test": 10000}),
    DIGITS: ("digits", 10, {"train": 1437, "val": 360, "test": 360}),
}


def record(
    seed: int | None,
    err1: float | None,
    *,
    arch: str = "resnet50",
    epochs: int = 200,
    reached: int | None = None,
    data: str = CIFAR,
    finished: bool = True,
    root: str = "/data/cifar100",
) -> dict:
    """A metrics.json as a finished (or not) run writes it: a run record of a run that
    trained and validated on every image of its splits."""
    reached = epochs if reached is None else reached
    final = {"val/err5": 0.05}
    if err1 is not None:
        final["val/err1"] = err1
    name, classes, sizes = DATA_SETS[data]
    seen = {
        "train": {"limit": 1.0, "batches": -(-sizes["train"] // 128), "images": sizes["train"],
                  "classes": classes},
        "val": {"limit": 1.0, "batches": -(-sizes["val"] // 128), "images": sizes["val"],
                "classes": classes},
    }  # fmt: skip
    return {
        "format": "reaf-run/1",
        "seed": seed,
        "finished": finished,
        "network": {"arch": arch, "kwargs": {"stem": "cifar"}, "num_classes": classes},
        "data": {
            "class_path": data,
            "init_args": {"root": root, "batch_size": 128},
            "dataset": name,
            "num_classes": classes,
            "image_size": 32,
            "augmentation": "random crop 32 (zero padding 4), horizontal flip",
            "sizes": dict(sizes),
        },
        "recipe": {"lr": 0.1, "momentum": 0.9},
        "epochs": {"planned": epochs, "reached": reached},
        "precision": "32-true",
        "params_m": 23.7,
        "gmacs": 1.3,
        "fit": {
            "epoch": reached - 1,
            "final": final,
            "best": {"val/err1": err1} if err1 is not None else {},
            "seen": seen,
        },
    }


def write(root: Path, experiment: str, seed: int, content: dict | str | bytes) -> Path:
    path = root / experiment / f"seed{seed}" / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, dict):
        path.write_text(json.dumps(content))
    else:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def report(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        report_main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def rows_of(path: Path) -> dict[str, dict[str, str]]:
    return {r["row"]: r for r in csv.DictReader(path.open())}
