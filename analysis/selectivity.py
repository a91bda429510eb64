"""The class selectivity index of hidden units (paper §IV-E, Figures 2-4).

The paper measures how strongly each channel of a layer responds to one class
rather than to all classes. For every channel it takes the per-image spatial
mean of the (post-ReLU) activation, averages it per class over the evaluation
set to obtain class-conditional means ``u_c``, and computes

    SI = (u_max - u_-max) / (u_max + u_-max),

where ``u_max = max_c u_c`` and ``u_-max`` is the mean of the *other* classes.
We add ``EPS`` to the denominator (ours: the paper's formula is 0/0 for a
channel that never fires; with it such a channel gets SI 0).

This module is only the maths, from per-class sums to SI. It imports neither
Lightning nor seaborn; :mod:`reaf_lightning.analysis.hooks` streams a data set through a
network to collect the sums, :mod:`reaf_lightning.analysis.streaming` adds them up across
batches and processes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["EPS", "ClassActivationStats", "class_selectivity"]

#: Stabiliser of the index's denominator (ours; see the module docstring).
EPS: float = 1e-7


def class_selectivity(class_means: Tensor, eps: float = EPS) -> Tensor:
    """Selectivity index of every unit from its class-conditional mean activations.

    Args:
        class_means: ``(num_classes, units)`` mean activations ``u_c`` per class
            (rows) and unit (columns); ``num_classes >= 2``, every mean ``>= 0``
            (post-ReLU activations: only then does the index lie in [0, 1]).
        eps: Added to the denominator so that a unit that never fires (all
            ``u_c = 0``) gets SI 0 instead of 0/0.

    Returns:
        ``(units,)`` tensor ``(u_max - u_-max) / (u_max + u_-max + eps)`` in the
        dtype of ``class_means``: 0 means no preference, 1 that the unit fires
        for a single class only.

    Raises:
        ValueError: if ``class_means`` is not 2-D, has fewer than 2 classes or a
            negative mean (the index would leave [0, 1]).
    """
    if class_means.ndim != 2:
        raise ValueError(
            f"class_means must be a (num_classes, units) tensor, got shape "
            f"{tuple(class_means.shape)}"
        )
    num_classes = class_means.shape[0]
    if num_classes < 2:
        raise ValueError(
            f"class selectivity needs at least 2 classes, got num_classes={num_classes}"
        )
    if class_means.numel() and bool((class_means < 0).any()):
        raise ValueError(
            f"class selectivity is defined for non-negative activations; a class mean is "
            f"{float(class_means.min()):.4g}"
        )
    u_max = class_means.max(dim=0).values
    # Mean over the other classes: (sum - max) / (K - 1). With ties the "other"
    # classes include the tied ones, which is the definition's intent.
    u_rest = (class_means.sum(dim=0) - u_max) / (num_classes - 1)
    return (u_max - u_rest) / (u_max + u_rest + eps)


@dataclass
class ClassActivationStats:
    """Per-class sums of unit activations and per-class sample counts.

    Sums rather than means are the primitive because they add up across
    batches and across processes (all-reduce); the means follow from them.

    Attributes:
        sums: ``{layer: (num_classes, units)}`` sums of the reduced activations.
        counts: ``(num_classes,)`` int64 number of samples counted per class.
        reduction: The spatial reduction used (``"mean"`` or ``"none"``).
        unit_shapes: ``{layer: shape of one sample's units before flattening}``,
            ``(C,)`` for ``mean`` or ``(C, H, W)`` for ``none``.
    """

    sums: dict[str, Tensor]
    counts: Tensor
    reduction: str
    unit_shapes: dict[str, tuple[int, ...]]

    @property
    def num_classes(self) -> int:
        """Number of class rows (including classes without samples)."""
        return int(self.counts.shape[0])

    def non_finite_layers(self) -> list[str]:
        """Layers whose sums hold NaN or inf: some activation was not finite.

        One check of the sums replaces a check (and a device sync) per batch:
        a single NaN or inf activation makes its class's sum non-finite.
        """
        return [name for name, sums in self.sums.items() if not bool(torch.isfinite(sums).all())]

    def negative_layers(self) -> list[str]:
        """Layers with a negative class sum: some activation was negative, the index undefined."""
        return [name for name, sums in self.sums.items() if bool((sums < 0).any())]

    def class_means(self, drop_empty: bool = True) -> dict[str, Tensor]:
        """Class-conditional means ``u_c`` per layer.

        Args:
            drop_empty: Leave out classes with no samples (their mean is
                undefined); otherwise their rows are NaN.

        Returns:
            ``{layer: (classes, units)}`` in the accumulation dtype.
        """
        present = self.counts > 0
        out: dict[str, Tensor] = {}
        for layer, sums in self.sums.items():
            counts = self.counts.to(device=sums.device, dtype=sums.dtype).unsqueeze(1)
            if drop_empty:
                keep = present.to(sums.device)
                out[layer] = sums[keep] / counts[keep]
            else:
                out[layer] = sums / counts  # 0/0 = NaN marks empty classes
        return out

    def selectivity(self, eps: float = EPS) -> dict[str, Tensor]:
        """Selectivity index per unit of every layer; classes without samples are left out.

        Raises:
            ValueError: if fewer than 2 classes have samples.
        """
        present = int((self.counts > 0).sum())
        if present < self.num_classes:
            warnings.warn(
                f"{self.num_classes - present} of {self.num_classes} classes have no samples; "
                "they are left out of the selectivity index",
                stacklevel=2,
            )
        return {
            layer: class_selectivity(means, eps=eps)
            for layer, means in self.class_means(drop_empty=True).items()
        }
