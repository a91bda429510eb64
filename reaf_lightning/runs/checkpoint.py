"""Reading a run's checkpoint: its network and what it is, and when a run may use one.

Not part of the paper. A checkpoint is untrusted input, read by the safe loader
(:func:`reaf_lightning.io.load_checkpoint`).

* :func:`read_network` is the one reader of a checkpoint's network: the settings
  that rebuild it (``arch``, ``arch_kwargs``, ``num_classes``), its own ``state_dict``
  (the ``net.`` prefix of :class:`~reaf_lightning.ImageClassifier` is stripped here
  and nowhere else), the run record (``reaf_run``), epoch and step. The resume check,
  ``reaf-analysis`` and the export read checkpoints through it, and
  :func:`rebuild_network` builds what it read (by
  :func:`~reaf_lightning.conversion.sources.build_network`, the one builder).
* :func:`check_checkpoint` is the one policy for ``--ckpt_path`` (a file, ``last`` or
  ``best`` alike): the file must be a Lightning checkpoint of the network the
  configuration builds, and a resumed ``fit`` must not change the optimiser or
  schedule settings, which the restored optimiser and scheduler state would
  otherwise silently override.
* :func:`check_finite` is the one check for NaN/inf weights: before a checkpoint is
  saved, before one is used, and before a network is analysed.
* :func:`checkpoint_of` and :func:`run_checkpoints` say which file a run directory (or an
  experiment's seed directories) stands for, for ``reaf-analysis`` and the export.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from reaf_lightning.conversion.sources import build_network
from reaf_lightning.errors import CheckpointError, ConfigError, NumericalError, one_line
from reaf_lightning.io import load_checkpoint
from reaf_lightning.layers.spec import is_int
from reaf_lightning.runs.layout import RunDir, is_seed_dir
from reaf_lightning.runs.record import RunRecord, record_from_dict

#: Keys every Lightning checkpoint has (``Trainer.save_checkpoint``).
LIGHTNING_KEYS = ("state_dict", "epoch", "global_step", "pytorch-lightning_version")

#: The model settings that decide which network a checkpoint holds.
NETWORK_KEYS = ("arch", "arch_kwargs", "num_classes")

#: Where :class:`~reaf_lightning.ImageClassifier` keeps its network: its weights' prefix.
PREFIX = "net."

#: Model settings a resumed ``fit`` may change: nothing of them is restored from the
#: checkpoint, so the configured value is the one used (and logged). Every other
#: setting (lr, momentum, weight decay, schedule, warm-up ...) must stay as it was.
RESUME_MAY_CHANGE = ("label_smoothing",)


@dataclass(frozen=True)
class SavedNetwork:
    """A saved network and what the file says about it.

    Attributes:
        path: the file read.
        state_dict: the network's own tensors (no ``net.`` prefix).
        arch: its name for :func:`~reaf_lightning.conversion.sources.build_network`;
            ``None`` for a plain ``state_dict`` file, which does not say.
        arch_kwargs: the network's keyword arguments.
        num_classes: classifier outputs (``None``: not said).
        record: the run record stored in the checkpoint (``reaf_run``), validated.
        epoch: training epoch of the checkpoint.
        global_step: optimiser step of the checkpoint.
        checkpoint: the whole Lightning checkpoint (empty for a plain file).
    """

    path: Path
    state_dict: dict[str, Tensor] = field(repr=False)
    arch: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    record: RunRecord | None = None
    epoch: int | None = None
    global_step: int | None = None
    checkpoint: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def settings(self) -> dict[str, Any]:
        """``arch``, ``arch_kwargs`` and ``num_classes``: what rebuilds the network."""
        return {"arch": self.arch, "arch_kwargs": self.arch_kwargs, "num_classes": self.num_classes}

    def rebuild(self) -> nn.Module:
        """The network built from its settings with these weights (:func:`rebuild_network`)."""
        kwargs = {**self.arch_kwargs, "num_classes": self.num_classes}
        return rebuild_network(str(self.arch), kwargs, self.state_dict, str(self.path))


def read_lightning_checkpoint(path: str | os.PathLike[str], weights_only: bool) -> dict[str, Any]:
    """Load ``path`` (safely unless ``weights_only`` is ``False``) and check it is from Lightning.

    Raises:
        CheckpointError: naming the file and what is wrong with it.
    """
    return _lightning(load_checkpoint(path, weights_only=weights_only), path)


def _lightning(content: Any, path: str | os.PathLike[str]) -> dict[str, Any]:
    if not isinstance(content, Mapping):
        raise CheckpointError(
            f"{path} is not a Lightning checkpoint (it holds a {type(content).__name__}, "
            f"not a dict with {', '.join(LIGHTNING_KEYS)})"
        )
    missing = [k for k in LIGHTNING_KEYS if k not in content]
    if missing:
        hint = "; it looks like a bare state_dict (load it with load_state_dict)"
        raise CheckpointError(
            f"{path} is not a Lightning checkpoint: missing {', '.join(missing)}"
            + (hint if _is_state_dict(content) else "")
        )
    state = content["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: 'state_dict' is not a mapping of tensors")
    return dict(content)


def _is_state_dict(content: Any) -> bool:
    """A non-empty mapping of names to tensors, as ``torch.save(net.state_dict())`` writes."""
    return (
        isinstance(content, Mapping)
        and bool(content)
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in content.items())
    )


def read_network(
    path: str | os.PathLike[str], *, weights_only: bool = True, plain: bool = False
) -> SavedNetwork:
    """The network a checkpoint holds, and what it is: the one reader of a checkpoint's network.

    Args:
        path: a Lightning checkpoint of :class:`~reaf_lightning.ImageClassifier`.
        weights_only: ``torch.load``'s safe mode (``False`` only for trusted files).
        plain: also accept a plain ``state_dict`` file (``torch.save(net.state_dict())``),
            which says nothing but its tensors.

    Raises:
        CheckpointError: not such a file (one line naming it and what is wrong).
        RecordError: its run record is off the schema.
    """
    content = load_checkpoint(path, weights_only=weights_only)
    if plain and _is_state_dict(content):
        return SavedNetwork(Path(path), dict(content))
    if plain and not (isinstance(content, Mapping) and "state_dict" in content):
        raise CheckpointError(
            f"incompatible checkpoint {path}: expected a state_dict (parameter name -> tensor) "
            f"or a Lightning checkpoint, got {type(content).__name__}"
        )
    content = _lightning(content, path)
    hparams = content.get("hyper_parameters")
    hparams = hparams if isinstance(hparams, Mapping) else {}
    arch, kwargs, classes = (hparams.get(k) for k in NETWORK_KEYS)
    kwargs = {} if kwargs is None else kwargs
    if not (isinstance(arch, str) and isinstance(kwargs, Mapping) and is_int(classes)):
        raise CheckpointError(
            f"{path}: its hyper_parameters do not say which network it holds "
            f"({', '.join(NETWORK_KEYS)}); only checkpoints of reaf_lightning.ImageClassifier "
            "can be read"
        )
    state = {k[len(PREFIX) :]: v for k, v in content["state_dict"].items() if k.startswith(PREFIX)}
    if not state:
        raise CheckpointError(f"{path}: no '{PREFIX}*' weights in its state_dict")
    record = content.get("reaf_run")
    return SavedNetwork(
        path=Path(path),
        state_dict=state,
        arch=arch,
        arch_kwargs=dict(kwargs),
        num_classes=classes,
        record=None if record is None else record_from_dict(record, f"{path} (reaf_run)"),
        epoch=content["epoch"] if is_int(content["epoch"]) else None,
        global_step=content["global_step"] if is_int(content["global_step"]) else None,
        checkpoint=content,
    )


def rebuild_network(
    arch: str, kwargs: Mapping[str, Any], state_dict: Mapping[str, Tensor], source: str
) -> nn.Module:
    """``build_network(arch, **kwargs)`` with ``state_dict`` loaded strictly, in eval mode.

    Raises:
        ConfigError: ``arch`` with ``kwargs`` cannot be built (unknown name, bad argument).
        CheckpointError: the weights of ``source`` do not fit it (one line: what differs).
    """
    try:
        net = build_network(arch, **kwargs)
    except (ValueError, TypeError, KeyError) as err:
        raise ConfigError(
            f"{source}: cannot build {arch!r} with {dict(kwargs)}: {one_line(err)}"
        ) from err
    try:
        net.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        details = describe_mismatch(_shapes(net.state_dict()), _shapes(state_dict))
        raise CheckpointError(
            f"incompatible checkpoint {source} for arch {arch!r}: {details or one_line(err)}"
        ) from err
    return net.eval()


def check_finite(tensors: Mapping[str, Any], message: Callable[[str], str]) -> None:
    """Refuse NaN or inf in the floating-point tensors of ``tensors``: the one such check.

    Args:
        tensors: a ``state_dict`` (or a checkpoint's).
        message: the error's text for ``where``, which names the first non-finite
            tensor and how many others there are.

    Raises:
        NumericalError: ``message(where)`` (exit status 3).
    """
    bad = [
        name
        for name, value in tensors.items()
        if isinstance(value, Tensor)
        and value.is_floating_point()
        and not bool(torch.isfinite(value).all())
    ]
    if bad:
        more = f" and {len(bad) - 1} other tensor(s)" if len(bad) > 1 else ""
        raise NumericalError(message(f"{bad[0]}{more}"))


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
    saved = read_network(path, weights_only=weights_only)
    content = saved.checkpoint
    if resume and not content.get("optimizer_states"):
        raise CheckpointError(
            f"{path} holds only the model weights (saved with save_weights_only), so it cannot "
            "resume training; use it with validate/test/predict, or resume from a full checkpoint"
        )
    current = dict(getattr(model, "hparams", {}))
    configured = {**current, "arch_kwargs": current.get("arch_kwargs") or {}}
    if any(_plain(saved.settings[k]) != _plain(configured.get(k)) for k in NETWORK_KEYS):
        raise CheckpointError(
            f"{path} holds a {_network(saved.settings)} network, but the configuration builds a "
            f"{_network(configured)}; pass the config the checkpoint was trained with"
        )
    mismatch = describe_mismatch(_shapes(model.state_dict()), _shapes(content["state_dict"]))
    if mismatch:
        raise CheckpointError(f"{path} does not fit the configured {_network(current)}: {mismatch}")
    check_finite(
        content["state_dict"],
        lambda where: (
            f"{path} holds non-finite values (NaN or inf) in {where}; its results "
            "would be meaningless: use an earlier checkpoint of the run"
        ),
    )
    if resume:
        saved_hparams = dict(content["hyper_parameters"])
        changed = [
            f"model.{k}: {saved_hparams[k]!r} -> {current[k]!r}"
            for k in saved_hparams
            if k in current
            and k not in NETWORK_KEYS + RESUME_MAY_CHANGE
            and _plain(saved_hparams[k]) != _plain(current[k])
        ]
        if changed:
            raise CheckpointError(
                f"resuming {path} with changed settings ({'; '.join(changed)}): the optimiser "
                "and schedule state restored from the checkpoint would keep the old values; "
                "keep them, or start a new run in another trainer.default_root_dir"
            )
    return content


def _shapes(state: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _plain(value: Any) -> Any:
    """Compare settings as YAML would write them (tuples as lists)."""
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
    instead of ``load_state_dict``'s multi-screen message. Used by
    :func:`check_checkpoint` and :func:`rebuild_network`.
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


def checkpoint_of(path: str | os.PathLike[str]) -> Path:
    """``path`` itself, or for a run directory its newest state, ``checkpoints/last.ckpt``.

    Raises:
        CheckpointError: a directory without that file.
    """
    path = Path(path)
    if not path.is_dir():
        return path
    last = RunDir(path).last_checkpoint
    if not last.is_file():
        raise CheckpointError(
            f"run directory {path} has no checkpoints/last.ckpt; give the checkpoint file itself"
        )
    return last


def run_checkpoints(path: str | os.PathLike[str]) -> list[Path]:
    """The newest checkpoint of every run ``path`` stands for: a checkpoint file, a run
    directory (its ``checkpoints/last.ckpt``) or an experiment directory (that of each of its
    ``seed<N>`` run directories, in seed order).

    Raises:
        CheckpointError: a directory that is neither, or a seed directory without that file.
    """
    path = Path(path)
    if not path.is_dir() or RunDir(path).last_checkpoint.is_file():
        return [checkpoint_of(path)]
    seeds = sorted(
        (p for p in path.iterdir() if is_seed_dir(p.name) and p.is_dir()),
        key=lambda p: int(p.name[len("seed") :]),
    )
    if not seeds:
        raise CheckpointError(
            f"{path} is neither a run directory (checkpoints/last.ckpt) nor an experiment "
            "directory (seed<N>/ run directories); give a checkpoint, a run or an experiment"
        )
    missing = [p.name for p in seeds if not RunDir(p).last_checkpoint.is_file()]
    if missing:
        raise CheckpointError(
            f"experiment directory {path}: {', '.join(missing)} has no checkpoints/last.ckpt; "
            "give the runs you mean one by one"
        )
    return [RunDir(p).last_checkpoint for p in seeds]


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
