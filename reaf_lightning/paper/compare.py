"""Finished experiments matched to the paper's rows, with the paper's numbers beside ours.

An experiment belongs to a paper row when its directory ends in
``<table>/<row id>`` (the layout the paper configs write: ``logs/table3/resnet50``).
``reaf-report`` summarises runs (mean ± std over seeds) and hands the summary
here; this module knows the paper, not how runs are stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from reaf_lightning.errors import ConfigError
from reaf_lightning.paper.tables import PaperRow, paper_rows, paper_tables

__all__ = ["OTHER", "compare_with_paper", "row_gmacs", "row_key", "table_titles"]

OTHER = "other"  # the group of experiments that match no paper row


def row_key(row: PaperRow) -> str:
    """``"<table>/<row id>"``: how an experiment directory names the row it ran."""
    return f"{row.table}/{row.id}"


def table_titles() -> dict[str, str]:
    """Table name -> the paper's title of it, and a title for :data:`OTHER`."""
    titles = {k: v["title"] for k, v in paper_tables().items() if not k.startswith("_")}
    titles[OTHER] = "Other runs (no row of the tables shown)"
    return titles


def compare_with_paper(summary: pd.DataFrame, tables: Sequence[str] | None = None) -> pd.DataFrame:
    """Every row of the chosen paper tables beside its experiments, then the unmatched ones.

    Args:
        summary: one row per experiment, with at least ``experiment``, ``key``
            (``"<table>/<row id>"`` from its directory) and ``top1_err_mean`` when runs exist.
        tables: paper tables to show (``"table3"``...); default: those with experiments.
            Rows of a shown table without experiments are kept with ``n_seeds = 0``.

    Returns:
        One record per (row, experiment): ``table``, ``row``, the summary's columns,
        ``paper_<number>`` for each of the paper's numbers, and ``top1_err_diff``
        (ours minus the paper's, in points).

    Raises:
        ConfigError: an unknown table name.
    """
    rows = paper_rows()
    known = list(dict.fromkeys(row.table for row in rows))
    matched = set(summary["key"]) & {row_key(row) for row in rows}
    chosen = (
        list(tables)
        if tables
        else [t for t in known if any(k.startswith(f"{t}/") for k in matched)]
    )
    for table in chosen:
        if table not in known:
            raise ConfigError(f"--tables: unknown table {table!r}; valid: {', '.join(known)}")
    out: list[dict[str, Any]] = []
    for row in (r for r in rows if r.table in chosen):
        paper = {f"paper_{k}": v for k, v in row.paper.items()}
        hits = summary[summary["key"] == row_key(row)]
        if hits.empty:
            hits = pd.DataFrame([{"experiment": row_key(row), "n_seeds": 0}])
        for hit in hits.to_dict("records"):
            out.append({"table": row.table, "row": row.id, **hit, **paper})
    placed = {row_key(row) for row in rows if row.table in chosen}
    for hit in summary[~summary["key"].isin(placed)].to_dict("records"):
        out.append({"table": OTHER, "row": hit["experiment"], **hit})
    frame = pd.DataFrame.from_records(out)
    for column in ("n_seeds", "top1_err_mean", "paper_top1_err"):
        if column not in frame:
            frame[column] = float("nan")
    frame["n_seeds"] = frame["n_seeds"].fillna(0).astype(int)
    frame["top1_err_diff"] = frame["top1_err_mean"] - frame["paper_top1_err"]
    return frame


def row_gmacs(table: str, ids: set[str]) -> dict[str, float]:
    """Our GMACs per image of the rows ``ids`` of ``table``, as ``reaf-zoo`` counts them."""
    from reaf_lightning.models.complexity import network_cost

    return {
        row.id: network_cost(row.model, row.model_kwargs(), row.input_size).macs / 1e9
        for row in paper_rows(table)
        if row.id in ids
    }
