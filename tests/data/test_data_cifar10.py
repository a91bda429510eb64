"""CIFAR-10 (reaf_lightning.data.CIFAR10DataModule) on tiny files in torchvision's real format.

The reference is independent of the reader: the pixels and labels written by
``helpers.fake_data.write_cifar10``, decoded here with a per-pixel loop (torchvision's
``CIFAR10`` cannot serve: it refuses any file whose MD5 is not the official one).
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from helpers.fake_data import write_cifar10

from reaf_lightning.data import (
    CIFAR10,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR10DataModule,
    DatasetLayoutError,
    DatasetNotFoundError,
    load_cifar_split,
)


def _pixels_of(row: np.ndarray) -> np.ndarray:
    """Channel-major row -> (3, 32, 32) by an explicit loop (the format's definition)."""
    image = np.zeros((3, 32, 32), dtype=np.uint8)
    for c in range(3):
        for i in range(32):
            for j in range(32):
                image[c, i, j] = row[c * 1024 + i * 32 + j]
    return image


@pytest.fixture()
def cifar10(tmp_path):
    written = write_cifar10(tmp_path / "c10", n_per_batch=6, n_test=10, seed=3)
    return tmp_path / "c10", written


def test_cifar10_reads_all_five_batches_in_order(cifar10):
    root, written = cifar10
    images, labels = load_cifar_split(root, "train", CIFAR10)
    rows = np.concatenate([written[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    expected_labels = [y for i in range(1, 6) for y in written[f"data_batch_{i}"][b"labels"]]
    assert images.shape == (30, 3, 32, 32) and labels.tolist() == expected_labels
    assert all(np.array_equal(images[k], _pixels_of(rows[k])) for k in (0, 7, 29))


def test_cifar10_module_batches_are_normalised_test_images(cifar10):
    root, written = cifar10
    dm = CIFAR10DataModule(root=str(root), batch_size=4, num_workers=0, augment=False)
    dm.prepare_data()
    dm.setup("fit")
    assert (dm.num_classes, dm.classes[3], len(dm.train_dataset)) == (10, "label_3", 30)
    assert dm.val_dataset is dm.test_dataset is dm.predict_dataset
    x, y = next(iter(dm.predict_dataloader()))  # the test set in file order
    test = written["test_batch"]
    assert y.tolist() == test[b"labels"][:4]
    mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(3, 1, 1)
    for k in range(4):
        expected = (torch.from_numpy(_pixels_of(test[b"data"][k])).float() / 255 - mean) / std
        torch.testing.assert_close(x[k], expected)


def test_cifar10_missing_batch_file_is_named_with_the_layout(cifar10):
    root, _ = cifar10
    (root / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DatasetNotFoundError, match="CIFAR-10 file") as err:
        CIFAR10DataModule(root=str(root), num_workers=0).prepare_data()
    message = str(err.value)
    assert str(root / "cifar-10-batches-py" / "data_batch_4") in message
    assert "data_batch_3" not in message.split(";")[0] and "\n" not in message


def test_cifar10_crafted_pickle_is_refused_without_running_it(cifar10, tmp_path):
    root, written = cifar10
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    content = dict(written["data_batch_2"])
    content[b"labels"] = Payload()
    (root / "cifar-10-batches-py" / "data_batch_2").write_bytes(pickle.dumps(content))
    with pytest.raises(DatasetLayoutError, match="data_batch_2") as err:
        CIFAR10DataModule(root=str(root), num_workers=0).setup("fit")
    assert not marker.exists() and "system" in str(err.value)


def test_cifar10_labels_outside_the_ten_classes_are_named(cifar10):
    root, written = cifar10
    content = dict(written["test_batch"])
    content[b"labels"] = [12] + list(content[b"labels"][1:])
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(DatasetLayoutError, match=r"must be in \[0, 9\], got range \[\d+, 12\]"):
        CIFAR10DataModule(root=str(root), num_workers=0).setup("fit")
