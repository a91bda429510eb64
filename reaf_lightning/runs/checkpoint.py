"""Reading a run's checkpoint: what it holds, and the rule for when a run may use one.

Not part of the paper. A checkpoint is untrusted input, read by the safe loader
(:func:`reaf_lightning.io.load_checkpoint`). :func:`check_checkpoint` is the one
policy for ``--ckpt_path`` (a file, ``last`` or ``best`` alike): the file must be
a Lightning checkpoint of the network the configuration builds, and a resumed
``fit`` must not change the optimiser or schedule settings, which the restored
optimiser and scheduler state would otherwise silently override.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reaf_lightning.errors import CheckpointError, NumericalError
from reaf_lightning.io import load_checkpoint
from reaf_lightning.runs.layout import RunDir

#: Keys every Lightning checkpoint has (``Trainer.save_checkpoint``).
LIGHTNING_KEYS = ("state_dict", "epoch", "global_step", "pytorch-lightning_version")


#: The model settings that decide which network a checkpoint holds.
NETWORK_KEYS = ("arch", "arch_kwargs", "num_classes")


#: Model settings a resumed ``fit`` may change: nothing of them is restored from the
#: checkpoint, so the configured value is the one used (and logged). Every other
#: setting (lr, momentum, weight decay, schedule, warm-up ...) must stay as it was.
RESUME_MAY_CHANGE = ("label_smoothing",)


def read_lightning_checkpoint(path: str | os.PathLike[str], weights_only: bool) -> dict[str, Any]:
    """Load ``path`` (safely unless ``weights_only`` is ``False``) and check it is from Lightning.

    Raises:
        CheckpointError: naming the file and what is wrong with it.
    """
    content = load_checkpoint(path, weights_only=weights_only)
    if not isinstance(content, Mapping):
        raise CheckpointError(
            f"{path} is not a Lightning checkpoint (it holds a {type(content).__name__}, "
            f"not a dict with {', '.join(LIGHTNING_KEYS)})"
        )
    missing = [k for k in LIGHTNING_KEYS if k not in content]
    if missing:
        bare = content and all(isinstance(v, torch.Tensor) for v in content.values())
        hint = "; it looks like a bare state_dict (load it with load_state_dict)" if bare else ""
        raise CheckpointError(
            f"{path} is not a Lightning checkpoint: missing {', '.join(missing)}{hint}"
        )
    state = content["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise CheckpointError(f"{path}: 'state_dict' is not a mapping of tensors")
    return dict(content)


def check_checkpoint(
    path: str | os.PathLike[str], model: nn.Module, *, resume: bool, weights_only: bool = True
) -> dict[str, Any]:
    """Refuse a checkpoint that this run could only use by silently changing the config.

    Args:
        path: the checkpoint file.
        model: the ``ImageClassifier`` the configuration built (its ``hparams``
            are the configured settings).
        resume: the checkpoint resumes ``fit`` (optimizer state and settings
            are restored), rather than being evaluated.
        weights_only: ``torch.load``'s safe mode (``--weights_only false`` turns it off).

    Returns:
        The loaded checkpoint.

    Raises:
        NumericalError: the weights or statistics hold NaN or inf (exit status 3).
        CheckpointError: not a Lightning checkpoint; weights only while resuming;
            another network than configured (both named); for ``resume``, a
            changed optimiser/schedule setting (each named, old and new value).
    """
    content = read_lightning_checkpoint(path, weights_only)
    if resume and not content.get("optimizer_states"):
        raise CheckpointError(
            f"{path} holds only the model weights (saved with save_weights_only), so it cannot "
            "resume training; use it with validate/test/predict, or resume from a full checkpoint"
        )
    saved = dict(content.get("hyper_parameters") or {})
    current = dict(getattr(model, "hparams", {}))
    if any(_plain(saved.get(k)) != _plain(current.get(k)) for k in NETWORK_KEYS if k in saved):
        raise CheckpointError(
            f"{path} holds a {_network(saved)} network, but the configuration builds a "
            f"{_network(current)}; pass the config the checkpoint was trained with"
        )
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mismatch = describe_mismatch(
        expected, {k: tuple(v.shape) for k, v in content["state_dict"].items()}
    )
    if mismatch:
        raise CheckpointError(f"{path} does not fit the configured {_network(current)}: {mismatch}")
    bad = [
        name
        for name, value in content["state_dict"].items()
        if isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and not bool(torch.isfinite(value).all())
    ]
    if bad:
        more = f" and {len(bad) - 1} other tensor(s)" if len(bad) > 1 else ""
        raise NumericalError(
            f"{path} holds non-finite values (NaN or inf) in {bad[0]}{more}; its results would "
            "be meaningless: use an earlier checkpoint of the run"
        )
    if resume:
        changed = [
            f"model.{k}: {saved[k]!r} -> {current[k]!r}"
            for k in saved
            if k in current
            and k not in NETWORK_KEYS + RESUME_MAY_CHANGE
            and _plain(saved[k]) != _plain(current[k])
        ]
        if changed:
            raise CheckpointError(
                f"resuming {path} with changed settings ({'; '.join(changed)}): the optimiser "
                "and schedule state restored from the checkpoint would keep the old values; "
                "keep them, or start a new run in another trainer.default_root_dir"
            )
    return content


def _plain(value: Any) -> Any:
    """Compare settings as YAML would write them (tuples as lists, no ``arch_kwargs`` = ``{}``)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _network(hparams: Mapping[str, Any]) -> str:
    kwargs = ", ".join(f"{k}: {v}" for k, v in (hparams.get("arch_kwargs") or {}).items())
    return f"{hparams.get('arch')} {{{kwargs}}} ({hparams.get('num_classes')} classes)"


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


def find_last_checkpoint(dirs: Iterable[str | os.PathLike[str]]) -> Path | None:
    """The ``last.ckpt`` in ``dirs`` (what ``--ckpt_path last`` means); the newest if several.

    Only ``last.ckpt`` counts: the CLI's ``ModelCheckpoint`` has no version
    counter, so ``last.ckpt`` is always the newest state and no ``last-vN.ckpt``
    is written.
    """
    found = [RunDir(Path(d), Path(d)).last_checkpoint for d in dirs]
    found = [p for p in found if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def find_best_checkpoint(
    dirs: Iterable[str | os.PathLike[str]], weights_only: bool = True
) -> Path | None:
    """The best checkpoint on disk, as the ``ModelCheckpoint`` of the newest ``last`` recorded it.

    In the process that trained, Lightning's ``ckpt_path="best"`` is the
    callback's ``best_model_path``; a new process reads the same record from
    the checkpoint's callback state. The file is looked up by name next to
    ``last.ckpt`` first, so a moved or copied run directory finds its own.
    """
    dirs = [Path(d) for d in dirs]
    last = find_last_checkpoint(dirs)
    if last is None:
        return None
    states = read_lightning_checkpoint(last, weights_only).get("callbacks") or {}
    for state in states.values():
        recorded = state.get("best_model_path") if isinstance(state, Mapping) else None
        if not recorded:
            continue
        for candidate in (last.parent / Path(recorded).name, Path(recorded)):
            if candidate.is_file():
                return candidate
    return None
