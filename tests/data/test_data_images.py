"""Tests of the image-folder data modules and image decoding (reaf_lightning.data.images)
on small trees of real PNG/JPEG/TIFF/PGM/BMP files written by the tests."""

from __future__ import annotations

import json
import pickle
import shutil
import warnings

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torchvision
from helpers.fake_data import folder_datamodule, write_corrupt_image, write_image_folder
from PIL import Image
from torch.utils.data import DataLoader

from reaf_lightning.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CorruptImageError,
    CorruptImageWarning,
    DatasetLayoutError,
    DatasetNotFoundError,
    DatasetPermissionError,
    ImageFileDataset,
    ImageNetDataModule,
    default_eval_resize,
    load_rgb,
    verify_images,
)
from reaf_lightning.errors import ConfigError, DataError


def test_image_folder_labels_follow_torchvision_imagefolder(tmp_path):
    classes = ("zebra", "ant", "moth")
    write_image_folder(tmp_path, classes=classes, n_per_class=3, size=(48, 40))
    # nested folders and a linked folder are walked as ImageFolder walks them
    write_image_folder(tmp_path / "extra", classes=("deep",), n_per_class=2, splits=("x",))
    shutil.move(tmp_path / "extra" / "x" / "deep", tmp_path / "train" / "ant" / "deep")
    (tmp_path / "val" / "moth" / "linked").symlink_to(tmp_path / "train" / "ant" / "deep")
    dm = folder_datamodule(tmp_path)
    assert dm.num_classes == 3 and dm.classes == sorted(classes)
    dm.setup("fit")
    for split in ("train", "val"):
        ref = torchvision.datasets.ImageFolder(str(tmp_path / split))
        got = [(str(p), y) for p, y in getattr(dm, f"{split}_dataset").samples]
        assert got == [(str(p), y) for p, y in ref.samples]
    x, y = next(iter(dm.predict_dataloader()))  # file order
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert y.tolist() == [s[1] for s in dm.val_dataset.samples[:4]]
    xt, _ = next(iter(dm.train_dataloader()))
    assert xt.shape == (4, 3, 32, 32)


def test_image_folder_eval_transform_is_resize_then_centre_crop(tmp_path):
    written = write_image_folder(tmp_path, classes=("a", "b"), n_per_class=1, size=(100, 80))
    dm = folder_datamodule(tmp_path, image_size=64, resize_size=72, mean=(0, 0, 0), std=(1, 1, 1))
    dm.setup("fit")
    path, label = written["val"][0]
    x, y = dm.val_dataset[0]
    assert y == label
    # independent reference with PIL: 100 x 80 -> shorter side 72 -> 90 x 72, centre 64 x 64
    img = Image.open(path).convert("RGB").resize((90, 72), Image.Resampling.BILINEAR)
    ref = np.asarray(img.crop((13, 4, 77, 68)), dtype=np.float32).transpose(2, 0, 1) / 255
    torch.testing.assert_close(x, torch.from_numpy(ref), atol=1e-6, rtol=0)
    # small images: eval resize defaults to the image size itself; larger: /0.875
    assert default_eval_resize(32) == 32 and default_eval_resize(224) == 256


def test_imagenet_module_uses_paper_transforms_and_reads_jpeg(tmp_path):
    write_image_folder(tmp_path, classes=("n01", "n02"), n_per_class=2, size=260, ext=".JPEG")
    dm = ImageNetDataModule(str(tmp_path), batch_size=2, num_workers=0, verify_cache=None)
    assert dm.num_classes == 2 and dm.image_size == 224 and dm.resize_size == 256
    assert dm.mean == IMAGENET_MEAN and dm.std == IMAGENET_STD
    dm.setup("fit")
    x, y = next(iter(dm.val_dataloader()))  # one image of each class first
    assert x.shape == (2, 3, 224, 224) and y.tolist() == [0, 1]
    names = [type(t).__name__ for t in dm.train_transform().transforms]
    assert names[:2] == ["RandomResizedCrop", "RandomHorizontalFlip"]  # ours, the default
    paper = ImageNetDataModule(str(tmp_path), augmentation="scale_jitter", verify_cache=None)
    names = [type(t).__name__ for t in paper.train_transform().transforms]
    assert names[:3] == ["RandomResize", "RandomCrop", "RandomHorizontalFlip"]
    assert paper.scale_jitter_range == (256, 480)


def test_image_folder_missing_root_and_split(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist") as err:
        folder_datamodule(tmp_path / "nope").setup("fit")
    assert str(tmp_path / "nope") in str(err.value)
    write_image_folder(tmp_path / "d", splits=("train",))
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "d" / "val")):
        _ = folder_datamodule(tmp_path / "d").num_classes


def test_image_folder_empty_class_folder_is_named(tmp_path):
    write_image_folder(tmp_path, classes=("a", "b"), n_per_class=1)
    (tmp_path / "val" / "c").mkdir()
    (tmp_path / "train" / "c").mkdir()
    (tmp_path / "train" / "c" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetLayoutError, match="without any image") as err:
        folder_datamodule(tmp_path).setup("fit")
    assert str(tmp_path / "train" / "c") in str(err.value)
    assert str(tmp_path / "val" / "c") in str(err.value)


def test_image_folder_mismatched_classes_are_named(tmp_path):
    write_image_folder(tmp_path, classes=("a", "b", "c"), splits=("train",), n_per_class=1)
    write_image_folder(tmp_path, classes=("a", "b", "d"), splits=("val",), n_per_class=1)
    with pytest.raises(DatasetLayoutError, match=r"only in train: \['c'\]; only in val: \['d'\]"):
        _ = folder_datamodule(tmp_path).num_classes


def test_image_folder_flat_val_gets_a_hint(tmp_path):
    write_image_folder(tmp_path, classes=("a",), splits=("train",), n_per_class=1)
    (tmp_path / "val").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(DatasetLayoutError, match="1 loose images"):
        folder_datamodule(tmp_path).setup("fit")


def _write_with_corrupt(tmp_path):
    write_image_folder(tmp_path, classes=("a", "b"), n_per_class=2, size=36)
    bad_train = write_corrupt_image(tmp_path / "train" / "a" / "a_9.png")
    bad_val = write_corrupt_image(tmp_path / "val" / "b" / "b_5.JPEG")
    return bad_train, bad_val


def test_corrupt_image_skipped_with_warning_naming_file_and_count(tmp_path):
    bad_train, bad_val = _write_with_corrupt(tmp_path)
    dm = folder_datamodule(tmp_path, resize_size=32)
    with pytest.warns(CorruptImageWarning, match=r"left out 1 undecodable image\(s\) of 5"):
        dm.setup("fit")  # skip mode: only the evaluation split is checked up front
    ds = dm.train_dataset
    # replace the random training transform by the deterministic eval one for comparison
    ds.transform = dm.eval_transform()
    bad_index = [p for p, _ in ds.samples].index(str(bad_train))
    with pytest.warns(CorruptImageWarning, match="a_9.png") as rec:
        x, y = ds[bad_index]
    assert "1 unreadable file(s) skipped" in str(rec[0].message)
    nxt = ds[bad_index + 1]
    assert torch.equal(x, nxt[0]) and y == nxt[1]  # substitute = next readable sample
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same file warns only once
        ds[bad_index]
    # The evaluation split never substitutes: the corrupt file is out of the index.
    dm_val = folder_datamodule(tmp_path, batch_size=5)
    with pytest.warns(CorruptImageWarning, match="b_5.JPEG"):
        dm_val.setup("validate")
    assert str(bad_val) in dm_val.left_out and "cannot decode" in dm_val.left_out[str(bad_val)]
    assert str(bad_val) not in [p for p, _ in dm_val.val_dataset.samples]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ((x, y),) = list(dm_val.val_dataloader())
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 1, 0, 1]  # classes interleaved


def test_corrupt_image_error_mode_refuses_at_setup_naming_every_file(tmp_path):
    bad_train, bad_val = _write_with_corrupt(tmp_path)
    cache = tmp_path / "cache.json"
    dm = folder_datamodule(tmp_path, on_corrupt="error", verify_cache=str(cache))
    with pytest.raises(CorruptImageError, match="2 corrupt image") as err:
        dm.setup("fit")
    assert str(bad_train) in str(err.value) and str(bad_val) in str(err.value)
    # after removing them, set-up passes and the cache remembers the good files
    bad_train.unlink()
    bad_val.unlink()
    folder_datamodule(tmp_path, on_corrupt="error", verify_cache=str(cache)).setup("fit")
    assert len(json.loads(cache.read_text())["ok"]) == 8


def test_verify_cache_skips_unchanged_files_and_rechecks_changed_ones(tmp_path):
    written = write_image_folder(tmp_path, classes=("a",), n_per_class=2, splits=("train",))
    paths = [str(p) for p, _ in written["train"]]
    cache = tmp_path / "v.json"
    assert verify_images(paths, cache_file=cache) == {}
    write_corrupt_image(paths[0])  # content (and size) changes -> re-verified
    assert list(verify_images(paths, cache_file=cache)) == [paths[0]]


# ---------------------------------------------------------------------------------------------
# The paper's scale augmentation, predictions, workers, checkpoints
# ---------------------------------------------------------------------------------------------
def test_scale_jitter_resizes_the_shorter_side_within_the_range_then_crops(tmp_path):
    write_image_folder(tmp_path, classes=("a",), n_per_class=1, size=(20, 16), splits=("train",))
    write_image_folder(tmp_path, classes=("a",), n_per_class=1, size=(20, 16), splits=("val",))
    dm = folder_datamodule(
        tmp_path, image_size=8, augmentation="scale_jitter", scale_jitter_range=(8, 12),
        mean=(0, 0, 0), std=(1, 1, 1),
    )  # fmt: skip
    dm.setup("fit")
    source = load_rgb(dm.train_dataset.samples[0][0])
    windows = {}  # shorter side -> every 8x8 crop (and its mirror) of the resized image, uint8
    for side in range(8, 15):  # 13 and 14 would be outside the range
        resized = source.resize((int(side * 20 / 16), side), Image.Resampling.BILINEAR)
        array = torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1)
        crops = array.unfold(1, 8, 1).unfold(2, 8, 1).permute(1, 2, 0, 3, 4).reshape(-1, 3, 8, 8)
        windows[side] = torch.cat([crops, crops.flip(-1)])
    torch.manual_seed(0)
    sides = []
    for _ in range(40):
        x, _ = dm.train_dataset[0]
        pixels = (x * 255).round().to(torch.uint8)
        sides += [s for s, w in windows.items() if (w == pixels).flatten(1).all(1).any()]
    assert len(sides) == 40 and set(sides) == set(range(8, 13))  # both ends inclusive
    with pytest.raises(ConfigError, match="scale_jitter_range"):
        folder_datamodule(
            tmp_path, image_size=16, augmentation="scale_jitter", scale_jitter_range=(8, 12)
        )


def test_predict_samples_name_every_prediction_in_loader_order(tmp_path):
    write_image_folder(tmp_path, classes=("b", "a", "c"), n_per_class=3, size=16)
    dm = folder_datamodule(tmp_path, batch_size=4)
    dm.setup("predict")
    reference = torchvision.datasets.ImageFolder(str(tmp_path / "val")).samples
    assert dm.predict_dataset.samples == [(p, y) for p, y in reference]
    labels = torch.cat([y for _, y in dm.predict_dataloader()]).tolist()
    assert labels == [y for _, y in dm.predict_dataset.samples]


def test_data_errors_keep_their_type_across_dataloader_workers(tmp_path):
    for error in (CorruptImageError, DatasetPermissionError, DatasetNotFoundError):
        copy = pickle.loads(pickle.dumps(error("one line naming '/x.png'")))
        assert type(copy) is error and str(copy) == "one line naming '/x.png'"
        assert isinstance(copy, DataError)
    bad = write_corrupt_image(tmp_path / "bad.png")
    good = tmp_path / "good.png"
    Image.new("RGB", (4, 4)).save(good)
    dataset = ImageFileDataset([(str(good), 0)] * 3 + [(str(bad), 1)], np.asarray, "error")
    loader = DataLoader(dataset, batch_size=1, num_workers=2)
    with pytest.raises(CorruptImageError, match="bad.png"):
        list(loader)


# the stand-in module only trains; the data module brings a val loader anyway
@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader` but have no `validation_step`")
def test_settings_are_saved_in_the_checkpoint(tmp_path):
    write_image_folder(tmp_path / "data", classes=("a", "b"), n_per_class=2, size=16)
    dm = folder_datamodule(tmp_path / "data", image_size=8, mean=(0.1, 0.2, 0.3), resize_size=10)

    class Linear(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3 * 8 * 8, 2)

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.cross_entropy(self.fc(batch[0].flatten(1)), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = pl.Trainer(
        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(Linear(), datamodule=dm)
    trainer.save_checkpoint(tmp_path / "x.ckpt")
    saved = torch.load(tmp_path / "x.ckpt", weights_only=False)["datamodule_hyper_parameters"]
    assert (saved["image_size"], saved["resize_size"], saved["mean"]) == (8, 10, (0.1, 0.2, 0.3))
    assert saved["augmentation"] == "random_resized_crop" and saved["on_corrupt"] == "skip"
