"""Our experiments beside the paper's rows: which row each ran, and whether they may be compared.

An experiment belongs to a paper row when its directory ends in
``<table>/<row id>`` (the layout of the paper configs: ``logs/table3/resnet50``).
``reaf-report`` reads and summarises runs (mean ± std over seeds,
:mod:`reaf_lightning.report.summary`) and hands the summary here; this module
knows the paper, not how runs are stored.

The difference to the paper is given only where the runs trained the paper's
recipe for that row: its network and arguments, its data set and all its epochs
(the paper trains 200 epochs on CIFAR-100, §IV-A, and 100 on ImageNet, §IV-B);
otherwise :func:`paper_diff_note` says why it is blank.
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
    """Why our mean may not be compared with ``row``'s number (``None``: it may)."""
    data_class, epochs = PAPER_RECIPE.get(row.dataset, (None, None))
    if data_class is None:
        return f"no paper recipe known for {row.dataset}"
    expected = row.model_kwargs()
    for run in members:
        if run.network_arch != row.model:
            return f"network {run.network_arch}, the row's is {row.model}"
        given = run.network_arguments or {}
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


def compare_with_paper(
    summary: Sequence[dict[str, Any]], tables: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Every row of the chosen paper tables beside its experiments, then the unmatched ones.

    Args:
        summary: one entry per experiment (and variant), with at least ``experiment``,
            ``variant`` (``""`` or what differs from the experiment's other groups),
            ``key`` (:func:`experiment_key` of its directory), ``top1_err_mean`` and
            ``runs`` (its :class:`TrainedRun` members).
        tables: paper tables to show (``"table3"``...); default: those with experiments.
            Rows of a shown table without experiments are kept with ``n_seeds = 0``.

    Returns:
        One record per (row, experiment): ``table``, ``row``, the summary's entries,
        ``paper_<number>`` for each of the paper's numbers, ``top1_err_diff`` (ours
        minus the paper's, in points; NaN where ``diff_note`` says why not); then one
        per unmatched experiment with ``table`` :data:`OTHER`.

    Raises:
        ConfigError: an unknown table name.
    """
    rows = paper_rows()
    known = list(dict.fromkeys(row.table for row in rows))
    matched = {s["key"] for s in summary} & {row_key(row) for row in rows}
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
        hits = [s for s in summary if s["key"] == row_key(row)]
        if not hits:
            out.append({"table": row.table, "row": row.id, "n_seeds": 0, **paper,
                        "experiment": row_key(row)})  # fmt: skip
        for hit in hits:
            note = paper_diff_note(row, hit["runs"])
            diff = hit["top1_err_mean"] - (row.paper.get("top1_err") or math.nan)
            diff = math.nan if note else diff
            label = f"{row.id} [{hit['variant']}]" if hit["variant"] else row.id
            out.append({"table": row.table, **hit, "row": label, **paper,
                        "top1_err_diff": diff, "diff_note": note})  # fmt: skip
    placed = {row_key(row) for row in rows if row.table in chosen}
    for hit in (s for s in summary if s["key"] not in placed):
        out.append({"table": OTHER, "row": hit["experiment"], **hit})
    return out


def row_gmacs(table: str, ids: set[str]) -> dict[str, float]:
    """Our GMACs per image of the rows ``ids`` of ``table``, as ``reaf-zoo`` counts them."""
    from reaf_lightning.models.complexity import network_cost

    return {
        row.id: network_cost(row.model, row.model_kwargs(), row.input_size).macs / 1e9
        for row in paper_rows(table)
        if row.id in ids
    }
