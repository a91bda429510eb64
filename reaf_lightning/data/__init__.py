"""LightningDataModules for the REAF experiments (paper §IV).

* :class:`CIFAR100DataModule` / :class:`CIFAR10DataModule` - CIFAR-100 (the
  paper's) and CIFAR-10 with crop + flip augmentation, on the CPU or batched on
  the training device (``gpu_augment``).
* :class:`ImageFolderDataModule` / :class:`ImageNetDataModule` - any
  ``root/{train,val}/<class>/*`` tree; ImageNet with the paper's scale
  augmentation as an option (``augmentation="scale_jitter"``), small images
  with the CIFAR recipe (``augmentation="cifar"``).
* :class:`DigitsDataModule` - scikit-learn digits, the download-free quick start.

All derive from :class:`BaseDataModule`: public ``num_classes`` (linked into
the model by the CLI), ``image_size``, ``mean`` and ``std``; ``batch_size`` is
per device; ``num_workers=None`` (the default, but for digits) follows the
machine's CPUs (:func:`default_num_workers`); every setting is saved in
checkpoints (``datamodule_hyper_parameters``). Dataset problems raise the
:class:`~reaf_lightning.errors.DataError` subclasses of :mod:`.errors`.
"""

from reaf_lightning.errors import (
    CorruptImageError,
    CorruptImageWarning,
    DatasetLayoutError,
    DatasetNotFoundError,
    DatasetPermissionError,
)

from .augment import apply_crop_flip, normalize_uint8, sample_crop_flip_params
from .base import BaseDataModule, default_num_workers
from .cifar import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    CIFAR10DataModule,
    CIFAR100DataModule,
    CIFARDataset,
)
from .cifar_files import (
    CIFAR10,
    CIFAR100,
    CIFARFormat,
    check_cifar_files,
    load_cifar_classes,
    load_cifar_split,
)
from .digits import DigitsDataModule
from .image_dataset import ImageFileDataset
from .image_folder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFolderDataModule,
    ImageNetDataModule,
    default_eval_resize,
)
from .images import IMG_EXTENSIONS, load_rgb, scan_image_folder, verify_images

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMG_EXTENSIONS",
    "BaseDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CIFARDataset",
    "CIFARFormat",
    "CorruptImageError",
    "CorruptImageWarning",
    "DatasetLayoutError",
    "DatasetNotFoundError",
    "DatasetPermissionError",
    "DigitsDataModule",
    "ImageFileDataset",
    "ImageFolderDataModule",
    "ImageNetDataModule",
    "apply_crop_flip",
    "check_cifar_files",
    "default_eval_resize",
    "default_num_workers",
    "load_cifar_classes",
    "load_cifar_split",
    "load_rgb",
    "normalize_uint8",
    "sample_crop_flip_params",
    "scan_image_folder",
    "verify_images",
]
