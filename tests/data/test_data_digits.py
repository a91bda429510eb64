"""Tests of DigitsDataModule, the download-free quick-start data (reaf_lightning.data.digits)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from reaf_lightning.data import DigitsDataModule
from reaf_lightning.errors import ConfigError


def _bilinear_reference(img: np.ndarray, size: int) -> np.ndarray:
    """Plain-loop bilinear resize with half-pixel centres (align_corners=False semantics)."""
    h, w = img.shape
    out = np.zeros((size, size), dtype=np.float64)
    for i in range(size):
        for j in range(size):
            y = max((i + 0.5) * h / size - 0.5, 0.0)
            x = max((j + 0.5) * w / size - 0.5, 0.0)
            y0, x0 = min(int(y), h - 1), min(int(x), w - 1)
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            dy, dx = y - y0, x - x0
            out[i, j] = (
                img[y0, x0] * (1 - dy) * (1 - dx)
                + img[y0, x1] * (1 - dy) * dx
                + img[y1, x0] * dy * (1 - dx)
                + img[y1, x1] * dy * dx
            )
    return out


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.images, d.target


@pytest.fixture(scope="module")
def digits_dm():
    dm = DigitsDataModule(batch_size=50)
    dm.setup("fit")
    return dm


def test_digits_sizes_and_disjoint_split(digits, digits_dm):
    _, target = digits
    n = len(target)
    n_val = math.ceil(0.2 * n)  # train_test_split rounds the test share up
    assert len(digits_dm.val_dataset) == n_val
    assert len(digits_dm.train_dataset) == n - n_val
    tr, va = set(digits_dm.train_indices.tolist()), set(digits_dm.val_indices.tolist())
    assert not tr & va and tr | va == set(range(n))
    assert digits_dm.num_classes == len(np.unique(target))


def test_digits_stratified(digits, digits_dm):
    _, target = digits
    val_counts = np.bincount(target[digits_dm.val_indices], minlength=10)
    all_counts = np.bincount(target, minlength=10)
    # every class in proportion: within one image of val_fraction * class size
    assert np.all(np.abs(val_counts - 0.2 * all_counts) <= 1.0), (val_counts, all_counts)


def test_digits_batches_are_3x32x32_with_correct_labels_and_pixels(digits, digits_dm):
    images, target = digits
    x, y = next(iter(digits_dm.predict_dataloader()))
    assert x.shape == (50, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    # the predict loader (the validation images) is in sorted index order
    idx = digits_dm.val_indices[:50]
    assert torch.equal(y, torch.from_numpy(target[idx]))
    mean, std = digits_dm.mean, digits_dm.std
    for k in (0, 7, 49):
        raw = x[k] * std[0] + mean[0]  # un-normalise
        assert torch.equal(raw[0], raw[1]) and torch.equal(raw[1], raw[2])
        ref = np.clip(_bilinear_reference(images[idx[k]] / 16.0, 32), 0.0, 1.0)
        np.testing.assert_allclose(raw[0].numpy(), ref, atol=1e-5)


def test_digits_normalisation_uses_train_split_stats(digits_dm):
    # normalised train split has mean 0 / std 1 exactly when the stats come from it
    xs = torch.cat([x for x, _ in digits_dm.train_dataloader()])
    assert abs(float(xs.mean())) < 1e-4
    assert abs(float(xs.std()) - 1.0) < 1e-3
    # the stats are in [0, 1] pixel units and identical across the replicated channels
    assert 0.0 < digits_dm.mean[0] < 1.0 and digits_dm.mean[0] == digits_dm.mean[2]


def test_digits_deterministic_and_seed_dependent():
    a, b, c = DigitsDataModule(seed=3), DigitsDataModule(seed=3), DigitsDataModule(seed=4)
    for dm in (a, b, c):
        dm.setup("fit")
    assert np.array_equal(a.val_indices, b.val_indices)
    assert torch.equal(a.train_dataset.tensors[0], b.train_dataset.tensors[0])
    assert not np.array_equal(a.val_indices, c.val_indices)


def test_digits_augment_is_a_shift_of_the_source(digits_dm):
    dm = DigitsDataModule(augment=True)
    dm.setup("fit")
    src = digits_dm.train_dataset.tensors[0]
    fill = -dm.mean[0] / dm.std[0]
    shift = 2
    for i in (0, 5):
        out, label = dm.train_dataset[i]
        assert int(label) == int(digits_dm.train_dataset.tensors[1][i])
        padded = torch.nn.functional.pad(src[i] - fill, (shift,) * 4) + fill
        matches = [
            torch.allclose(out, padded[:, oy : oy + 32, ox : ox + 32], atol=1e-6)
            for oy in range(2 * shift + 1)
            for ox in range(2 * shift + 1)
        ]
        assert any(matches)


@pytest.mark.parametrize(
    "kwargs", [{"batch_size": 0}, {"val_fraction": 1.0}, {"image_size": -1}, {"num_workers": -2}]
)
def test_digits_bad_arguments(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        DigitsDataModule(**kwargs)
