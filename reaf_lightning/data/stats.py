"""Normalisation statistics used by the paper's training recipes (SPEC section 4).

The data modules own these numbers (the model never sees raw pixel statistics),
so analysis code can un-normalise images through ``datamodule.mean``/``std``.
"""

from __future__ import annotations

__all__ = ["CIFAR100_MEAN", "CIFAR100_STD", "IMAGENET_MEAN", "IMAGENET_STD"]

#: CIFAR-100 per-channel mean/std of the training set, as given in the REAF paper.
CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4865, 0.4409)
CIFAR100_STD: tuple[float, float, float] = (0.2673, 0.2564, 0.2762)

#: The standard ImageNet statistics (torchvision reference scripts).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
