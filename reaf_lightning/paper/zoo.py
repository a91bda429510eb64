"""``reaf-zoo``: our parameter and MAC counts next to every row of the paper's Tables 1-7.

    reaf-zoo                                   # every row; rows off by > 1 % are flagged
    reaf-zoo --table table3 --csv table3.csv   # also write one CSV line per row
    reaf-zoo --table table3 --solver true      # add the width solver's C, C' per REAF row
    reaf-zoo solve --reaf 8-4-70 --free_out_width true   # C, C' matching ResNet50's MACs

Models are built on the meta device (shapes only), so all rows take seconds.
torch and the models are imported only once the arguments are valid, so
``--help`` and argument errors answer at once.

How a row is compared (deviations from unrounded counts, flagged beyond 1 %):

* parameters: ours against the paper's, every row;
* GFLOPs of an ImageNet row: our multiply-accumulates against the paper's GFLOPs
  directly (``gflops_dev_pct``); the paper's ImageNet GFLOPs are MACs of the
  network in the layout the row builds (``stride_on``: ``1x1`` for the
  ResNet50/101 family, as in the original ResNet; ``3x3`` for WideResNet50-2);
* GFLOPs of a CIFAR-100 row: the ratio to its table's baseline
  (``ratio_dev_pct``), since the paper's CIFAR-100 baselines and REAF rows are
  not counted in one layout (``docs/paper_inconsistencies.md``).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Literal, NoReturn

from jsonargparse import ArgumentParser

from reaf_lightning.commands import parse, run_main
from reaf_lightning.errors import ConfigError

__all__ = ["COLUMNS", "main", "zoo_table"]

# The first twelve are the documented CSV interface; the rest are context.
COLUMNS = (
    "table",
    "row",
    "arch",
    "width",
    "out_width",
    "reaf",
    "paper_top1_err",
    "paper_top5_err",
    "paper_gflops",
    "paper_params_m",
    "params_m",
    "gmacs",
    "label",
    "dataset",
    "reaf_convs",
    "groups",
    "reaf_plus_groups",
    "paper_width",
    "paper_out_width",
    "params_dev_pct",
    "macs_ratio",
    "paper_gflops_ratio",
    "ratio_dev_pct",
    "flag",
    "same_as",
    "stride_on",
    "gflops_dev_pct",
    "flops_basis",
)
FLAG_PCT = 1.0  # a row is flagged when params or its GFLOPs are off by more than this
SHOWN = (
    "table",
    "row",
    "params_m",
    "paper_params_m",
    "params_dev_pct",
    "gmacs",
    "paper_gflops",
    "gflops_dev_pct",
    "macs_ratio",
    "paper_gflops_ratio",
    "ratio_dev_pct",
    "flag",
)
#: how a dataset's GFLOPs are compared (see the module docstring)
FLOPS_BASIS = {"imagenet": "absolute", "cifar100": "ratio"}


def _pct(ours: float | None, paper: float | None) -> float | None:
    """Deviation of ours from the paper's in percent (unrounded; ``None`` if either is absent)."""
    return None if ours is None or not paper else 100 * (ours / paper - 1)


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits) + 0.0  # + 0.0: no "-0.0"


def zoo_table(table: str | None = None, solver: bool = False) -> list[dict[str, Any]]:
    """One dict per paper row (keys: :data:`COLUMNS`), in the paper's order.

    Deviations and flags are computed from exact counts; only the shown values
    are rounded (``params_m`` to 0.001 M, ``gmacs`` to 0.0001 G, percentages to 0.01).

    Args:
        table: only this table (``"table1"`` ... ``"table7"``); ``None`` = all.
        solver: add ``solver_width`` / ``solver_out_width``, the widths
            :func:`~reaf_lightning.models.width_solver.solve_width` picks for each
            Table 3 REAF row (C = C' when the paper's row has C = C', else C' free).
    """
    from reaf_lightning.models.complexity import network_cost
    from reaf_lightning.paper.tables import paper_rows

    rows = paper_rows(table)
    cost = {(r.table, r.id): network_cost(r.model, r.model_kwargs(), r.input_size) for r in rows}
    paper_of = {(r.table, r.id): r.paper for r in rows}
    out = []
    for row in rows:
        built, paper = cost[(row.table, row.id)], row.paper
        params_m, gmacs = built.params / 1e6, built.macs / 1e9
        macs_ratio = paper_ratio = None
        if row.baseline_id is not None:
            macs_ratio = built.macs / cost[(row.table, row.baseline_id)].macs
            base_gflops = paper_of[(row.table, row.baseline_id)]["gflops"]
            if paper["gflops"] and base_gflops:
                paper_ratio = paper["gflops"] / base_gflops
        basis = FLOPS_BASIS[row.dataset]
        params_dev, gflops_dev = _pct(params_m, paper["params_m"]), _pct(gmacs, paper["gflops"])
        ratio_dev = _pct(macs_ratio, paper_ratio)
        flops_dev = gflops_dev if basis == "absolute" else ratio_dev
        arch = built.architecture
        reaf = arch.get("reaf")
        out.append(
            {
                "table": row.table,
                "row": row.id,
                "arch": row.model,
                "width": arch.get("width"),
                "out_width": arch.get("out_width"),
                "reaf": None if reaf is None else str(reaf),
                "paper_top1_err": paper["top1_err"],
                "paper_top5_err": paper["top5_err"],
                "paper_gflops": paper["gflops"],
                "paper_params_m": paper["params_m"],
                "params_m": round(params_m, 3),
                "gmacs": round(gmacs, 4),
                "label": row.label,
                "dataset": row.dataset,
                "reaf_convs": arch.get("reaf_convs"),
                "groups": arch.get("groups"),
                "reaf_plus_groups": arch.get("reaf_plus_groups"),
                "paper_width": row.setting.get("C"),
                "paper_out_width": row.setting.get("C_prime"),
                "params_dev_pct": _rounded(params_dev, 2),
                "macs_ratio": _rounded(macs_ratio, 4),
                "paper_gflops_ratio": _rounded(paper_ratio, 4),
                "ratio_dev_pct": _rounded(ratio_dev, 2),
                "flag": " ".join(
                    name
                    for name, dev in (("params", params_dev), ("flops", flops_dev))
                    if dev is not None and abs(dev) > FLAG_PCT
                )
                or None,
                "same_as": row.same_as,
                "stride_on": arch.get("stride_on"),
                "gflops_dev_pct": _rounded(gflops_dev, 2),
                "flops_basis": basis,
            }
        )
        if solver:
            out[-1].update(_solver_widths(row))
    return out


def _solver_widths(row: Any) -> dict[str, int | None]:
    if row.table != "table3" or row.baseline:
        return {"solver_width": None, "solver_out_width": None}
    from reaf_lightning.models.width_solver import solve_width

    free = row.setting["C"] != row.setting["C_prime"]
    solution = solve_width(row.model, row.kwargs["reaf"], row.baseline_id, free_out_width=free)
    return {"solver_width": solution.width, "solver_out_width": solution.out_width}


def _cell(value: Any, column: str = "") -> str:
    """A printed / CSV cell: empty for None; the paper's numbers with its two decimals."""
    if value is None:
        return ""
    if column in ("paper_top1_err", "paper_top5_err", "paper_params_m") or (
        column == "paper_gflops" and value >= 0.1
    ):
        return f"{value:.2f}"
    return str(value)


def _print_table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    cells = [[_cell(r[c], c) for c in columns] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    for line in cells:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip())


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    from reaf_lightning.io import atomic_outputs

    with atomic_outputs([path]) as (temp,), temp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows({c: _cell(r.get(c), c) for c in columns} for r in rows)


def build_parser() -> ArgumentParser:
    """The command's parser: the table (default) or the ``solve`` subcommand."""
    parser = ArgumentParser(
        prog="reaf-zoo",
        description="Our parameter and MAC counts next to the paper's Tables 1-7.",
        exit_on_error=False,
        default_env=False,
    )
    parser.add_argument(
        "--table", type=str | None, default=None, help="only this table, e.g. table3"
    )
    parser.add_argument("--csv", type=Path | None, default=None, help="also write the rows here")
    parser.add_argument(
        "--solver", type=bool, default=False, help="add the width solver's C, C' (Table 3)"
    )
    subcommands = parser.add_subcommands(required=False, dest="command")
    solve = ArgumentParser(description="Find C (and C') matching a baseline's cost.")
    solve.add_argument("--reaf", type=str, required=True, help="G_I-G_M-G_O, e.g. 4-3-4")
    solve.add_argument("--model", type=str, default="reaf_resnet50", help="REAF registry name")
    solve.add_argument("--baseline", type=str, default="resnet50", help="registry name to match")
    solve.add_argument("--metric", type=Literal["macs", "params"], default="macs")
    solve.add_argument("--free_out_width", type=bool, default=False, help="choose C' separately")
    solve.add_argument("--stem", type=Literal["cifar", "imagenet"], default="cifar")
    solve.add_argument("--num_classes", type=int, default=100)
    solve.add_argument(
        "--tolerance", type=float, default=0.01, help="relative cost gap counted as a match"
    )
    subcommands.add_subcommand("solve", solve, help="find C (and C') matching a baseline's cost")
    return parser


def _solve(cfg: Any) -> None:
    from reaf_lightning.models.width_solver import solve_width

    try:
        s = solve_width(
            cfg.model,
            cfg.reaf,
            cfg.baseline,
            metric=cfg.metric,
            free_out_width=cfg.free_out_width,
            stem=cfg.stem,
            num_classes=cfg.num_classes,
            tolerance=cfg.tolerance,
        )
    except ValueError as err:
        raise ConfigError(str(err)) from None
    print(
        f"{cfg.model} {cfg.reaf}: width (C) = {s.width}, out_width (C') = {s.out_width}; "
        f"{s.metric} {s.cost:,} vs {cfg.baseline} {s.target:,} ({s.relative_difference:+.2%})"
    )


def _table(cfg: Any) -> None:
    if cfg.csv is not None:
        from reaf_lightning.io import check_outputs, ensure_writable

        check_outputs([cfg.csv])  # a regular file or nothing: no link, FIFO or device
        ensure_writable(cfg.csv.parent or Path("."), "--csv directory")
    try:
        rows = zoo_table(cfg.table, solver=cfg.solver)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    shown = SHOWN + (("solver_width", "solver_out_width") if cfg.solver else ())
    _print_table(rows, shown)
    flagged = [r for r in rows if r["flag"]]
    print(
        f"\n{len(rows)} rows; {len(flagged)} off by more than {FLAG_PCT:g} % from the paper "
        "(params; GFLOPs of ImageNet rows, or their ratio to the baseline for CIFAR-100 rows): "
        "see docs/paper_inconsistencies.md"
    )
    if cfg.csv is not None:
        _write_csv(cfg.csv, rows, COLUMNS + shown[len(SHOWN) :])
        print(f"wrote {cfg.csv}")


def main(args: list[str] | None = None) -> NoReturn:
    """Entry point of ``reaf-zoo``; exits with the status of :mod:`reaf_lightning.errors`."""
    run_main("reaf-zoo", _zoo, args)


def _zoo(argv: list[str]) -> None:
    cfg = parse(build_parser(), argv)
    if cfg.command == "solve":
        _solve(cfg.solve)
    else:
        _table(cfg)


if __name__ == "__main__":
    main()
