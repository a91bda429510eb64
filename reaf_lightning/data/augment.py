"""Vectorised random crop + horizontal flip + normalisation on batched tensors.

The CIFAR-100 augmentation (the paper's "crop translation and flipping",
§IV-A; random crop 32 with zero padding 4 and a flip with probability 1/2 are
ours, see :mod:`.cifar`) as pure tensor functions acting on a whole batch at
once, on any device: the device-side path of ``CIFAR100DataModule(gpu_augment=True)``.
They draw from the same distribution as ``torchvision.transforms.v2.RandomCrop(32,
padding=4)`` followed by ``RandomHorizontalFlip()``: a crop offset uniform in
``{0, ..., 2 * padding}`` in each axis and a flip with probability 1/2,
independently per image. Crop and flip are one ``torch.gather`` over the
padded images (no per-image Python loop).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["apply_crop_flip", "normalize_uint8", "sample_crop_flip_params"]


def sample_crop_flip_params(
    batch: int,
    padding: int,
    flip: bool,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw per-image crop offsets and flip decisions.

    Args:
        batch: number of images.
        padding: zero padding on each side; offsets are uniform in ``[0, 2 * padding]``.
        flip: whether horizontal flips are drawn (probability 1/2) or never applied.
        device: where the parameters live (same device as the images).
        generator: optional RNG on ``device`` for reproducible draws.

    Returns:
        ``(offset_y, offset_x, flips)``: two int64 tensors and one bool tensor of length ``batch``.
    """
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    high = 2 * padding + 1
    oy = torch.randint(0, high, (batch,), device=device, generator=generator)
    ox = torch.randint(0, high, (batch,), device=device, generator=generator)
    if flip:
        flips = torch.randint(0, 2, (batch,), device=device, generator=generator).bool()
    else:
        flips = torch.zeros(batch, dtype=torch.bool, device=device)
    return oy, ox, flips


def apply_crop_flip(
    images: torch.Tensor,
    offset_y: torch.Tensor,
    offset_x: torch.Tensor,
    flips: torch.Tensor,
    padding: int,
) -> torch.Tensor:
    """Crop each zero-padded image at its own offset and optionally mirror it.

    Output pixel ``(i, j)`` of image ``b`` is ``padded[b, :, oy + i, ox + j]``
    (or ``ox + W - 1 - j`` when flipped), exactly what ``RandomCrop`` followed
    by ``RandomHorizontalFlip`` computes. Padding happens in the input dtype
    with value 0 *before* normalisation, as torchvision pads the raw image.

    Args:
        images: ``(B, C, H, W)`` tensor of any dtype.
        offset_y: ``(B,)`` int64 row offsets in ``[0, 2 * padding]``.
        offset_x: ``(B,)`` int64 column offsets in ``[0, 2 * padding]``.
        flips: ``(B,)`` bool, True where the crop is mirrored left-right.
        padding: zero padding on each side.

    Returns:
        ``(B, C, H, W)`` tensor with the same dtype and device as ``images``.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    wp = w + 2 * padding
    ar_h = torch.arange(h, device=images.device)
    ar_w = torch.arange(w, device=images.device)
    rows = offset_y[:, None] + ar_h  # (B, H)
    cols = offset_x[:, None] + torch.where(flips[:, None], w - 1 - ar_w, ar_w)  # (B, W)
    flat_idx = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w)
    out = torch.gather(padded.reshape(b, c, -1), 2, flat_idx.expand(b, c, h * w))
    return out.reshape(b, c, h, w)


def normalize_uint8(
    images: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Convert uint8 ``(B, C, H, W)`` images to normalised float32.

    Uses the same operation order as ``ToTensor`` (divide by 255) followed by
    ``Normalize`` (subtract mean, divide by std), so the result matches the
    torchvision CPU pipeline bit for bit.
    """
    if images.dtype != torch.uint8:
        raise ValueError(f"normalize_uint8 expects uint8 images, got {images.dtype}")
    c = images.shape[1]
    if len(mean) != c or len(std) != c:
        raise ValueError(f"mean/std need {c} values (one per channel), got {len(mean)}/{len(std)}")
    m = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, c, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, c, 1, 1)
    return images.float().div_(255.0).sub_(m).div_(s)
