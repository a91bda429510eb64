"""LightningDataModules for the REAF experiments (SPEC section 4)."""

from .augment import apply_crop_flip, normalize_uint8, random_crop_flip, sample_crop_flip_params
from .digits import DigitsDataModule
from .errors import CorruptImageError, DatasetLayoutError, DatasetNotFoundError
from .stats import CIFAR100_MEAN, CIFAR100_STD, IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CorruptImageError",
    "DatasetLayoutError",
    "DatasetNotFoundError",
    "DigitsDataModule",
    "apply_crop_flip",
    "normalize_uint8",
    "random_crop_flip",
    "sample_crop_flip_params",
]
