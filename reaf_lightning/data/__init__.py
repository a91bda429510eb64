"""LightningDataModules for the REAF experiments (SPEC section 4).

* :class:`CIFAR100DataModule` - the paper's CIFAR-100 recipe, optional
  device-resident fast path (:class:`DeviceCIFARLoader`).
* :class:`ImageFolderDataModule` / :class:`ImageNetDataModule` - any
  ``root/{train,val}/<class>/*`` tree; ImageNet with the paper's transforms.
* :class:`DigitsDataModule` - scikit-learn digits, the download-free quick start.

Every module exposes ``num_classes`` (linked into the model by the CLI) and
the ``mean``/``std`` it normalises with. ``batch_size`` is per device.
"""

from .augment import apply_crop_flip, normalize_uint8, random_crop_flip, sample_crop_flip_params
from .cifar import (
    CIFAR100_URL,
    CIFAR100DataModule,
    CIFAR100Dataset,
    check_cifar100_files,
    load_cifar100_classes,
    load_cifar100_split,
)
from .device_loader import DeviceCIFARLoader
from .digits import DigitsDataModule
from .errors import CorruptImageError, DatasetLayoutError, DatasetNotFoundError
from .image_folder import (
    IMG_EXTENSIONS,
    CorruptImageWarning,
    ImageFileDataset,
    ImageFolderDataModule,
    ImageNetDataModule,
    default_eval_resize,
    scan_image_folder,
    verify_images,
)
from .stats import CIFAR100_MEAN, CIFAR100_STD, IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR100_URL",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CIFAR100DataModule",
    "CIFAR100Dataset",
    "CorruptImageError",
    "CorruptImageWarning",
    "IMG_EXTENSIONS",
    "ImageFileDataset",
    "ImageFolderDataModule",
    "ImageNetDataModule",
    "default_eval_resize",
    "scan_image_folder",
    "verify_images",
    "DatasetLayoutError",
    "DatasetNotFoundError",
    "DeviceCIFARLoader",
    "DigitsDataModule",
    "apply_crop_flip",
    "check_cifar100_files",
    "load_cifar100_classes",
    "load_cifar100_split",
    "normalize_uint8",
    "random_crop_flip",
    "sample_crop_flip_params",
]
