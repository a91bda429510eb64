"""The networks to analyse (paper §IV-E, Figures 2-4), rebuilt from saved weights.

Three sources, one :class:`reaf_lightning.analysis.spec.ModelSpec` each:

* a Lightning checkpoint of :class:`reaf_lightning.training.module.ImageClassifier`, a
  run directory (its ``checkpoints/last.ckpt``) or an experiment directory (the
  ``last.ckpt`` of each of its ``seed<N>`` runs), or a list of these (``checkpoint``):
  each network is rebuilt from the settings its checkpoint saved (a name, never a class
  named in the file), and the run record it carries says which data the run used
  (:func:`reaf_lightning.analysis.run_data.build_data_module`), so that the analysis
  can evaluate it as it was trained. Several runs of one model are its replicates
  (seeds), compared across models by :mod:`reaf_lightning.analysis.seeds`;
* a network name plus a ``state_dict`` file (``arch`` + ``state_dict``), for weights
  saved with ``torch.save(net.state_dict())`` or exported by
  ``python -m reaf_lightning.export`` (a Lightning checkpoint is accepted too: its
  network's weights are used);
* a registry name plus torchvision's pretrained weights (``arch`` +
  ``weights``, e.g. ``IMAGENET1K_V1``) from the local torch hub cache: the
  registry's plain ``resnet*``/``resnext*`` use torchvision's parameter names,
  so Figure 4 (ResNet50 vs ResNeXt50) needs no training. Nothing is downloaded.

Every file is read by :func:`reaf_lightning.runs.checkpoint.read_network`, the one
reader of a saved network (safe unless ``weights_only=False`` is asked for
explicitly), and every network is built by
:func:`reaf_lightning.conversion.sources.build_network`. Failures are
:class:`~reaf_lightning.errors.CheckpointError` (exit 2) with one line naming
the file; non-finite weights are a :class:`~reaf_lightning.errors.NumericalError`
naming the model and the tensor. torch is imported only when a model is loaded,
so the command's ``--help`` stays fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reaf_lightning.errors import CheckpointError, ConfigError

from .spec import ModelSpec

if TYPE_CHECKING:
    from torch import nn

    from reaf_lightning.runs.record import DataSpec, RunRecord

__all__ = ["LoadedModel", "load_model", "load_models", "torchvision_weights_path"]


@dataclass
class LoadedModel:
    """A network ready for analysis and what is known about where it came from.

    Attributes:
        label: Legend label of its model (the spec's, else the network's name).
        net: The network on the CPU, in eval mode.
        source: What was loaded: a file's absolute path, or the torchvision weights.
        arch: Name of the network.
        run: Which of the model's networks it is: ``seed<N>`` for a checkpoint whose run
            recorded its seed, else the file's name (unique within the model).
        record: The run record its checkpoint carries (``None``: the file holds none).
        epoch: Training epoch stored in the checkpoint, when there is one.
        global_step: Optimiser step stored in the checkpoint, when there is one.
    """

    label: str
    net: nn.Module
    source: str
    arch: str
    run: str = ""
    record: RunRecord | None = None
    epoch: int | None = None
    global_step: int | None = None

    @property
    def data(self) -> DataSpec | None:
        """The data module its run recorded (class path, never imported here, and settings)."""
        return self.record.data if self.record is not None else None

    @property
    def name(self) -> str:
        """``label run``: the network in messages and tables."""
        return f"{self.label} {self.run}".strip()

    def provenance(self) -> dict[str, Any]:
        """What a W&B run or a table should record about this network."""
        return {
            "source": self.source,
            "arch": self.arch,
            "run": self.run,
            "epoch": self.epoch,
            "global_step": self.global_step,
        }


def sources_of(spec: ModelSpec) -> list[Path]:
    """Every file ``spec`` names: its checkpoints (run and experiment directories expanded),
    or its ``state_dict`` file(s).

    Raises:
        ConfigError: the same file named twice (a network would count as two replicates).
        CheckpointError: a directory that holds no run.
    """
    from reaf_lightning.runs.checkpoint import run_checkpoints

    named = spec.checkpoint or spec.state_dict
    if named is None:
        return []
    given = [named] if isinstance(named, str) else list(named)
    if not given:
        raise ConfigError(f"model {spec.label or '?'!r}: an empty list of files")
    files = [f for g in given for f in (run_checkpoints(g) if spec.checkpoint else [Path(g)])]
    seen: dict[str, Path] = {}
    for file in files:
        key = os.path.realpath(file)
        if key in seen:
            raise ConfigError(
                f"model {spec.label or '?'!r}: {file} is given twice (as {seen[key]}); each "
                "network counts once"
            )
        seen[key] = file
    return files


def load_models(
    spec: ModelSpec, num_classes: int | None = None, weights_only: bool = True
) -> list[LoadedModel]:
    """Every network of ``spec`` (:func:`sources_of`), each as :func:`load_model` loads one,
    with a :attr:`LoadedModel.run` name unique within the model."""
    files = sources_of(spec)
    if len(files) <= 1:
        return [load_model(spec, num_classes, weights_only)]
    field = "checkpoint" if spec.checkpoint else "state_dict"
    models = [
        load_model(replace(spec, **{field: str(f)}), num_classes, weights_only) for f in files
    ]
    names = [m.run for m in models]
    for i, model in enumerate(models):
        if names.count(model.run) > 1:
            model.run = f"{model.run}#{i + 1}"
    return models


def load_model(
    spec: ModelSpec, num_classes: int | None = None, weights_only: bool = True
) -> LoadedModel:
    """Build the network described by ``spec`` on the CPU, in eval mode, with finite weights.

    Args:
        spec: The model source (one file or run directory, or torchvision weights).
        num_classes: Classes of the data set to analyse; the default
            ``num_classes`` of an ``arch`` + ``state_dict`` model.
        weights_only: Load files with the safe unpickler (``False`` only for
            trusted files holding other Python objects).

    Raises:
        ConfigError: an invalid spec (no or several sources, unknown arch).
        CheckpointError: missing, corrupt, refused or incompatible files.
        NumericalError: NaN or inf in a parameter or buffer.
    """
    from reaf_lightning.runs.checkpoint import check_finite, read_network, rebuild_network

    sources = [n for n in ("checkpoint", "state_dict", "weights") if getattr(spec, n)]
    if len(sources) != 1:
        raise ConfigError(
            f"model {spec.label or spec.arch or '?'!r}: give exactly one of checkpoint, "
            f"state_dict or weights (got {sources or 'none'})"
        )
    if spec.checkpoint and spec.arch:
        raise ConfigError(
            f"model {spec.label or spec.checkpoint!r}: 'arch' is read from the checkpoint; "
            "use arch + state_dict to override the architecture"
        )
    if not spec.checkpoint and not spec.arch:
        raise ConfigError(
            f"model {spec.label or '?'!r}: 'arch' (a network name) is required with "
            "state_dict or weights"
        )
    if spec.checkpoint or spec.state_dict:
        files = sources_of(spec)
        if len(files) != 1:
            raise ConfigError(
                f"model {spec.label or '?'!r} has {len(files)} networks; load them with load_models"
            )
        path = files[0]
    if spec.checkpoint:
        saved = read_network(path, weights_only=weights_only)
        arch, kwargs = str(saved.arch), {**saved.arch_kwargs, "num_classes": saved.num_classes}
        label, source = spec.label or arch, str(path.resolve())
    elif spec.state_dict:
        saved = read_network(path, weights_only=weights_only, plain=True)
        arch, kwargs = str(spec.arch), dict(spec.arch_kwargs)
        if num_classes is not None:
            kwargs.setdefault("num_classes", num_classes)
        label, source = spec.label or arch, str(path.resolve())
    else:
        arch = str(spec.arch)
        saved = read_network(torchvision_weights_path(arch, str(spec.weights)), plain=True)
        kwargs = {"num_classes": 1000, "stem": "imagenet", **spec.arch_kwargs}
        label = spec.label or f"{arch} ({spec.weights})"
        source = f"torchvision:{arch}.{spec.weights}"
    check_finite(  # every selectivity value would silently be NaN
        saved.state_dict,
        lambda where: (
            f"model {label!r} ({source}): non-finite weights in {where}; the "
            "checkpoint cannot be analysed"
        ),
    )
    net = rebuild_network(arch, kwargs, saved.state_dict, source)
    record = saved.record
    if record is not None and record.seed is not None:
        run = f"seed{record.seed}"
    elif spec.weights:
        run = str(spec.weights)
    else:
        run = _run_name(saved.path)
    return LoadedModel(label, net, source, arch, run, record, saved.epoch, saved.global_step)


def _run_name(path: Path) -> str:
    """A run directory's name for its ``checkpoints/last.ckpt``, else the file's name."""
    if path.parent.name == "checkpoints" and path.parent.parent.name:
        return path.parent.parent.name
    return path.name


def torchvision_weights_path(arch: str, weights: str) -> Path:
    """Local torch hub cache file of torchvision's ``weights`` for ``arch``.

    Raises:
        ConfigError: unknown architecture or weights name.
        CheckpointError: the file is not in the cache.
    """
    import torch
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(arch)
    except (ValueError, KeyError):
        raise ConfigError(
            f"torchvision has no pretrained weights for arch {arch!r}; use a checkpoint or a "
            "state_dict instead"
        ) from None
    try:
        entry = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
    except KeyError:
        valid = ["DEFAULT", *(w.name for w in enum)]
        raise ConfigError(
            f"unknown torchvision weights {weights!r} for {arch}; valid: {valid}"
        ) from None
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(entry.url)
    if not path.is_file():
        raise CheckpointError(
            f"torchvision weights {arch}.{entry.name} are not available locally: expected {path} "
            f"(download {entry.url} there, or set TORCH_HOME)"
        )
    return path
