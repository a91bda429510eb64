"""``reaf-zoo``: our parameter / MAC counts next to the paper's, and the width solver.

    reaf-zoo                       # every row of Tables 3-7
    reaf-zoo --table table3 --csv table3.csv
    reaf-zoo solve --reaf 8-4-70 --free-out-width   # C, C' matching ResNet50's MACs

Models are built on the meta device, so the whole table takes seconds.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from reaf_lightning.models import create_model
from reaf_lightning.models.complexity import count_macs, count_parameters
from reaf_lightning.models.paper import PaperRow, paper_rows
from reaf_lightning.models.width_solver import solve_width

__all__ = ["main", "zoo_table"]

COLUMNS = (
    "table",
    "id",
    "model",
    "config",
    "dataset",
    "params_m",
    "paper_params_m",
    "params_dev_pct",
    "gmacs",
    "paper_gflops",
    "macs_ratio",
    "paper_flops_ratio",
    "paper_top1_err",
)


def _config(row: PaperRow) -> str:
    kw = row.kwargs
    parts = []
    if "width" in kw:
        parts.append(f"C={kw['width']}")
    if "out_width" in kw and kw["out_width"] != kw.get("width"):
        parts.append(f"C'={kw['out_width']}")
    if "groups" in kw:
        parts.append(f"G={kw['groups']}")
    if "reaf" in kw:
        parts.append(kw["reaf"])
    if kw.get("reaf_convs") == "all":
        parts.append("all convs")
    if "reaf_plus_groups" in kw:
        parts.append(f"REAF+ g_O={kw['reaf_plus_groups']}")
    if row.width_source == "solver":
        parts.append("(C by solver)")
    return " ".join(parts) or "baseline"


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def zoo_table(table: str | None = None) -> list[dict[str, Any]]:
    """One dict per paper row with our counts, the paper's, and FLOPs ratios to the baseline."""
    rows = paper_rows(table)
    counts: dict[tuple[str, str], tuple[int, int]] = {}
    for row in rows:
        with torch.device("meta"):
            model = create_model(row.model, **row.model_kwargs())
        counts[(row.table, row.id)] = (count_parameters(model), count_macs(model, row.input_size))
    by_id = {(row.table, row.id): row for row in rows}
    out = []
    for row in rows:
        params, macs = counts[(row.table, row.id)]
        paper_params = row.paper.get("params_m")
        paper_gflops = row.paper.get("gflops")
        macs_ratio = paper_ratio = None
        if row.baseline_id is not None:
            base = by_id[(row.table, row.baseline_id)]
            macs_ratio = macs / counts[(row.table, row.baseline_id)][1]
            base_gflops = base.paper.get("gflops")
            if paper_gflops is not None and base_gflops is not None:
                paper_ratio = paper_gflops / base_gflops
        out.append(
            {
                "table": row.table,
                "id": row.id,
                "model": row.model,
                "config": _config(row),
                "dataset": row.dataset,
                "params_m": round(params / 1e6, 3),
                "paper_params_m": paper_params,
                "params_dev_pct": None
                if paper_params is None
                else round(100 * (params / 1e6 / paper_params - 1), 2),
                "gmacs": round(macs / 1e9, 3),
                "paper_gflops": paper_gflops,
                "macs_ratio": _round(macs_ratio, 3),
                "paper_flops_ratio": _round(paper_ratio, 3),
                "paper_top1_err": row.paper.get("top1_err"),
            }
        )
    return out


def _print_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    cells = [[("" if r[c] is None else str(r[c])) for c in columns] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for line in cells:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)))


def write_csv_atomic(path: Path, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    """Write ``rows`` to ``path`` via a temporary file + rename: never a half-written CSV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reaf-zoo", description="Our parameter/MAC counts next to the paper's tables."
    )
    parser.add_argument("--table", help="only this table (table3 ... table7)")
    parser.add_argument("--csv", type=Path, help="also write the rows to this CSV file")
    sub = parser.add_subparsers(dest="command")
    solve = sub.add_parser("solve", help="find C (and C') matching a baseline's cost")
    solve.add_argument("--reaf", required=True, help="G_I-G_M-G_O, e.g. 4-3-4")
    solve.add_argument("--model", default="reaf_resnet50", help="REAF registry name")
    solve.add_argument("--baseline", default="resnet50", help="registry name to match")
    solve.add_argument("--metric", choices=("macs", "params"), default="macs")
    solve.add_argument("--free-out-width", action="store_true", help="choose C' separately")
    solve.add_argument("--stem", choices=("cifar", "imagenet"), default="cifar")
    solve.add_argument("--num-classes", type=int, default=100)
    solve.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help="relative cost gap counted as a match with --free-out-width",
    )
    return parser


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of ``reaf-zoo``; returns the exit status."""
    parser = _build_parser()
    ns = parser.parse_args(args)
    try:
        if ns.command == "solve":
            s = solve_width(
                ns.model,
                ns.reaf,
                ns.baseline,
                metric=ns.metric,
                free_out_width=ns.free_out_width,
                stem=ns.stem,
                num_classes=ns.num_classes,
                tolerance=ns.tolerance,
            )
            print(
                f"{ns.model} {ns.reaf}: width (C) = {s.width}, out_width (C') = {s.out_width}; "
                f"{s.metric} {s.cost:,} vs {ns.baseline} {s.target:,} "
                f"({s.relative_difference:+.2%})"
            )
            return 0
        rows = zoo_table(ns.table)
    except ValueError as err:
        print(f"reaf-zoo: error: {err}", file=sys.stderr)
        return 2
    _print_table(rows, COLUMNS)
    devs = [
        (abs(r["params_dev_pct"]), r["table"], r["id"])
        for r in rows
        if r["params_dev_pct"] is not None
    ]
    if devs:
        worst = max(devs)
        print(
            f"\nworst parameter deviation from the paper: {worst[0]:.2f}% ({worst[1]} {worst[2]})"
        )
    if ns.csv is not None:
        write_csv_atomic(ns.csv, rows, COLUMNS)
        print(f"wrote {ns.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
