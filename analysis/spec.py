"""What ``reaf-analysis`` is told about one model: its weight source and its label.

Kept apart from :mod:`reaf_lightning.analysis.loading` so that building the command's parser
(which reads this dataclass's fields and docstring) imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelSpec"]


@dataclass
class ModelSpec:
    """Where one model of the comparison comes from.

    Exactly one weight source must be given: ``checkpoint``, or ``arch`` with
    ``state_dict``, or ``arch`` with ``weights``.

    Args:
        label: Name in the legend and tables; default the network's registry
            name (a checkpoint's ``arch``), plus the weights name for torchvision.
        checkpoint: Lightning checkpoint (``.ckpt``) of ``reaf-lightning fit``, its run
            directory, an experiment directory (its ``seed<N>`` runs: the model's seeds), or a
            list of these; several networks are the model's replicates.
        arch: Network name: a registry name (``reaf_lightning.models.list_models()``),
            ``torchvision.<model>`` or ``timm.<model>``.
        arch_kwargs: Keyword arguments of the network (``stem``, ``width``,
            ``reaf``, ``num_classes``, ...). For ``state_dict`` the number of
            classes defaults to the data module's; for ``weights`` the
            defaults are ``num_classes=1000, stem="imagenet"``.
        state_dict: File with ``torch.save(model.state_dict())``, or a list of such files.
        weights: torchvision weights name of ``arch`` (``IMAGENET1K_V1``,
            ``IMAGENET1K_V2`` or ``DEFAULT``), read from the torch hub cache.
    """

    label: str | None = None
    checkpoint: str | list[str] | None = None
    arch: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    state_dict: str | list[str] | None = None
    weights: str | None = None
