"""Read the records of an offline W&B run file (``run-<id>.wandb``) for tests.

The file is W&B's "LevelDB log" format: a 7-byte ``:W&B`` header, then 32 KiB
blocks of chunks, each with a 7-byte header (crc32c, little-endian length,
type: 1 full, 2 first, 3 middle, 4 last) and a serialised
``wandb_internal_pb2.Record``. Reading it directly lets the tests check *what*
an offline run recorded (config, complexity, metrics), not just that a file exists.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

_BLOCK = 32 * 1024
_HEADER = 7


def read_records(path: str | Path) -> list[wandb_internal_pb2.Record]:
    """All records of one ``.wandb`` file, in order."""
    data = Path(path).read_bytes()
    if not data.startswith(b":W&B"):
        raise ValueError(f"{path} is not a W&B run file (header {data[:7]!r})")
    records: list[wandb_internal_pb2.Record] = []
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer too short for a header: zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if kind == 0:  # zero padding up to the block end
            pos += left
            continue
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 1:
            payload = chunk
        elif kind == 2:
            pending = chunk
            continue
        elif kind == 3:
            pending += chunk
            continue
        else:
            payload, pending = pending + chunk, b""
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def _items(updates) -> dict[str, Any]:
    """``{key: value}`` of a repeated config/history/summary item field."""
    return {(u.key or "/".join(u.nested_key)): json.loads(u.value_json) for u in updates}


def run_contents(path: str | Path) -> dict[str, Any]:
    """``{"run": {...}, "config": {...}, "history": [{...}, ...], "summary": {...}}`` of a
    run file; ``run`` holds what ``wandb.init`` was given: id, name, project, group,
    job_type, notes and tags."""
    run: dict[str, Any] = {}
    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            config.update(_items(record.config.update))
        elif kind == "run":
            r = record.run
            run = {
                "id": r.run_id,
                "name": r.display_name,
                "project": r.project,
                "group": r.run_group,
                "job_type": r.job_type,
                "notes": r.notes,
                "tags": list(r.tags),
            }
            config.update(_items(r.config.update))
        elif kind == "history":
            history.append(_items(record.history.item))
        elif kind == "summary":
            summary.update(_items(record.summary.update))
    return {"run": run, "config": config, "history": history, "summary": summary}
