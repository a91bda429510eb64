"""Class selectivity analysis of trained networks (paper §IV-E, Figures 2-4).

* :func:`compute_selectivity` / :func:`compute_class_means`: the index of every
  channel of chosen layers over a data set (:mod:`reaf_lightning.analysis.hooks`);
* :func:`class_selectivity`: the index from class-conditional means
  (:mod:`reaf_lightning.analysis.selectivity`, the maths only);
* :class:`SelectivityCallback`: the same during training, every N epochs
  (:mod:`reaf_lightning.analysis.training_callback`);
* ``reaf-analysis``: the paper's figures from checkpoints (:mod:`reaf_lightning.analysis.cli`).

Names are imported on first use, so ``import reaf_lightning.analysis.cli`` (the command's
``--help``) does not import torch or Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["SelectivityCallback", "class_selectivity", "compute_class_means", "compute_selectivity"]

_HOMES = {
    "SelectivityCallback": "reaf_lightning.analysis.training_callback",
    "class_selectivity": "reaf_lightning.analysis.selectivity",
    "compute_class_means": "reaf_lightning.analysis.hooks",
    "compute_selectivity": "reaf_lightning.analysis.hooks",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'reaf_lightning.analysis' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
