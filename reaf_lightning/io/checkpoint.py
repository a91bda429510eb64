"""Checkpoints: one loader, safe unless the user says otherwise."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

from reaf_lightning.errors import CheckpointError, one_line

__all__ = ["load_checkpoint"]


_PICKLE_PROTOCOL_MARK = 0x80


def _looks_like_torch_file(path: Path) -> bool:
    """A ``torch.save`` file is a zip archive (current format) or a raw pickle (legacy)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return True  # let torch.load report the I/O problem
    return head.startswith(b"PK") or (len(head) > 0 and head[0] == _PICKLE_PROTOCOL_MARK)


def load_checkpoint(path: str | os.PathLike[str], *, weights_only: bool = True) -> Any:
    """``torch.load`` a checkpoint on the CPU, safely unless the user says otherwise.

    Every command loads checkpoints through this function, so every command
    refuses the same files: by default with ``torch.load(weights_only=True)``,
    which cannot execute code from the file. A checkpoint holding other Python
    objects is refused with the reason; only an explicit ``--weights_only
    false`` (the same flag in every command) loads it with the full unpickler.

    Raises:
        CheckpointError: missing, not a file, not a PyTorch file at all, damaged,
            or holding objects the safe loader refuses.
    """
    import torch

    file = Path(path)
    if not file.exists():
        raise CheckpointError(f"checkpoint not found: {file}")
    if not file.is_file():
        raise CheckpointError(f"checkpoint is not a file: {file}")
    if not os.access(file, os.R_OK):
        raise CheckpointError(f"checkpoint {file} is not readable (permission denied)")
    if not _looks_like_torch_file(file):
        raise CheckpointError(
            f"{file} is not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle)"
        )
    try:
        return torch.load(file, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as err:
        if weights_only and "Weights only load failed" in str(err):
            reason = _refusal_reason(str(err))
            raise CheckpointError(
                f"{file} was refused by the safe loader: it holds Python objects that loading "
                f"would have to execute ({reason}); only if you trust the file's origin, pass "
                "--weights_only false"
            ) from err
        raise CheckpointError(_damaged(file, err)) from err
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise CheckpointError(_damaged(file, err)) from err


def _refusal_reason(message: str) -> str:
    """The line of torch's refusal that names the offending global."""
    for line in message.splitlines():
        if "GLOBAL" in line or "Unsupported" in line:
            return one_line(line)[:200]
    return "unsupported global"


def _damaged(file: Path, err: BaseException) -> str:
    first = (str(err).strip().splitlines() or [""])[0]
    return (
        f"corrupt checkpoint {file}: torch.load fails ({type(err).__name__}: {first[:200]}); "
        "the file is damaged or incomplete"
    )
