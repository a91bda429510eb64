"""The run record's schema, writer and bounded reader (reaf_lightning.runs.record)."""

from __future__ import annotations

import json
import math
import os

import pytest

from reaf_lightning.runs.record import (
    MAX_DEPTH,
    MAX_RECORD_BYTES,
    DataSpec,
    NetworkSpec,
    RecordError,
    RunRecord,
    SplitSeen,
    StageMetrics,
    read_record,
    record_from_dict,
    write_record,
)


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
