"""Finished runs -> the paper's tables: mean ± std over seeds next to the paper's numbers.

Errors are in percent (``100 * val/err1`` of the final epoch, as the paper
reports the error at the end of training; ``best_*`` is the best epoch of each
run), the standard deviation is over seeds with ``n - 1`` (the sample
standard deviation; undefined, so empty, for one seed). ``params_m`` and
``gmacs`` are our counts for the image size the runs were fed; the paper's
GFLOPs are about 0.94x our MACs (see ``reaf-zoo``), so they are shown side by
side, not subtracted.

An experiment belongs to a paper row when its directory ends in
``<table>/<row id>`` (the layout of the paper configs: ``logs/table3/resnet50``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from reaf_lightning.paper.compare import compare_with_paper, table_titles
from reaf_lightning.report.record import Run

__all__ = ["COLUMNS", "format_latex", "format_markdown", "report_frame", "summarize_runs"]

#: the four error statistics of a run, and where they come from in ``metrics.json``
_ERRORS = {
    "top1_err": ("final", "val/err1"),
    "top5_err": ("final", "val/err5"),
    "best_top1_err": ("best", "val/err1"),
    "best_top5_err": ("best", "val/err5"),
}
COLUMNS = [
    "table",
    "row",
    "experiment",
    "n_seeds",
    "seeds",
    *(f"{name}_{stat}" for name in _ERRORS for stat in ("mean", "std")),
    "params_m",
    "gmacs",
    "paper_top1_err",
    "paper_top5_err",
    "paper_params_m",
    "paper_gflops",
    "top1_err_diff",
]


def _per_run(runs: Sequence[Run]) -> pd.DataFrame:
    records = []
    for run in runs:
        record: dict[str, Any] = {
            "experiment": run.experiment,
            "key": f"{run.experiment_dir.parent.name}/{run.experiment_dir.name}",
            "seed": run.seed,
            "params_m": run.metrics.get("params_m", math.nan),
            "gmacs": run.metrics.get("gmacs", math.nan),
        }
        for name, (kind, metric) in _ERRORS.items():
            record[name] = 100.0 * run.fit(kind).get(metric, math.nan)
        records.append(record)
    return pd.DataFrame.from_records(records)


def summarize_runs(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per experiment: ``n_seeds``, the seeds, mean and std of each error, complexity."""
    frame = _per_run(runs)
    groups = frame.groupby("experiment", sort=True)
    summary = pd.DataFrame(
        {
            "key": groups["key"].first(),
            "n_seeds": groups.size(),
            "seeds": groups["seed"].agg(lambda s: " ".join(str(v) for v in sorted(s, key=str))),
            "params_m": groups["params_m"].mean(),
            "gmacs": groups["gmacs"].mean(),
        }
    )
    for name in _ERRORS:
        summary[f"{name}_mean"] = groups[name].mean()
        summary[f"{name}_std"] = groups[name].std(ddof=1)
    return summary.reset_index()


def report_frame(runs: Sequence[Run], tables: Sequence[str] | None = None) -> pd.DataFrame:
    """The report: every row of the chosen paper tables, then the experiments matching none.

    Args:
        runs: finished runs (:func:`~reaf_lightning.report.record.find_runs`).
        tables: paper tables to show (``"table3"``...); default: those with runs.
            Rows of a shown table without runs are kept with ``n_seeds = 0``.

    Raises:
        ConfigError: an unknown table name.
    """
    summary = summarize_runs(runs) if runs else pd.DataFrame(columns=["experiment", "key"])
    return compare_with_paper(summary, tables).reindex(columns=COLUMNS)


# -- rendering -------------------------------------------------------------------------------
_HEADER = [
    "row",
    "n",
    "top-1 err %",
    "top-5 err %",
    "top-1 best",
    "top-5 best",
    "params M",
    "GMACs",
    "paper top-1",
    "Δ top-1",
    "paper params M",
    "paper GFLOPs",
]


def _number(value: Any, digits: int = 2, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _mean_std(mean: float, std: float) -> str:
    text = _number(mean)
    return f"{text} ± {_number(std)}" if text and not math.isnan(std) else text


def _cells(row: dict[str, Any]) -> list[str]:
    return [
        row["row"],
        str(row["n_seeds"]) if row["n_seeds"] else "missing",
        *(_mean_std(row[f"{name}_mean"], row[f"{name}_std"]) for name in _ERRORS),
        _number(row["params_m"]),
        f"{row['gmacs']:.2g}" if row["gmacs"] < 0.01 else _number(row["gmacs"], 3),
        _number(row["paper_top1_err"]),
        _number(row["top1_err_diff"], sign=True),
        _number(row["paper_params_m"]),
        _number(row["paper_gflops"]),
    ]


def _groups(frame: pd.DataFrame) -> list[tuple[str, list[list[str]]]]:
    """(title, cell rows) per paper table shown, then the other experiments."""
    titles = table_titles()
    groups = []
    for table in dict.fromkeys(frame["table"]):
        part = frame[frame["table"] == table]
        groups.append((titles.get(table, table), [_cells(r) for r in part.to_dict("records")]))
    return groups


def format_markdown(frame: pd.DataFrame) -> str:
    """One Markdown table per group, with the group's title as a heading."""
    blocks = []
    for title, rows in _groups(frame):
        lines = [f"### {title}", "", "| " + " | ".join(_HEADER) + " |"]
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(_HEADER) - 1)) + "|")
        lines += ["| " + " | ".join(cells) + " |" for cells in rows]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _latex_escape(text: str) -> str:
    for plain, latex in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&")):
        text = text.replace(plain, latex)
    return text.replace("±", r"$\pm$").replace("Δ", r"$\Delta$")


def format_latex(frame: pd.DataFrame) -> str:
    """One ``booktabs`` tabular per group (``\\usepackage{booktabs}``), titles as comments."""
    blocks = []
    for title, rows in _groups(frame):
        lines = [f"% {title}", r"\begin{tabular}{l" + "r" * (len(_HEADER) - 1) + "}", r"\toprule"]
        lines.append(" & ".join(_latex_escape(h) for h in _HEADER) + r" \\")
        lines.append(r"\midrule")
        lines += [" & ".join(_latex_escape(c) for c in cells) + r" \\" for cells in rows]
        lines += [r"\bottomrule", r"\end{tabular}"]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
