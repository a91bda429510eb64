"""Evaluation visits a split in one fixed, class-mixed order, so a limited evaluation of a
split stored in class order (an image folder, a label-sorted file) still sees every class.

The order's properties are checked on arbitrary labels (hypothesis); the data modules'
loaders on splits written in class order, against what a hand count says the first batch
must hold; and a real ``reaf-lightning validate`` with ``limit_val_batches`` on a
label-sorted CIFAR-10 file records (and warns about) the classes it saw.
"""

from __future__ import annotations

import json
import pickle
from collections import Counter

import pytest
from helpers.fake_data import folder_datamodule, write_cifar10, write_image_folder
from helpers.tiny_run import QUICKSTART
from hypothesis import given, settings
from hypothesis import strategies as st

from reaf_lightning.data import CIFAR10DataModule
from reaf_lightning.data.base import class_mixed_order
from reaf_lightning.training.cli import run


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=80))
def test_the_order_is_a_permutation_mixing_classes_in_proportion(labels):
    order = class_mixed_order(labels)
    assert sorted(order) == list(range(len(labels)))
    for label in set(labels):  # each class keeps its file order
        mine = [i for i in order if labels[i] == label]
        assert mine == sorted(mine)
    total, classes = Counter(labels), len(set(labels))
    seen: Counter = Counter()
    for m, index in enumerate(order, start=1):
        seen[labels[index]] += 1
        for label, n in total.items():  # every prefix: each class near its share
            share = m * n / len(labels)
            assert abs(seen[label] - share) <= 1.5 + 1.5 * classes * n / len(labels)
    assert class_mixed_order(labels) == order  # fixed: no randomness


def test_equal_classes_stored_in_class_order_come_one_of_each_in_turn():
    labels = [c for c in range(5) for _ in range(4)]  # 0,0,0,0,1,1,1,1,...
    order = class_mixed_order(labels)
    assert [labels[i] for i in order] == [0, 1, 2, 3, 4] * 4
    assert order[:5] == [0, 4, 8, 12, 16]  # the first image of each class, in turn


def test_an_image_folders_first_validation_batch_holds_several_classes(tmp_path):
    written = write_image_folder(tmp_path, classes=("ant", "bee", "cat"), n_per_class=3)
    assert [y for _, y in written["val"]] == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # stored by class
    dm = folder_datamodule(tmp_path, batch_size=3)
    dm.setup("validate")
    x, y = next(iter(dm.val_dataloader()))
    assert y.tolist() == [0, 1, 2]
    _, y = next(iter(dm.predict_dataloader()))  # prediction keeps the file order
    assert y.tolist() == [0, 0, 0]


def _sorted_cifar10(root) -> list[int]:
    """A fake CIFAR-10 whose test file is sorted by label (3 images of each class)."""
    written = write_cifar10(root, n_per_batch=8, n_test=30)
    test = written["test_batch"]
    order = sorted(range(30), key=lambda i: test[b"labels"][i])
    test[b"data"] = test[b"data"][order]
    test[b"labels"] = [test[b"labels"][i] for i in order]
    with open(root / "cifar-10-batches-py" / "test_batch", "wb") as handle:
        pickle.dump(test, handle, protocol=2)
    return test[b"labels"]


def test_a_limited_validation_of_a_label_sorted_file_sees_and_records_its_classes(
    tmp_path, monkeypatch
):
    root = tmp_path / "cifar10"
    labels = _sorted_cifar10(root)
    assert labels[:4] == [0, 0, 0, 1]  # the first batch of the file order: two classes
    dm = CIFAR10DataModule(root=str(root), batch_size=4, num_workers=0)
    dm.setup("validate")
    assert next(iter(dm.val_dataloader()))[1].tolist() == [0, 1, 2, 3]
    monkeypatch.chdir(tmp_path)
    args = ["validate", "--config", QUICKSTART, "--model.arch", "test_resnet"]
    args += ["--model.arch_kwargs", "{}", "--data", "CIFAR10DataModule"]
    args += ["--data.init_args.root", str(root), "--data.init_args.batch_size", "4"]
    args += ["--data.init_args.num_workers", "0", "--trainer.limit_val_batches", "1"]
    args += ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    args += ["--trainer.default_root_dir", str(tmp_path / "run")]
    warned = r"validation saw 4 of the model's 10 classes \(4 images, trainer"
    with pytest.warns(UserWarning, match=warned):
        cli = run(args)
    record = json.loads((tmp_path / "run" / "seed0" / "metrics.json").read_text())
    assert record["validate"]["seen"] == {
        "val": {"limit": 1, "batches": 1, "images": 4, "classes": 4}
    }
    assert record["data"]["dataset"] == "cifar10" and record["data"]["num_classes"] == 10
    assert record["data"]["sizes"] == {"train": 40, "val": 30, "test": 30}
    assert cli.trainer.callback_metrics["val/acc1"].numel() == 1
