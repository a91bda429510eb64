"""Finished runs -> the paper's tables: mean, std and interval over seeds beside the paper.

Errors are in percent (``100 * val/err1`` of the final epoch, as the paper
reports the error at the end of training; ``best_*`` is the best epoch of each
run), the standard deviation is over seeds with ``n - 1`` (the sample
standard deviation; undefined, so empty, for one seed), and each mean has its
95% Student t interval over seeds; a REAF row's difference to its baseline row
has Welch's interval (:mod:`reaf_lightning.report.intervals`). ``params_m`` and
``gmacs`` are our counts for the image size the runs were fed; the paper's
GFLOPs are about 0.94x our MACs (see ``reaf-zoo``), so they are shown side by
side, not subtracted.

Like with like (ours): runs are averaged only when they are one experiment
(same directory but for ``seed<N>``) *and* trained the same thing
(:attr:`~reaf_lightning.runs.find.Run.identity`: network and arguments, data
module, data set, image size, augmentation, how much of each split was trained
and validated on, precision, recipe, epochs); runs that differ form separate
rows, labelled by what differs. ``n`` counts the seeds with a final top-1 error;
a finished seed without one (no validation, NaN, a missing key) or with one
outside [0, 100] % is listed in ``missing`` instead. A row trained or validated
on part of its splits, or validated on part of the classes, says so in
``data_note``. Unfinished runs are listed apart, never averaged. Which paper
row an experiment ran, and whether its mean may be compared with the paper's
number, is the paper's knowledge: :mod:`reaf_lightning.paper.compare`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import pandas as pd

from reaf_lightning.io import shown
from reaf_lightning.paper.compare import compare_with_paper, experiment_key, table_titles
from reaf_lightning.report.intervals import LEVEL, difference_interval, mean_interval
from reaf_lightning.runs.find import Run

__all__ = [
    "COLUMNS",
    "format_latex",
    "format_markdown",
    "format_unfinished",
    "report_frame",
    "summarize_runs",
    "unfinished_frame",
]

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
    "missing",
    *(f"{name}_{stat}" for name in _ERRORS for stat in ("mean", "std", "ci_low", "ci_high")),
    "params_m",
    "gmacs",
    "paper_top1_err",
    "paper_top5_err",
    "paper_params_m",
    "paper_gflops",
    "top1_err_diff",
    "diff_note",
    "baseline",
    "vs_baseline_top1_err",
    "vs_baseline_ci_low",
    "vs_baseline_ci_high",
    "vs_baseline_note",
    "data_note",
]
#: What a run trained beside its network: the identity aspects a REAF row and its
#: baseline must share to be compared.
_NETWORK_ASPECTS = ("network", "network arguments")


def _percent(value: Any) -> float:
    return 100.0 * value if isinstance(value, (int, float)) and math.isfinite(value) else math.nan


def _seed(run: Run) -> str:
    return f"seed{run.seed}" if run.seed is not None else f"{run.run_dir.name} (no seed)"


def _why_missing(run: Run, top1: float) -> str | None:
    """Why a finished run has no usable final top-1 error (``None``: it has one)."""
    final = run.fit("final")
    if "val/err1" not in final:
        return "no val/err1 (no validation?)"
    if math.isnan(top1):
        return "val/err1 was not finite"
    if not 0.0 <= top1 <= 100.0:
        return f"error {top1:.4g} % outside [0, 100]"
    return None


def _group_label(identity: tuple, others: list[tuple]) -> str:
    """The aspects of ``identity`` in which it differs from the other groups of its experiment."""
    differing = [
        f"{aspect} {value}"
        for aspect, value in identity
        if any(dict(other).get(aspect) != value for other in others)
    ]
    return "; ".join(differing) or "fewer settings recorded"


def split_groups(runs: Sequence[Run]) -> tuple[list[tuple[str, str, list[Run]]], list[str]]:
    """Finished runs by experiment and identity, and a note per experiment that was split.

    Returns ``(experiment, variant, runs)`` per group (the variant says what
    differs from the experiment's other groups; ``""`` when there are none) and
    the notes to print.
    """
    by_experiment: dict[str, dict[tuple, list[Run]]] = {}
    for run in runs:
        by_experiment.setdefault(run.experiment, {}).setdefault(run.identity, []).append(run)
    groups, notes = [], []
    for experiment in sorted(by_experiment):
        parts = by_experiment[experiment]
        if len(parts) == 1:
            groups.append((experiment, "", next(iter(parts.values()))))
            continue
        described = []
        for identity, members in parts.items():
            others = [i for i in parts if i != identity]
            label = _group_label(identity, others)
            groups.append((experiment, label, members))
            described.append(f"{label}: {', '.join(_seed(r) for r in members)}")
        notes.append(
            f"{experiment} holds runs that trained different things, shown as separate rows "
            f"and never averaged ({' | '.join(described)})"
        )
    return groups, notes


def _summary(experiment: str, variant: str, members: list[Run]) -> dict[str, Any]:
    """One row: n, seeds, missing, mean and std of each error, complexity."""
    counted, missing, values = [], [], {name: [] for name in _ERRORS}
    for run in members:
        top1 = _percent(run.fit("final").get("val/err1"))
        reason = _why_missing(run, top1)
        if reason:
            missing.append(f"{_seed(run)}: {reason}")
            continue
        counted.append(run)
        for name, (kind, metric) in _ERRORS.items():
            value = _percent(run.fit(kind).get(metric))
            values[name].append(value if 0.0 <= value <= 100.0 else math.nan)
    first = members[0]
    row: dict[str, Any] = {
        "experiment": f"{experiment} [{variant}]" if variant else experiment,
        "variant": variant,
        "key": experiment_key(first.experiment_dir),
        "n_seeds": len(counted),
        "seeds": " ".join(sorted((_seed(r) for r in counted), key=str)),
        "missing": "; ".join(missing),
        "params_m": _mean([r.record.params_m for r in members]),
        "gmacs": _mean([r.record.gmacs for r in members]),
        "data_note": "; ".join(dict.fromkeys(n for r in members for n in r.partial_data)),
        "setting": tuple(p for p in first.identity if p[0] not in _NETWORK_ASPECTS),
        "runs": members,
        "top1_values": values["top1_err"],
    }
    for name, series in values.items():
        finite = pd.Series(series, dtype=float).dropna()
        row[f"{name}_mean"] = finite.mean() if len(finite) else math.nan
        row[f"{name}_std"] = finite.std(ddof=1) if len(finite) > 1 else math.nan
        row[f"{name}_ci_low"], row[f"{name}_ci_high"] = mean_interval(list(finite))
    return row


def _mean(values: list[float | None]) -> float:
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def summarize_runs(runs: Sequence[Run]) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per experiment and identity of the finished ``runs``, and the notes to print."""
    groups, notes = split_groups([r for r in runs if r.finished])
    return [_summary(*group) for group in groups], notes


def report_frame(
    runs: Sequence[Run], tables: Sequence[str] | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """The report: every row of the chosen paper tables, then the experiments matching none.

    Args:
        runs: runs from :func:`~reaf_lightning.runs.find.find_runs` (unfinished
            ones are left out here; :func:`unfinished_frame` lists them).
        tables: paper tables to show (``"table3"``...); default: those with runs.
            Rows of a shown table without runs are kept with ``n_seeds = 0``.

    Returns:
        The frame (:data:`COLUMNS`) and the notes about split experiments.

    Raises:
        ConfigError: an unknown table name.
    """
    summary, notes = summarize_runs(runs)
    out = compare_with_paper(summary, tables)
    for row in out:
        base = row.pop("baseline_runs", None)
        if base is not None:
            diff, low, high = difference_interval(row["top1_values"], base["top1_values"])
            row.update(vs_baseline_top1_err=diff, vs_baseline_ci_low=low, vs_baseline_ci_high=high)
    frame = pd.DataFrame.from_records(out).reindex(columns=COLUMNS)
    frame["n_seeds"] = frame["n_seeds"].fillna(0).astype(int)
    return frame, notes


def unfinished_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """The runs whose fit has not finished: run dir, seed, epochs reached of planned, and
    what is missing as the record says it (``""`` when it does not)."""
    records = []
    for run in (r for r in runs if not r.finished):
        reached, planned = run.epochs
        epochs = f"{'?' if reached is None else reached} of {'?' if planned is None else planned}"
        row = {"run_dir": shown(run.run_dir), "seed": _seed(run), "epochs": epochs}
        records.append({**row, "missing": run.record.missing or ""})
    return pd.DataFrame.from_records(records, columns=["run_dir", "seed", "epochs", "missing"])


# -- rendering -------------------------------------------------------------------------------
_HEADER = [
    "row",
    "n",
    "top-1 err %",
    "top-1 95% CI (t)",
    "top-5 err %",
    "top-1 best",
    "top-5 best",
    "params M",
    "GMACs",
    "paper top-1",
    "Δ top-1",
    "vs baseline, 95% CI (Welch)",
    "paper params M",
    "paper GFLOPs",
]
#: Under every table: how its intervals were computed.
METHOD = (
    f"{LEVEL:.0%} CI (t): Student t interval of the mean over seeds (n - 1 degrees of "
    "freedom); vs baseline: our top-1 error minus our baseline row's, with Welch's t "
    f"interval ({LEVEL:.0%}); no interval from one seed"
)


def _number(value: Any, digits: int = 2, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _mean_std(mean: float, std: float) -> str:
    text = _number(mean)
    return f"{text} ± {_number(std)}" if text and not math.isnan(std) else text


def _text(value: Any) -> str:
    """A note or label of the frame ('' for an empty cell)."""
    return value if isinstance(value, str) else ""


def _diff_cell(row: dict[str, Any]) -> str:
    """The difference to the paper, or why there is none although both numbers exist."""
    note = _text(row.get("diff_note"))
    return f"n/a ({note})" if note else _number(row["top1_err_diff"], sign=True)


def _interval(low: float, high: float, sign: bool = False) -> str:
    low_text, high_text = _number(low, sign=sign), _number(high, sign=sign)
    return f"[{low_text}, {high_text}]" if low_text and high_text else ""


def _baseline_cell(row: dict[str, Any]) -> str:
    """Our difference to our baseline row, with its interval, or why there is none."""
    note = _text(row.get("vs_baseline_note"))
    if note:
        return f"n/a ({note})"
    diff = _number(row["vs_baseline_top1_err"], sign=True)
    if not diff:
        return ""
    interval = _interval(row["vs_baseline_ci_low"], row["vs_baseline_ci_high"], sign=True)
    return f"{diff} {interval}" if interval else f"{diff} (one seed: no interval)"


def _notes(part: pd.DataFrame) -> list[str]:
    """One line per row with seeds left out of its mean or data short of whole splits,
    then how the intervals were computed."""
    notes = []
    for r in part.to_dict("records"):
        if _text(r.get("missing")):
            notes.append(f"{r['row']}: not counted: {r['missing']}")
        if _text(r.get("data_note")):
            notes.append(f"{r['row']}: {r['data_note']}")
    return [*notes, METHOD]


def _cells(row: dict[str, Any]) -> list[str]:
    return [
        row["row"],
        str(row["n_seeds"]) if row["n_seeds"] else "missing",
        _mean_std(row["top1_err_mean"], row["top1_err_std"]),
        _interval(row["top1_err_ci_low"], row["top1_err_ci_high"]),
        *(_mean_std(row[f"{name}_mean"], row[f"{name}_std"]) for name in list(_ERRORS)[1:]),
        _number(row["params_m"]),
        f"{row['gmacs']:.2g}" if row["gmacs"] < 0.01 else _number(row["gmacs"], 3),
        _number(row["paper_top1_err"]),
        _diff_cell(row),
        _baseline_cell(row),
        _number(row["paper_params_m"]),
        _number(row["paper_gflops"]),
    ]


def _groups(frame: pd.DataFrame) -> list[tuple[str, list[list[str]], list[str]]]:
    """(title, cell rows, notes) per paper table shown, then the other experiments."""
    titles = table_titles()
    groups = []
    for table in dict.fromkeys(frame["table"]):
        part = frame[frame["table"] == table]
        cells = [_cells(r) for r in part.to_dict("records")]
        groups.append((titles.get(table, table), cells, _notes(part)))
    return groups


def _markdown(text: str) -> str:
    """``text`` inside a Markdown table or list: on one line, a ``|`` not a column break."""
    return shown(text).replace("|", "\\|")


def format_markdown(frame: pd.DataFrame) -> str:
    """One Markdown table per group, with the group's title as a heading."""
    blocks = []
    for title, rows, notes in _groups(frame):
        lines = [f"### {title}", "", "| " + " | ".join(_HEADER) + " |"]
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(_HEADER) - 1)) + "|")
        lines += ["| " + " | ".join(_markdown(c) for c in cells) + " |" for cells in rows]
        lines += [""] + [f"* {_markdown(note)}" for note in notes] if notes else []
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def format_unfinished(unfinished: pd.DataFrame) -> str:
    """The unfinished runs as a Markdown list ('' when there are none)."""
    if unfinished.empty:
        return ""
    lines = ["### Unfinished runs (not averaged)", ""]
    lines += [
        f"* {r['run_dir']} ({r['seed']}): {r['epochs']} epochs"
        + (f"; missing: {r['missing']}" if r["missing"] else "")
        for r in unfinished.to_dict("records")
    ]
    return "\n".join(lines) + "\n"


#: LaTeX's special characters in text, each as LaTeX writes it.
_LATEX = {
    "\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}  # fmt: skip


def _latex_escape(text: str) -> str:
    text = re.sub(r"[\\_%&#$\{\}~^]", lambda m: _LATEX[m.group()], shown(text))
    return text.replace("±", r"$\pm$").replace("Δ", r"$\Delta$")


def format_latex(frame: pd.DataFrame) -> str:
    """One ``booktabs`` tabular per group (``\\usepackage{booktabs}``), titles as comments."""
    blocks = []
    for title, rows, notes in _groups(frame):
        lines = [
            f"% {title}",
            *(f"% {shown(note)}" for note in notes),
            r"\begin{tabular}{l" + "r" * (len(_HEADER) - 1) + "}",
            r"\toprule",
        ]
        lines.append(" & ".join(_latex_escape(h) for h in _HEADER) + r" \\")
        lines.append(r"\midrule")
        lines += [" & ".join(_latex_escape(c) for c in cells) + r" \\" for cells in rows]
        lines += [r"\bottomrule", r"\end{tabular}"]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
