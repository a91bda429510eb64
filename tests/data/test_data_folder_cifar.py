"""The ImageFolder module's CIFAR-style recipe (``augmentation="cifar"``) on real 32-pixel PNGs.

References: every pad-4 crop and mirror of the source image enumerated with numpy, and the
folder's mean/std computed with numpy over the pixels read back with PIL.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.fake_data import folder_datamodule, write_image_folder
from PIL import Image

from reaf_lightning.data import IMAGENET_MEAN


@pytest.fixture()
def folder(tmp_path):
    written = write_image_folder(tmp_path, classes=("a", "b"), n_per_class=3, size=32, seed=4)
    return tmp_path, written


def _pixels(paths) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths]) / 255.0


def test_cifar_recipe_normalises_by_the_training_images_own_statistics(folder):
    root, written = folder
    pixels = _pixels([p for p, _ in written["train"]]).reshape(-1, 3)
    dm = folder_datamodule(root, augmentation="cifar")
    assert dm.hparams["mean"] is None  # not known before set-up
    dm.setup("fit")
    assert dm.mean == pytest.approx(tuple(pixels.mean(0)), abs=1e-9)
    assert dm.std == pytest.approx(tuple(pixels.std(0)), abs=1e-9)
    assert (dm.hparams["mean"], dm.hparams["std"]) == (dm.mean, dm.std)  # what checkpoints keep
    # Evaluation: the 32-pixel image itself, normalised by those statistics.
    x, y = dm.val_dataset[4]
    source = _pixels([written["val"][4][0]])[0].transpose(2, 0, 1)
    mean, std = (np.asarray(v).reshape(3, 1, 1) for v in (dm.mean, dm.std))
    np.testing.assert_allclose(x.numpy(), (source - mean) / std, atol=1e-5)
    assert y == written["val"][4][1]


def test_a_constant_channel_gets_one_8bit_level_as_its_std(tmp_path):
    """Images whose blue channel is constant: its std is 0 in numpy (~1e-9 summed in float),
    which would scale one level of noise to +-1e7; one 8-bit level is used, with a warning."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                pixels[..., 2] = 77
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    reference = _pixels(sorted((tmp_path / "train").rglob("*.png"))).reshape(-1, 3)
    assert reference.std(0)[2] < 1e-9
    dm = folder_datamodule(tmp_path, augmentation="cifar")
    with pytest.warns(UserWarning, match=r"channel\(s\) B \(std .*\) of the 4 images"):
        dm.setup("fit")
    assert dm.std[:2] == pytest.approx(tuple(reference.std(0)[:2]), abs=1e-9)
    assert dm.std[2] == pytest.approx(1 / 255)
    x, _ = dm.val_dataset[0]
    assert torch.isfinite(x).all() and x[2].abs().max() < 1e-3  # the constant channel is ~0


def test_cifar_recipe_keeps_given_statistics(folder):
    root, written = folder
    pixels = _pixels([p for p, _ in written["train"]]).reshape(-1, 3)
    dm = folder_datamodule(root, augmentation="cifar", mean=IMAGENET_MEAN)
    dm.setup("fit")
    assert dm.mean == IMAGENET_MEAN and dm.std == pytest.approx(tuple(pixels.std(0)), abs=1e-9)
    plain = folder_datamodule(root)  # the other recipes keep ImageNet's statistics
    plain.setup("fit")
    assert plain.mean == IMAGENET_MEAN and plain.hparams["mean"] is None


def test_cifar_recipe_trains_on_pad4_crops_and_flips_of_the_image(folder):
    root, written = folder
    dm = folder_datamodule(root, augmentation="cifar", mean=(0, 0, 0), std=(1, 1, 1))
    dm.setup("fit")
    source = (_pixels([dm.train_dataset.samples[1][0]])[0] * 255).round().astype(np.uint8)
    padded = np.pad(source, ((4, 4), (4, 4), (0, 0)))
    windows = {
        (dy, dx, flip): (padded[dy : dy + 32, dx : dx + 32, :][:, :: -1 if flip else 1])
        for dy in range(9)
        for dx in range(9)
        for flip in (False, True)
    }
    torch.manual_seed(0)
    seen = set()
    for _ in range(60):
        x, _ = dm.train_dataset[1]
        drawn = (x * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        matches = [key for key, window in windows.items() if np.array_equal(window, drawn)]
        assert matches, "a training image that is no pad-4 crop (or mirror) of its source"
        seen.update(matches)
    assert {flip for _, _, flip in seen} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in seen}) > 10  # offsets vary over the 9 x 9 range
