"""Our experiments beside the paper's rows: which row each ran, and whether they may be compared.

An experiment belongs to a paper row when its directory ends in
``<table>/<row id>`` (the layout of the paper configs: ``logs/table3/resnet50``)
*and* its runs trained on the row's data set: a CIFAR-10 run kept in a
``table3/<row>`` folder is never listed under the paper's CIFAR-100 table.
``reaf-report`` reads and summarises runs (mean ± std over seeds,
:mod:`reaf_lightning.report.summary`) and hands the summary here; this module
knows the paper, not how runs are stored.

The difference to the paper is given only where the runs trained the paper's
recipe for that row: its network and arguments, its data set and classes, all
its epochs (the paper trains 200 epochs on CIFAR-100, §IV-A, and 100 on
ImageNet, §IV-B) on every image of the training set, validated on every image
of every class; otherwise :func:`paper_diff_note` names every difference. A row
the paper compares with a baseline (``baseline_id``) is paired here with our
runs of that baseline that trained the same way but for the network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import PurePath
from typing import Any, Protocol

from reaf_lightning.errors import ConfigError
from reaf_lightning.paper.tables import PaperRow, paper_rows, paper_tables

__all__ = [
    "OTHER",
    "PAPER_RECIPE",
    "TrainedRun",
    "compare_with_paper",
    "experiment_key",
    "paper_diff_note",
    "row_gmacs",
    "row_key",
    "table_titles",
]

OTHER = "other"  # the group of experiments that match no paper row
#: The paper's training per data set: our data module and the epochs (§IV-A: "We train 200
#: epochs in total" on CIFAR-100; §IV-B: "We train 100 epochs in total" on ImageNet).
PAPER_RECIPE: dict[str, tuple[str, int]] = {
    "cifar100": ("CIFAR100DataModule", 200),
    "imagenet": ("ImageNetDataModule", 100),
}


class TrainedRun(Protocol):
    """What a run trained, as far as the comparison needs it (``reaf-report``'s runs have it)."""

    @property
    def network_arch(self) -> str | None: ...

    @property
    def network_arguments(self) -> dict[str, Any] | None:
        """The network's keyword arguments with ``num_classes`` (``None``: not recorded)."""

    @property
    def data_class(self) -> str | None:
        """The data module's class name (``CIFAR100DataModule``), ``None``: not recorded."""

    @property
    def epochs(self) -> tuple[int | None, int | None]:
        """(epochs reached, epochs planned)."""

    @property
    def dataset(self) -> str | None:
        """The data set's name (``cifar100``), ``None``: not recorded."""

    @property
    def num_classes(self) -> int | None: ...

    @property
    def partial_data(self) -> list[str]:
        """How the training and validation fell short of whole splits and all classes."""


def row_key(row: PaperRow) -> str:
    """``"<table>/<row id>"``: how an experiment directory names the row it ran."""
    return f"{row.table}/{row.id}"


def experiment_key(experiment_dir: PurePath) -> str:
    """The :func:`row_key` an experiment directory would match: its last two parts."""
    return f"{experiment_dir.parent.name}/{experiment_dir.name}"


def table_titles() -> dict[str, str]:
    """Table name -> the paper's title of it, and a title for :data:`OTHER`."""
    titles = {k: v["title"] for k, v in paper_tables().items() if not k.startswith("_")}
    titles[OTHER] = "Other runs (no row of the tables shown)"
    return titles


def paper_diff_note(row: PaperRow, members: Sequence[TrainedRun]) -> str | None:
    """Every way ``members`` differ from ``row`` and the paper's recipe, ``"; "``-joined
    (``None``: none, so our mean may be compared with the row's number)."""
    data_class, epochs = PAPER_RECIPE.get(row.dataset, (None, None))
    if data_class is None:
        return f"no paper recipe known for {row.dataset}"
    notes: list[str] = []
    for run in members:
        notes += _differences(row, run, data_class, epochs)
    return "; ".join(dict.fromkeys(notes)) or None


def _differences(row: PaperRow, run: TrainedRun, data_class: str, epochs: int) -> list[str]:
    """What one run did otherwise than ``row``: network, data set, classes, epochs, data seen."""
    notes = []
    if run.network_arch != row.model:
        notes.append(f"network {run.network_arch}, the row's is {row.model}")
    expected, given = row.model_kwargs(), run.network_arguments or {}
    for key in sorted(k for k in expected if k != "num_classes" and k in given):
        if given[key] != expected[key]:
            notes.append(f"network argument {key}={given[key]!r}, the row's is {expected[key]!r}")
    if run.dataset is None:
        notes.append(f"the runs do not record their data set ({run.data_class})")
    elif run.dataset != row.dataset:
        notes.append(f"trained on {run.dataset} ({run.data_class}), the paper on {row.dataset}")
    elif run.data_class != data_class:
        notes.append(f"data module {run.data_class}, the recipe's is {data_class}")
    if run.num_classes is not None and run.num_classes != row.num_classes:
        notes.append(f"{run.num_classes} classes, the paper's {row.num_classes}")
    reached, planned = run.epochs
    if planned is not None and planned != epochs:
        notes.append(f"{planned} epoch{'s' * (planned != 1)} planned, the paper trains {epochs}")
    if reached not in (epochs, planned):
        notes.append(f"{reached} of the paper's {epochs} epochs trained")
    return notes + run.partial_data


def compare_with_paper(
    summary: Sequence[dict[str, Any]], tables: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Every row of the chosen paper tables beside its experiments, then the unmatched ones.

    Args:
        summary: one entry per experiment (and variant), with at least ``experiment``,
            ``variant`` (``""`` or what differs from the experiment's other groups),
            ``key`` (:func:`experiment_key` of its directory), ``top1_err_mean``,
            ``setting`` (what its runs trained but for the network, as ``(aspect,
            value)`` pairs) and ``runs`` (its :class:`TrainedRun` members).
        tables: paper tables to show (``"table3"``...); default: those with experiments.
            Rows of a shown table without experiments are kept with ``n_seeds = 0``.

    Returns:
        One record per (row, experiment): ``table``, ``row``, the summary's entries,
        ``paper_<number>`` for each of the paper's numbers, ``top1_err_diff`` (ours
        minus the paper's, in points; NaN where ``diff_note`` says why not) and, for
        a row with a baseline, ``baseline`` (its row id) with ``baseline_runs`` (the
        baseline's summary entry of the same setting) or ``vs_baseline_note`` (why there
        is none); then one per unmatched experiment with ``table`` :data:`OTHER` (and
        a ``diff_note`` where its folder names a row whose data set it did not train on).

    Raises:
        ConfigError: an unknown table name.
    """
    rows = paper_rows()
    by_key = {row_key(row): row for row in rows}
    known = list(dict.fromkeys(row.table for row in rows))
    listed = [(hit, _row_of(hit, by_key)) for hit in summary]
    matched = {row_key(row) for _, row in listed if row is not None}
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
        hits = [hit for hit, ran in listed if ran is row]
        if not hits:
            out.append({"table": row.table, "row": row.id, "n_seeds": 0, **paper,
                        "experiment": row_key(row)})  # fmt: skip
        for hit in hits:
            note = paper_diff_note(row, hit["runs"])
            diff = hit["top1_err_mean"] - (row.paper.get("top1_err") or math.nan)
            diff = math.nan if note else diff
            label = f"{row.id} [{hit['variant']}]" if hit["variant"] else row.id
            out.append({"table": row.table, **hit, "row": label, **paper,
                        "top1_err_diff": diff, "diff_note": note,
                        **_baseline(row, hit, listed)})  # fmt: skip
    for hit, ran in listed:
        if ran is not None and ran.table in chosen:
            continue
        named = by_key.get(hit["key"])
        extra = {}
        if ran is None and named is not None:  # a row's folder, another data set
            extra["diff_note"] = (
                f"not the paper's {hit['key']}: {paper_diff_note(named, hit['runs'])}"
            )
        out.append({"table": OTHER, "row": hit["experiment"], **hit, **extra})
    return out


def _row_of(hit: dict[str, Any], by_key: dict[str, PaperRow]) -> PaperRow | None:
    """The paper row an experiment ran: the row its folder names, if it trained on that
    row's data set."""
    row = by_key.get(hit["key"])
    return row if row is not None and hit["runs"][0].dataset == row.dataset else None


def _baseline(
    row: PaperRow, hit: dict[str, Any], listed: list[tuple[dict[str, Any], PaperRow | None]]
) -> dict[str, Any]:
    """``row``'s baseline for ``hit``: our runs of the baseline row in the same setting."""
    if row.baseline_id is None:
        return {}
    key = f"{row.table}/{row.baseline_id}"
    runs = [h for h, ran in listed if ran is not None and row_key(ran) == key]
    if not runs:
        return {"baseline": row.baseline_id, "vs_baseline_note": f"no runs of {key}"}
    same = [h for h in runs if h["setting"] == hit["setting"]]
    if same:
        return {"baseline": row.baseline_id, "baseline_runs": same[0]}
    ours, theirs = dict(hit["setting"]), dict(runs[0]["setting"])
    differing = [a for a in dict.fromkeys([*ours, *theirs]) if ours.get(a) != theirs.get(a)]
    return {
        "baseline": row.baseline_id,
        "vs_baseline_note": f"{key} trained otherwise ({', '.join(differing)})",
    }


def row_gmacs(table: str, ids: set[str]) -> dict[str, float]:
    """Our GMACs per image of the rows ``ids`` of ``table``, as ``reaf-zoo`` counts them."""
    from reaf_lightning.models.complexity import network_cost

    return {
        row.id: network_cost(row.model, row.model_kwargs(), row.input_size).macs / 1e9
        for row in paper_rows(table)
        if row.id in ids
    }
