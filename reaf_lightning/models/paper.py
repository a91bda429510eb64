"""The paper's tables (``paper_tables.json``) as typed rows, with what each row means to build.

The JSON holds only the paper's facts (and, for Table 3 rows whose widths the
paper does not give, the widths our solver chose). Everything derived from them
(our counts, ratios, configs) is computed, never stored.
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
    """One row of a paper table: the model to build and the numbers the paper reports."""

    table: str
    id: str
    model: str
    kwargs: dict[str, Any]
    dataset: str
    paper: dict[str, float | None]
    baseline: bool = False
    baseline_id: str | None = None
    width_source: str | None = None
    note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

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
    text = resources.files("reaf_lightning.models").joinpath("paper_tables.json").read_text()
    return json.loads(text)


def paper_rows(table: str | None = None) -> list[PaperRow]:
    """All rows, or those of ``table`` (``"table3"`` ... ``"table7"``), in the paper's order."""
    rows = []
    for name, content in paper_tables().items():
        if name.startswith("_") or (table is not None and name != table):
            continue
        for raw in content["rows"]:
            raw = dict(raw)
            known = {k: raw.pop(k) for k in ("id", "model", "kwargs", "paper")}
            rows.append(
                PaperRow(
                    table=name,
                    dataset=raw.pop("dataset", content["dataset"]),
                    baseline=raw.pop("baseline", False),
                    baseline_id=raw.pop("baseline_id", None),
                    width_source=raw.pop("width_source", None),
                    note=raw.pop("note", None),
                    extra=raw,
                    **known,
                )
            )
    if table is not None and not rows:
        valid = [k for k in paper_tables() if not k.startswith("_")]
        raise ValueError(f"unknown table {table!r}; valid: {', '.join(valid)}")
    return rows
