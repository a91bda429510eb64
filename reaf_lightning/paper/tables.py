"""The paper's Tables 1-7 (``paper_tables.json``) as typed rows, with what each row builds.

The JSON holds only the paper's facts, transcribed from the published text
(``setting``: the C, C', G_I-G_M-G_O it states; ``paper``: its numbers as
printed), plus the registry model and keyword arguments that reproduce each
row. Everything derived (our counts, ratios, configs) is computed, never
stored. Contradictions inside the paper are kept as printed and listed in
``docs/paper_inconsistencies.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["DATASETS", "PaperRow", "paper_rows", "paper_tables"]

# dataset -> (stem, num_classes, input size)
DATASETS: dict[str, tuple[str, int, tuple[int, int, int]]] = {
    "cifar100": ("cifar", 100, (3, 32, 32)),
    "imagenet": ("imagenet", 1000, (3, 224, 224)),
}


@dataclass(frozen=True)
class PaperRow:
    """One row of a paper table: the model to build and what the paper reports for it.

    Attributes:
        table: ``"table1"`` ... ``"table7"``.
        id: the row's name, unique within its table (also its config file name).
        label: the paper's own name of the row, e.g. ``"REAF-ResNet50 (C=77, C'=63, 7-5-21)"``.
        model: registry name that reproduces the row.
        kwargs: its ``create_model`` arguments (without the dataset's stem and classes).
        dataset: ``"cifar100"`` or ``"imagenet"``.
        paper: ``top1_err``, ``top5_err`` (percent), ``gflops``, ``params_m``; ``None`` = not given.
        setting: what the paper states of the architecture: ``C``, ``C_prime``, ``reaf``,
            ``groups``, ``reaf_plus_groups``, ``stage_widths`` (absent = not stated).
        baseline: whether the row is a plain network others are compared to.
        baseline_id: the row of the same table this one is compared to.
        same_as: ``"<table>/<id>"`` of the row that is the same network and experiment
            (Tables 1 and 2 restate rows of Tables 5 and 6); no config of its own.
        note: how we read the row where the paper is ambiguous.
    """

    table: str
    id: str
    label: str
    model: str
    kwargs: dict[str, Any]
    dataset: str
    paper: dict[str, float | None]
    setting: dict[str, Any] = field(default_factory=dict)
    baseline: bool = False
    baseline_id: str | None = None
    same_as: str | None = None
    note: str | None = None

    @property
    def stem(self) -> str:
        return DATASETS[self.dataset][0]

    @property
    def num_classes(self) -> int:
        return DATASETS[self.dataset][1]

    @property
    def input_size(self) -> tuple[int, int, int]:
        return DATASETS[self.dataset][2]

    def model_kwargs(self) -> dict[str, Any]:
        """``create_model`` keyword arguments of this row (dataset stem and classes included)."""
        return {"num_classes": self.num_classes, "stem": self.stem, **self.kwargs}


@cache
def paper_tables() -> dict[str, Any]:
    """The raw JSON (cached; do not mutate)."""
    text = resources.files("reaf_lightning.paper").joinpath("paper_tables.json").read_text()
    return json.loads(text)


def paper_rows(table: str | None = None) -> list[PaperRow]:
    """All rows, or those of ``table`` (``"table1"`` ... ``"table7"``), in the paper's order.

    Raises:
        ValueError: ``table`` is not one of the paper's tables.
    """
    tables = {name: content for name, content in paper_tables().items() if name[0] != "_"}
    if table is not None and table not in tables:
        raise ValueError(f"unknown table {table!r}; valid: {', '.join(tables)}")
    return [
        PaperRow(table=name, **{"dataset": content.get("dataset"), **raw})
        for name, content in tables.items()
        if table in (None, name)
        for raw in content["rows"]
    ]
