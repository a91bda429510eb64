"""Class selectivity analysis of trained networks (paper §IV-E, Figures 2-4).

* :func:`compute_selectivity` / :func:`compute_class_means`: the index of every
  channel of chosen layers over a data set (:mod:`analysis.hooks`);
* :func:`class_selectivity`: the index from class-conditional means
  (:mod:`analysis.selectivity`, the maths only);
* :class:`SelectivityCallback`: the same during training, every N epochs
  (:mod:`analysis.callback`);
* ``reaf-analysis``: the paper's figures from checkpoints (:mod:`analysis.cli`).

Names are imported on first use, so ``import analysis.cli`` (the command's
``--help``) does not import torch or Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["SelectivityCallback", "class_selectivity", "compute_class_means", "compute_selectivity"]

_HOMES = {
    "SelectivityCallback": "analysis.callback",
    "class_selectivity": "analysis.selectivity",
    "compute_class_means": "analysis.hooks",
    "compute_selectivity": "analysis.hooks",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
