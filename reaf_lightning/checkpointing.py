"""Checkpoints that are never half-written and are checked before a run trusts them (issue 6).

Not part of the paper: this keeps the paper's long runs (SPEC.md §4: 200 CIFAR
epochs, 100 ImageNet epochs) from losing work.

:class:`AtomicCheckpointIO` writes a checkpoint to a hidden temporary file *in
the destination directory*, ``fsync``\\ s it, renames it onto the final name
with :func:`os.replace` and ``fsync``\\ s the directory. Lightning's default
(``TorchCheckpointIO`` -> ``_atomic_save``) serialises into memory and then
writes through an fsspec transaction whose temporary file lives in the system
temp dir: when that is another file system than the checkpoint directory
(local ``/tmp``, checkpoints on NFS/Lustre — the usual cluster setup) the
final step is ``shutil.move``, i.e. a *copy into the final name*, and a crash
or a full disk during the copy leaves a truncated ``last.ckpt`` in place of
the previous good one (``tests/test_reliability_checkpoints.py`` shows it).
It also never ``fsync``\\ s, and leaks its temporary file on ``SIGKILL``.

:func:`inspect_checkpoint` opens a checkpoint the way Lightning will and
reports every problem (missing, corrupt, not a Lightning checkpoint, weights
only when resuming) as a one-line :class:`CheckpointError`;
:func:`check_compatible` compares its ``state_dict`` with a model's.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import socket
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from torch import nn

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointError",
    "CheckpointInfo",
    "check_compatible",
    "find_last_checkpoint",
    "inspect_checkpoint",
]

#: Keys every Lightning checkpoint has (``Trainer.save_checkpoint``).
LIGHTNING_KEYS = ("state_dict", "epoch", "global_step", "pytorch-lightning_version")
_TMP_SUFFIX = ".tmp"
_LAST = re.compile(r"^last(-v?\d+)?\.ckpt$")


class CheckpointError(ValueError):
    """A checkpoint cannot be used: missing, corrupt, not from Lightning, or incompatible."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose saves are all-or-nothing on local file systems.

    A reader (``--ckpt_path last``, ``reaf-analysis``) sees either the previous
    complete file or the new complete file, whatever happens during the save
    (exception, ``SIGKILL``, full disk, node crash after the rename). Remote
    URLs (``s3://``, ``gs://``) are passed to Lightning's implementation: an
    object-store upload is already atomic.

    A save interrupted by ``SIGKILL`` leaves a hidden
    ``.<name>.<host>.<pid>.tmp`` next to the checkpoint; the next save of the
    same name on the same host removes those of processes that no longer exist.
    """

    def save_checkpoint(
        self,
        checkpoint: dict[str, Any],
        path: str | os.PathLike[str],
        storage_options: Any | None = None,
    ) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        final = Path(str(path).removeprefix("file://"))
        final.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(final)
        tmp = final.with_name(f".{final.name}.{_host()}.{os.getpid()}{_TMP_SUFFIX}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        _fsync_dir(final.parent)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def _remove_stale_temporaries(final: Path) -> None:
    """Delete ``.<name>.<this host>.<pid>.tmp`` files whose process is gone (killed mid-save)."""
    prefix = f".{final.name}.{_host()}."
    with contextlib.suppress(OSError):
        for entry in os.scandir(final.parent):
            name = entry.name
            if not (name.startswith(prefix) and name.endswith(_TMP_SUFFIX)):
                continue
            pid = name[len(prefix) : -len(_TMP_SUFFIX)]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX; a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass(frozen=True)
class CheckpointInfo:
    """What a run needs to know about a checkpoint before handing it to Lightning."""

    path: Path
    epoch: int
    global_step: int
    shapes: dict[str, tuple[int, ...]]
    hyper_parameters: dict[str, Any]


def inspect_checkpoint(
    path: str | os.PathLike[str], *, resume: bool = False, weights_only: bool = True
) -> CheckpointInfo:
    """Open ``path`` like Lightning will and check it is a usable Lightning checkpoint.

    Tensors are memory-mapped, so this reads little more than the file's
    index even for a large checkpoint (Lightning loads it again afterwards).

    Args:
        path: the ``.ckpt`` file.
        resume: the checkpoint will resume ``fit``, so it must hold the
            optimizer state (not a ``save_weights_only`` checkpoint).
        weights_only: load with ``torch.load(weights_only=...)`` as Lightning will.

    Raises:
        CheckpointError: naming the file and what is wrong with it.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint is not a file: {path}")
    content = _load(path, weights_only)
    if not isinstance(content, Mapping):
        raise CheckpointError(
            f"{path} is not a Lightning checkpoint (it holds a {type(content).__name__}, "
            f"not a dict with {', '.join(LIGHTNING_KEYS)})"
        )
    missing = [k for k in LIGHTNING_KEYS if k not in content]
    if missing:
        hint = (
            "; it looks like a bare state_dict (load it with ImageClassifier.net.load_state_dict)"
            if content and all(isinstance(v, torch.Tensor) for v in content.values())
            else ""
        )
        raise CheckpointError(
            f"{path} is not a Lightning checkpoint: missing {', '.join(missing)}{hint}"
        )
    state = content["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise CheckpointError(f"{path}: 'state_dict' is not a mapping of tensors")
    if resume and not content.get("optimizer_states"):
        raise CheckpointError(
            f"{path} holds only the model weights (saved with save_weights_only), so it cannot "
            "resume training; use it with validate/test/predict, or resume from a full checkpoint"
        )
    hparams = content.get("hyper_parameters") or {}
    return CheckpointInfo(
        path=path,
        epoch=int(content["epoch"]),
        global_step=int(content["global_step"]),
        shapes={k: tuple(v.shape) for k, v in state.items()},
        hyper_parameters=dict(hparams) if isinstance(hparams, Mapping) else {},
    )


def _load(path: Path, weights_only: bool) -> Any:
    """``torch.load`` (memory-mapped when possible) with failures as one-line errors."""
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
    except Exception:  # noqa: BLE001 - legacy format or damage: the plain load says which
        pass
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err):
            raise CheckpointError(
                f"{path} contains Python objects that torch.load(weights_only=True) refuses; "
                "if you trust the file, pass --weights_only false"
            ) from err
        raise CheckpointError(_corrupt(path, err)) from err
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise CheckpointError(_corrupt(path, err)) from err


def _corrupt(path: Path, err: BaseException) -> str:
    return (
        f"corrupt checkpoint {path}: torch.load fails ({_one_line(err)}); the file is damaged "
        "or incomplete"
    )


def describe_mismatch(expected: dict[str, tuple[int, ...]], got: dict[str, tuple[int, ...]]) -> str:
    """One line on how state_dict shapes ``got`` differ from ``expected`` ("" if they fit).

    Counts missing/unexpected keys and shape mismatches with an example of each,
    instead of ``load_state_dict``'s multi-screen message. Shared by the training
    CLI and ``reaf-analysis``.
    """
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [k for k in expected if k in got and got[k] != expected[k]]
    details = []
    if missing:
        details.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        details.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if shapes:
        k = shapes[0]
        details.append(
            f"{len(shapes)} shape mismatches (e.g. {k}: checkpoint {got[k]} vs model {expected[k]})"
        )
    return "; ".join(details)


def check_compatible(info: CheckpointInfo, model: nn.Module, what: str = "the model") -> None:
    """Raise :class:`CheckpointError` unless ``info``'s state_dict loads strictly into ``model``."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    details = describe_mismatch(expected, info.shapes)
    if details:
        raise CheckpointError(
            f"checkpoint {info.path} does not fit {what}: {details}; use the model "
            "settings the checkpoint was trained with"
        )


def find_last_checkpoint(dirpath: str | os.PathLike[str]) -> Path | None:
    """The newest ``last.ckpt`` / ``last-vN.ckpt`` in ``dirpath`` (what ``ckpt_path="last"`` means).

    Same rule as Lightning's ``ModelCheckpoint``: among files named
    ``last*.ckpt`` the most recently modified wins. Hidden temporaries of
    :class:`AtomicCheckpointIO` never match.
    """
    directory = Path(dirpath)
    if not directory.is_dir():
        return None
    candidates = [p for p in directory.iterdir() if _LAST.match(p.name) and p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime_ns) if candidates else None


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:300]
