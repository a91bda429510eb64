"""The networks to analyse (paper §IV-E, Figures 2-4), rebuilt from saved weights.

Three sources, one :class:`reaf_lightning.analysis.spec.ModelSpec` each:

* a Lightning checkpoint of :class:`reaf_lightning.training.module.ImageClassifier`, or a
  run directory (its ``checkpoints/last.ckpt``) (``checkpoint``): the network is
  rebuilt from the saved hyperparameters (a registry name, never a class named in
  the file), and what the run recorded about its data is kept
  (:func:`reaf_lightning.analysis.run_data.recorded_data`) so that the analysis
  can evaluate it as it was trained;
* a registry name plus a ``state_dict`` file (``arch`` + ``state_dict``), for
  weights saved with ``torch.save(model.state_dict())`` (a Lightning
  checkpoint is accepted too; its ``net.``/``model.`` prefix is stripped);
* a registry name plus torchvision's pretrained weights (``arch`` +
  ``weights``, e.g. ``IMAGENET1K_V1``) from the local torch hub cache: the
  registry's plain ``resnet*``/``resnext*`` use torchvision's parameter names,
  so Figure 4 (ResNet50 vs ResNeXt50) needs no training. Nothing is downloaded.

Every file is read by :func:`reaf_lightning.io.load_checkpoint` (safe unless
``weights_only=False`` is asked for explicitly). Failures are
:class:`~reaf_lightning.errors.CheckpointError` (exit 2) with one line naming
the file; non-finite weights are a :class:`~reaf_lightning.errors.NumericalError`
naming the model and the tensor. torch is imported only when a model is loaded,
so the command's ``--help`` stays fast.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reaf_lightning.errors import CheckpointError, ConfigError, NumericalError, one_line

from .run_data import RecordedData, recorded_data
from .spec import ModelSpec

if TYPE_CHECKING:
    from torch import Tensor, nn

__all__ = ["LoadedModel", "checkpoint_of", "load_model", "torchvision_weights_path"]


@dataclass
class LoadedModel:
    """A network ready for analysis and what is known about where it came from.

    Attributes:
        label: Legend label (the spec's, else the network's name).
        net: The network on the CPU, in eval mode.
        source: What was loaded: a file's absolute path, or the torchvision weights.
        arch: Registry name of the network, when known.
        data: What the run recorded about its data (class path, never imported
            here, and settings); empty when the source is not a checkpoint.
        epoch: Training epoch stored in the checkpoint, when there is one.
        global_step: Optimiser step stored in the checkpoint, when there is one.
    """

    label: str
    net: nn.Module
    source: str
    arch: str | None = None
    data: RecordedData = field(default_factory=RecordedData)
    epoch: int | None = None
    global_step: int | None = None

    def provenance(self) -> dict[str, Any]:
        """What a W&B run or a table should record about this model."""
        return {
            "source": self.source,
            "arch": self.arch,
            "epoch": self.epoch,
            "global_step": self.global_step,
        }


def load_model(
    spec: ModelSpec, num_classes: int | None = None, weights_only: bool = True
) -> LoadedModel:
    """Build the network described by ``spec`` on the CPU, in eval mode, with finite weights.

    Args:
        spec: The model source.
        num_classes: Classes of the data set to analyse; the default
            ``num_classes`` of an ``arch`` + ``state_dict`` model.
        weights_only: Load files with the safe unpickler (``False`` only for
            trusted files holding other Python objects).

    Raises:
        ConfigError: an invalid spec (no or several sources, unknown arch).
        CheckpointError: missing, corrupt, refused or incompatible files.
        NumericalError: NaN or inf in a parameter or buffer.
    """
    sources = [n for n in ("checkpoint", "state_dict", "weights") if getattr(spec, n)]
    if len(sources) != 1:
        raise ConfigError(
            f"model {spec.label or spec.arch or '?'!r}: give exactly one of checkpoint, "
            f"state_dict or weights (got {sources or 'none'})"
        )
    if spec.checkpoint:
        if spec.arch:
            raise ConfigError(
                f"model {spec.label or spec.checkpoint!r}: 'arch' is read from the checkpoint; "
                "use arch + state_dict to override the architecture"
            )
        loaded = _from_lightning_checkpoint(spec, weights_only)
    elif spec.state_dict:
        from reaf_lightning.io import load_checkpoint

        kwargs = dict(spec.arch_kwargs)
        if num_classes is not None:
            kwargs.setdefault("num_classes", num_classes)
        path = Path(spec.state_dict)
        net = _build(spec, kwargs)
        content = load_checkpoint(path, weights_only=weights_only)
        _load_into(net, _state_dict_of(content, path), path, spec.arch)
        loaded = LoadedModel(spec.label or str(spec.arch), net, str(path.resolve()), spec.arch)
    else:
        from reaf_lightning.io import load_checkpoint

        net = _build(spec, {"num_classes": 1000, "stem": "imagenet", **spec.arch_kwargs})
        path = torchvision_weights_path(str(spec.arch), str(spec.weights))
        _load_into(net, _state_dict_of(load_checkpoint(path), path), path, spec.arch)
        label = spec.label or f"{spec.arch} ({spec.weights})"
        loaded = LoadedModel(label, net, f"torchvision:{spec.arch}.{spec.weights}", spec.arch)
    _check_finite(loaded)
    loaded.net.eval()
    return loaded


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


# --------------------------------------------------------------------------- helpers


def _build(spec: ModelSpec, kwargs: dict[str, Any]) -> nn.Module:
    from reaf_lightning.models import create_model

    if not spec.arch:
        raise ConfigError(
            f"model {spec.label or '?'!r}: 'arch' (a registry name) is required with "
            "state_dict or weights"
        )
    try:
        return create_model(spec.arch, **kwargs)
    except (ValueError, TypeError, KeyError) as err:
        raise ConfigError(f"cannot build {spec.arch!r} with {kwargs}: {one_line(err)}") from err


def _from_lightning_checkpoint(spec: ModelSpec, weights_only: bool) -> LoadedModel:
    """Rebuild ``module_class`` from the saved hyperparameters and load its state_dict.

    The module is constructed from the hyperparameters its ``__init__``
    accepts (keys of older versions are ignored) rather than through
    ``load_from_checkpoint``, so that the file is read once, by the one loader.
    """
    from torch import nn

    from reaf_lightning.runs.checkpoint import read_lightning_checkpoint

    path = checkpoint_of(Path(str(spec.checkpoint)))
    content = read_lightning_checkpoint(path, weights_only=weights_only)
    hparams = content.get("hyper_parameters")
    if not isinstance(hparams, Mapping):
        raise CheckpointError(
            f"incompatible checkpoint {path}: no 'hyper_parameters' to rebuild the model from; "
            "use arch + state_dict instead"
        )
    cls = _import(spec.module_class)
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in hparams.items() if k in accepted and k != "self"}
    try:
        module = cls(**kwargs)
    except Exception as err:  # noqa: BLE001 - wrong or stale hyperparameters: "incompatible"
        raise CheckpointError(
            f"incompatible checkpoint {path} for {spec.module_class}: {one_line(err)}"
        ) from err
    _load_into(module, _state_dict_of(content, path), path, hparams.get("arch"), prefixed=True)
    nets = [getattr(module, a, None) for a in ("net", "model")]
    net = next((n for n in nets if isinstance(n, nn.Module)), None)
    if net is None:
        raise CheckpointError(
            f"incompatible checkpoint {path}: {spec.module_class} has no 'net' or 'model' network"
        )
    arch = hparams.get("arch")
    return LoadedModel(
        label=spec.label or str(arch or path.stem),
        net=net,
        source=str(path.resolve()),
        arch=arch,
        data=recorded_data(path, content),
        epoch=content.get("epoch"),
        global_step=content.get("global_step"),
    )


def checkpoint_of(path: Path) -> Path:
    """``path`` itself, or for a run directory its newest state, ``checkpoints/last.ckpt``.

    Raises:
        CheckpointError: a run directory without that file.
    """
    from reaf_lightning.runs.layout import RunDir

    if not path.is_dir():
        return path
    last = RunDir(path).last_checkpoint
    if not last.is_file():
        raise CheckpointError(
            f"run directory {path} has no checkpoints/last.ckpt; give the checkpoint file itself"
        )
    return last


def _state_dict_of(content: Any, path: Path) -> dict[str, Tensor]:
    """The parameters of a bare state_dict or of a Lightning checkpoint."""
    from torch import Tensor

    if isinstance(content, Mapping) and "state_dict" in content:
        content = content["state_dict"]
    if not isinstance(content, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in content.items()
    ):
        raise CheckpointError(
            f"incompatible checkpoint {path}: expected a state_dict (parameter name -> tensor), "
            f"got {type(content).__name__}"
        )
    return dict(content)


def _load_into(
    model: nn.Module, state: dict[str, Tensor], path: Path, arch: str | None, prefixed=False
) -> None:
    """Strict ``load_state_dict``; a network's keys may carry a ``net.``/``model.`` prefix."""
    from reaf_lightning.runs.checkpoint import describe_mismatch

    if not prefixed:
        for prefix in ("net.", "model.", "module."):
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        details = describe_mismatch(expected, {k: tuple(v.shape) for k, v in state.items()})
        raise CheckpointError(
            f"incompatible checkpoint {path} for arch {arch!r}: " + (details or one_line(err))
        ) from err


def _check_finite(loaded: LoadedModel) -> None:
    """Refuse NaN/inf weights: every selectivity value would silently be NaN."""
    import torch

    for name, tensor in [*loaded.net.named_parameters(), *loaded.net.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            nan, inf = int(tensor.isnan().sum()), int(tensor.isinf().sum())
            raise NumericalError(
                f"model {loaded.label!r} ({loaded.source}): non-finite weights in layer "
                f"{name} ({nan} NaN, {inf} inf); the checkpoint cannot be analysed"
            )


def _import(dotted: str) -> type:
    module_name, _, attr = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"cannot import module_class {dotted!r}") from None
