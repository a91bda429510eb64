"""The run record's schema, writer and bounded reader (reaf_lightning.runs.record).

Besides the cases written out, hypothesis feeds the reader arbitrary bytes, arbitrary
JSON and arbitrary values under the record's own keys: the only failure allowed is a
one-line :class:`RecordError` naming the file; and any valid record reads back equal.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import pytest
from helpers.strategies import json_values
from hypothesis import given, settings
from hypothesis import strategies as st

from reaf_lightning.runs.record import (
    MAX_DEPTH,
    MAX_EPOCHS,
    MAX_RECORD_BYTES,
    DataSpec,
    EpochCount,
    NetworkSpec,
    RecordError,
    RunRecord,
    SplitSeen,
    StageMetrics,
    read_record,
    record_from_dict,
    write_record,
)

KEYS = ["format", "seed", "finished", "missing", "network", "data", "recipe", "epochs"]
KEYS += ["precision", "provenance", "params_m", "gmacs", "fit", "validate", "test", "files"]


def _record() -> RunRecord:
    return RunRecord(
        seed=3,
        finished=True,
        network=NetworkSpec(arch="reaf_resnet18", kwargs={"reaf": "4-3-4"}, num_classes=10),
        data=DataSpec(
            class_path="reaf_lightning.data.DigitsDataModule",
            dataset="digits",
            num_classes=10,
            sizes={"train": 1437, "val": 360},
        ),
        fit=StageMetrics(
            epoch=1,
            final={"val/acc1": 0.5, "val/loss": math.nan},
            seen={"val": SplitSeen(limit=2, batches=2, images=32, classes=9)},
        ),
    )


def test_round_trip_and_non_finite_is_null(tmp_path):
    path = tmp_path / "metrics.json"
    write_record(path, _record())
    on_disk = json.loads(path.read_text())
    assert on_disk["fit"]["final"] == {"val/acc1": 0.5, "val/loss": None}  # NaN -> null
    assert on_disk["network"]["kwargs"] == {"reaf": "4-3-4"}
    back = read_record(path)
    assert back.seed == 3 and back.finished and back.fit.epoch == 1
    assert back.fit.final["val/loss"] is None
    assert on_disk["fit"]["seen"] == {"val": {"limit": 2, "batches": 2, "images": 32, "classes": 9}}
    assert back.data.sizes == {"train": 1437, "val": 360} and back.fit.seen["val"].classes == 9
    assert not [p for p in tmp_path.iterdir() if p.name != "metrics.json"]  # no temporaries


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("[1, 2]", "must be a JSON object, not a list"),
        ('"text"', "not a string"),
        ("true", "not a boolean"),
        ('{"seed": true}', "seed"),
        ('{"seed": "0"}', "seed"),
        ('{"fit": {"final": {"val/acc1": "0.9"}}}', "fit.final.val/acc1"),
        ('{"fit": {"seen": {"val": {"images": true}}}}', "fit.seen.val.images"),
        ('{"fit": {"seen": {"val": {"classes": 2.5}}}}', "fit.seen.val.classes"),
        ('{"data": {"class_path": "x", "sizes": {"val": "360"}}}', "data.sizes.val"),
        ('{"unknown": 1}', "unknown"),
        ("{", "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "nested deeper"),
        ('{"recipe": ' + '{"a": ' * (MAX_DEPTH + 2) + "1" + "}" * (MAX_DEPTH + 3), "nested"),
    ],
)
def test_malformed_records_are_one_line_naming_the_file(tmp_path, content, words):
    path = tmp_path / "metrics.json"
    path.write_text(content)
    with pytest.raises(RecordError) as err:
        read_record(path)
    message = str(err.value)
    assert str(path) in message and words in message and "\n" not in message


def test_non_utf8_oversized_and_non_regular_files_are_refused(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_bytes(b'{"seed": "\xff"}')
    with pytest.raises(RecordError, match="not UTF-8"):
        read_record(path)
    path.write_bytes(b" " * (MAX_RECORD_BYTES + 1) + b"{}")
    with pytest.raises(RecordError, match="more than the 1,048,576 expected"):
        read_record(path)
    path.unlink()
    path.symlink_to("/dev/zero")  # would never end if read
    with pytest.raises(RecordError, match="not a regular file"):
        read_record(path)
    path.unlink()
    os.mkfifo(path)  # would block forever if opened for reading without O_NONBLOCK
    with pytest.raises(RecordError, match="not a regular file"):
        read_record(path)
    path.unlink()
    path.mkdir()
    with pytest.raises(RecordError, match="metrics.json"):
        read_record(path)


def test_a_checkpoint_entry_is_validated_the_same_way():
    with pytest.raises(RecordError, match="checkpoint.ckpt: .*network.num_classes"):
        record_from_dict({"network": {"arch": "x", "num_classes": "ten"}}, "checkpoint.ckpt")
    assert record_from_dict(_record().to_json_dict(), "x") == _record()


def test_impossible_values_and_keys_given_twice_are_refused(tmp_path):
    path = tmp_path / "metrics.json"
    for content, words in [
        ('{"seed": 1, "seed": 2}', "key 'seed' is given twice"),
        ('{"fit": {"final": {"a": 1, "a": 2}}}', "key 'a' is given twice"),
        ('{"epochs": {"reached": -1}}', "epochs.reached: Input should be greater than or equal"),
        ('{"epochs": {"planned": 10000000}}', "epochs.planned: Input should be less than"),
        ('{"gmacs": 1' + "0" * 308 + "}", "gmacs"),
        ('{"params_m": -0.5}', "params_m"),
        ('{"params_m": Infinity}', "params_m: Input should be a finite number"),
        ('{"fit": {"final": {"val/acc1": 1.5}}}', "val/acc1 = 1.5 is not a fraction in [0, 1]"),
        ('{"test": {"final": {"test/err5": -0.1}}}', "test/err5 = -0.1 is not a fraction"),
        ('{"seed": 4294967296}', "seed"),
        ('{"files": ["../../home/x"]}', "is not a plain path"),
        ('{"missing": "' + "x" * 1001 + '"}', "missing"),
    ]:
        path.write_text(content)
        with pytest.raises(RecordError) as err:
            read_record(path)
        assert str(path) in str(err.value) and words in str(err.value), content
        assert "\n" not in str(err.value)
    path.write_text('{"fit": {"final": {"val/loss": NaN, "val/acc1": 0.5}}}')  # older writers
    assert read_record(path).fit.final == {"val/loss": None, "val/acc1": 0.5}


# -- hypothesis: anything in, a record or one line out -----------------------------------------
_json = json_values(max_leaves=25, text_size=20)
_record_like = st.dictionaries(st.sampled_from(KEYS), _json, max_size=8)


def _read_bytes(data: bytes) -> RunRecord | None:
    """``read_record`` of a file holding ``data``: the record, or ``None`` after checking the
    refusal is one line naming the file."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "metrics.json"
        path.write_bytes(data)
        try:
            return read_record(path)
        except RecordError as err:
            assert str(path) in str(err) and "\n" not in str(err)
            return None


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400) | st.text(max_size=200).map(str.encode))
def test_any_bytes_are_a_record_or_one_line(data):
    _read_bytes(data)


@settings(max_examples=150, deadline=None)
@given(_json | _record_like)
def test_any_json_is_a_record_or_one_line(value):
    _read_bytes(json.dumps(value).encode())
    try:
        record_from_dict(value, "checkpoint.ckpt")
    except RecordError as err:
        assert str(err).startswith("checkpoint.ckpt") and "\n" not in str(err)


_part = st.text(st.characters(blacklist_characters="/\0"), min_size=1, max_size=8).filter(
    lambda p: p not in (".", "..")
)
_entries = st.lists(_part, min_size=1, max_size=3).map("/".join)
_fraction = st.none() | st.floats(0.0, 1.0)
_metrics = st.dictionaries(st.sampled_from(["val/acc1", "val/err1", "test/err5"]), _fraction)
_stage = st.none() | st.builds(
    StageMetrics, epoch=st.none() | st.integers(0, MAX_EPOCHS), final=_metrics, best=_metrics
)
_plain = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10)
_records = st.builds(
    RunRecord,
    seed=st.none() | st.integers(0, 2**32 - 1),
    finished=st.booleans(),
    missing=st.none() | st.text(max_size=40),
    network=st.none()
    | st.builds(NetworkSpec, arch=st.text(max_size=10), num_classes=st.integers(1, 1000)),
    recipe=st.dictionaries(
        st.text(max_size=8), _plain | st.floats(allow_nan=False, allow_infinity=False), max_size=4
    ),
    epochs=st.builds(
        EpochCount,
        planned=st.none() | st.integers(0, MAX_EPOCHS),
        reached=st.integers(0, MAX_EPOCHS),
    ),
    params_m=st.none() | st.floats(0, 1e6),
    gmacs=st.none() | st.floats(0, 1e6),
    fit=_stage,
    validate_=_stage,
    test=_stage,
    files=st.lists(_entries | _entries.map(lambda e: "/" + e), max_size=5),
)


@settings(max_examples=100, deadline=None)
@given(_records)
def test_valid_records_read_back_equal(record):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "metrics.json"
        write_record(path, record)
        assert read_record(path) == record
    assert record_from_dict(record.to_json_dict(), "x") == record


def test_what_the_network_was_fed_is_checked_and_read_back_from_either_place():
    fed = DataSpec(
        class_path="x.Data", init_args={"image_size": 99, "root": "/r"}, image_size=16,
        mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], num_classes=10,
    )  # fmt: skip
    assert fed.inputs("f") == {"image_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3,
                               "num_classes": 10}  # fmt: skip
    # an older record: the init settings that gave them, checked the same way
    old = DataSpec(class_path="x.Data", init_args={"image_size": 32, "resize_size": 36})
    assert old.inputs("f") == {"image_size": 32, "resize_size": 36}
    for args, words in [
        ({"image_size": 0}, "data image_size: an image side is an integer in [1, 4096], got 0"),
        ({"resize_size": 5000}, "data resize_size: an image side is an integer"),
        ({"mean": [0.5, 0.5]}, "data mean: must be 3 finite numbers"),
        ({"std": [1.0, 0.0, 1.0]}, "data std: must be > 0"),
    ]:
        with pytest.raises(RecordError, match=words.replace("[", r"\[").replace("]", r"\]")):
            DataSpec(class_path="x.Data", init_args=args).inputs("f")
    for fields in ({"image_size": 4097}, {"num_classes": 0}, {"mean": [0.0, math.inf, 0.0]}):
        with pytest.raises(RecordError, match="data"):
            record_from_dict({"data": {"class_path": "x.Data", **fields}}, "f")


#: Any JSON value a file could hold in place of a setting.
_setting = json_values(max_leaves=8)
_keys = st.sampled_from(["image_size", "resize_size", "mean", "std", "num_classes", "classes"])


@settings(max_examples=200)
@given(
    fed=st.dictionaries(_keys, _setting, max_size=4),
    args=st.dictionaries(_keys, _setting, max_size=4),
)
def test_what_a_file_says_was_fed_is_in_range_or_one_refusal(fed, args):
    """Whatever a record holds, a reader gets values in range or a RecordError naming the
    file: never another exception, never an image side it would allocate without bound."""
    content = {"data": {"class_path": "x.Data", "init_args": args, **fed}}
    try:
        inputs = record_from_dict(content, "f.ckpt").data.inputs("f.ckpt")
    except RecordError as err:
        assert "f.ckpt" in str(err) and "\n" not in str(err)
        return
    for key in ("image_size", "resize_size"):
        assert key not in inputs or 1 <= inputs[key] <= 4096
    for key in ("mean", "std"):
        assert key not in inputs or (len(inputs[key]) == 3 and all(map(math.isfinite, inputs[key])))
    assert "std" not in inputs or min(inputs["std"]) > 0
