"""Finished runs -> the paper's tables: mean ± std over seeds next to the paper's numbers.

Errors are in percent (``100 * val/err1`` of the final epoch, as the paper
reports the error at the end of training; ``best_*`` is the best epoch of each
run), the standard deviation is over seeds with ``n - 1`` (the sample
standard deviation; undefined, so empty, for one seed). ``params_m`` and
``gmacs`` are our counts for the image size the runs were fed; the paper's
GFLOPs are about 0.94x our MACs (see ``reaf-zoo``), so they are shown side by
side, not subtracted.

Like with like (ours): runs are averaged only when they are one experiment
(same directory but for ``seed<N>``) *and* trained the same thing
(:attr:`~reaf_lightning.report.runs.Run.identity`: network and arguments,
data module and what it feeds the network, recipe, epochs planned); runs that
differ form separate rows, labelled by what differs. ``n`` counts the seeds
with a final top-1 error; a finished seed without one (no validation, NaN, a
missing key) or with one outside [0, 100] % is listed in ``missing`` instead.
Unfinished runs are listed apart, never averaged. The difference to the paper
is given only where the runs trained the paper's recipe for that row: its
data set and all its epochs (the paper trains 200 epochs on CIFAR-100, §IV-A,
and 100 on ImageNet, §IV-B); otherwise ``diff_note`` says why it is blank.

An experiment belongs to a paper row when its directory ends in
``<table>/<row id>`` (the layout of the paper configs: ``logs/table3/resnet50``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from reaf_lightning.errors import ConfigError
from reaf_lightning.io import shown
from reaf_lightning.paper.tables import PaperRow, paper_rows, paper_tables
from reaf_lightning.report.runs import Run

__all__ = [
    "COLUMNS",
    "PAPER_RECIPE",
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
#: The paper's training per data set: our data module and the epochs (§IV-A: "We train 200
#: epochs in total" on CIFAR-100; §IV-B: "We train 100 epochs in total" on ImageNet).
PAPER_RECIPE: dict[str, tuple[str, int]] = {
    "cifar100": ("CIFAR100DataModule", 200),
    "imagenet": ("ImageNetDataModule", 100),
}
COLUMNS = [
    "table",
    "row",
    "experiment",
    "n_seeds",
    "seeds",
    "missing",
    *(f"{name}_{stat}" for name in _ERRORS for stat in ("mean", "std")),
    "params_m",
    "gmacs",
    "paper_top1_err",
    "paper_top5_err",
    "paper_params_m",
    "paper_gflops",
    "top1_err_diff",
    "diff_note",
]
OTHER = "other"  # the group of experiments that match no paper row


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
        "key": f"{first.experiment_dir.parent.name}/{first.experiment_dir.name}",
        "n_seeds": len(counted),
        "seeds": " ".join(sorted((_seed(r) for r in counted), key=str)),
        "missing": "; ".join(missing),
        "params_m": _mean([r.record.params_m for r in members]),
        "gmacs": _mean([r.record.gmacs for r in members]),
        "runs": members,
    }
    for name, series in values.items():
        finite = pd.Series(series, dtype=float).dropna()
        row[f"{name}_mean"] = finite.mean() if len(finite) else math.nan
        row[f"{name}_std"] = finite.std(ddof=1) if len(finite) > 1 else math.nan
    return row


def _mean(values: list[float | None]) -> float:
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def summarize_runs(runs: Sequence[Run]) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per experiment and identity of the finished ``runs``, and the notes to print."""
    groups, notes = split_groups([r for r in runs if r.finished])
    return [_summary(*group) for group in groups], notes


def paper_diff_note(row: PaperRow, members: list[Run]) -> str | None:
    """Why our mean may not be compared with ``row``'s number (``None``: it may)."""
    data_class, epochs = PAPER_RECIPE.get(row.dataset, (None, None))
    if data_class is None:
        return f"no paper recipe known for {row.dataset}"
    expected = row.model_kwargs()
    for run in members:
        if run.legacy:
            return "written before run records: network, data and epochs unknown"
        if run.network_arch != row.model:
            return f"network {run.network_arch}, the row's is {row.model}"
        network = run.record.network
        given = {**network.kwargs, "num_classes": network.num_classes} if network else {}
        differing = sorted(k for k in expected if k in given and given[k] != expected[k])
        if differing:
            key = differing[0]
            return f"network argument {key}={given[key]!r}, the row's is {expected[key]!r}"
        if run.data_class is None:
            return "the runs do not record their data and epochs"
        if run.data_class != data_class:
            return f"trained on {run.data_class}, the paper on {row.dataset}"
        reached, planned = run.epochs
        if planned is not None and planned != epochs:
            return f"{planned} epochs planned, the paper trains {epochs}"
        if reached != epochs:
            return f"{reached} of the paper's {epochs} epochs trained"
    return None


def report_frame(
    runs: Sequence[Run], tables: Sequence[str] | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """The report: every row of the chosen paper tables, then the experiments matching none.

    Args:
        runs: runs from :func:`~reaf_lightning.report.runs.find_runs` (unfinished
            ones are left out here; :func:`unfinished_frame` lists them).
        tables: paper tables to show (``"table3"``...); default: those with runs.
            Rows of a shown table without runs are kept with ``n_seeds = 0``.

    Returns:
        The frame (:data:`COLUMNS`) and the notes about split experiments.

    Raises:
        ConfigError: an unknown table name.
    """
    summary, notes = summarize_runs(runs)
    rows = paper_rows()
    known = list(dict.fromkeys(row.table for row in rows))
    keys = {s["key"] for s in summary}
    matched = keys & {f"{row.table}/{row.id}" for row in rows}
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
        hits = [s for s in summary if s["key"] == f"{row.table}/{row.id}"]
        if not hits:
            out.append({"table": row.table, "row": row.id, "n_seeds": 0, **paper,
                        "experiment": f"{row.table}/{row.id}"})  # fmt: skip
        for hit in hits:
            note = paper_diff_note(row, hit["runs"])
            diff = hit["top1_err_mean"] - (row.paper.get("top1_err") or math.nan)
            diff = math.nan if note else diff
            label = f"{row.id} [{hit['variant']}]" if hit["variant"] else row.id
            out.append({"table": row.table, **hit, "row": label, **paper,
                        "top1_err_diff": diff, "diff_note": note})  # fmt: skip
    placed = {f"{row.table}/{row.id}" for row in rows if row.table in chosen}
    for hit in (s for s in summary if s["key"] not in placed):
        out.append({"table": OTHER, "row": hit["experiment"], **hit})
    frame = pd.DataFrame.from_records(out).reindex(columns=COLUMNS)
    frame["n_seeds"] = frame["n_seeds"].fillna(0).astype(int)
    return frame, notes


def unfinished_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """The runs whose fit has not finished: run dir, seed, epochs reached of planned."""
    records = []
    for run in (r for r in runs if not r.finished):
        reached, planned = run.epochs
        epochs = f"{'?' if reached is None else reached} of {'?' if planned is None else planned}"
        records.append({"run_dir": shown(run.run_dir), "seed": _seed(run), "epochs": epochs})
    return pd.DataFrame.from_records(records, columns=["run_dir", "seed", "epochs"])


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


def _diff_cell(row: dict[str, Any]) -> str:
    """The difference to the paper, or why there is none although both numbers exist."""
    note = row.get("diff_note")
    if isinstance(note, str) and note:
        return f"n/a ({note})"
    return _number(row["top1_err_diff"], sign=True)


def _notes(part: pd.DataFrame) -> list[str]:
    """One line per row with seeds left out of its mean."""
    return [
        f"{r['row']}: not counted: {r['missing']}"
        for r in part.to_dict("records")
        if isinstance(r.get("missing"), str) and r["missing"]
    ]


def _cells(row: dict[str, Any]) -> list[str]:
    return [
        row["row"],
        str(row["n_seeds"]) if row["n_seeds"] else "missing",
        *(_mean_std(row[f"{name}_mean"], row[f"{name}_std"]) for name in _ERRORS),
        _number(row["params_m"]),
        f"{row['gmacs']:.2g}" if row["gmacs"] < 0.01 else _number(row["gmacs"], 3),
        _number(row["paper_top1_err"]),
        _diff_cell(row),
        _number(row["paper_params_m"]),
        _number(row["paper_gflops"]),
    ]


def _groups(frame: pd.DataFrame) -> list[tuple[str, list[list[str]], list[str]]]:
    """(title, cell rows, notes) per paper table shown, then the other experiments."""
    titles = {k: v["title"] for k, v in paper_tables().items() if not k.startswith("_")}
    titles[OTHER] = "Other runs (no row of the tables shown)"
    groups = []
    for table in dict.fromkeys(frame["table"]):
        part = frame[frame["table"] == table]
        cells = [_cells(r) for r in part.to_dict("records")]
        groups.append((titles.get(table, table), cells, _notes(part)))
    return groups


def format_markdown(frame: pd.DataFrame) -> str:
    """One Markdown table per group, with the group's title as a heading."""
    blocks = []
    for title, rows, notes in _groups(frame):
        lines = [f"### {title}", "", "| " + " | ".join(_HEADER) + " |"]
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(_HEADER) - 1)) + "|")
        lines += ["| " + " | ".join(cells) + " |" for cells in rows]
        lines += [""] + [f"* {note}" for note in notes] if notes else []
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def format_unfinished(unfinished: pd.DataFrame) -> str:
    """The unfinished runs as a Markdown list ('' when there are none)."""
    if unfinished.empty:
        return ""
    lines = ["### Unfinished runs (not averaged)", ""]
    lines += [
        f"* {r['run_dir']} ({r['seed']}): {r['epochs']} epochs"
        for r in unfinished.to_dict("records")
    ]
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    for plain, latex in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&")):
        text = text.replace(plain, latex)
    return text.replace("±", r"$\pm$").replace("Δ", r"$\Delta$")


def format_latex(frame: pd.DataFrame) -> str:
    """One ``booktabs`` tabular per group (``\\usepackage{booktabs}``), titles as comments."""
    blocks = []
    for title, rows, notes in _groups(frame):
        lines = [
            f"% {title}",
            *(f"% {note}" for note in notes),
            r"\begin{tabular}{l" + "r" * (len(_HEADER) - 1) + "}",
            r"\toprule",
        ]
        lines.append(" & ".join(_latex_escape(h) for h in _HEADER) + r" \\")
        lines.append(r"\midrule")
        lines += [" & ".join(_latex_escape(c) for c in cells) + r" \\" for cells in rows]
        lines += [r"\bottomrule", r"\end{tabular}"]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
