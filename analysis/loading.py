"""Build the networks to analyse (paper Section IV-D, Figures 2-4) from saved weights.

Three sources, one :class:`ModelSpec` each:

* a Lightning checkpoint of :class:`reaf_lightning.module.ImageClassifier`
  (``checkpoint``): the architecture is rebuilt from the saved hyperparameters;
* a registry name plus a ``state_dict`` file (``arch`` + ``state_dict``): for
  weights saved with ``torch.save(model.state_dict())`` (a Lightning
  checkpoint is accepted too; its ``net.``/``model.`` prefix is stripped);
* a registry name plus torchvision's pretrained weights (``arch`` +
  ``weights``, e.g. ``IMAGENET1K_V1``) when the file is already in the local
  torch hub cache. The registry's plain ``resnet*``/``resnext*`` models use
  torchvision's parameter names, so Figure 4 (ResNet50 vs ResNeXt50) can be
  regenerated without training. Nothing is downloaded.

Every failure is a :class:`ModelLoadError` with a one-line message that names
the file and what was wrong (missing, corrupt, incompatible).
"""

from __future__ import annotations

import importlib
import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from reaf_lightning.checkpointing import describe_mismatch

__all__ = ["ModelLoadError", "ModelSpec", "load_model", "torchvision_weights_path"]

DEFAULT_MODULE_CLASS = "reaf_lightning.module.ImageClassifier"


class ModelLoadError(Exception):
    """A model could not be built from its spec; the message is one line for the user."""


@dataclass
class ModelSpec:
    """Where one model of the comparison comes from.

    Exactly one weight source must be given: ``checkpoint``, or ``arch`` with
    ``state_dict``, or ``arch`` with ``weights``.

    Args:
        label: Name in the legend and tables; default derived from the source.
        checkpoint: Lightning checkpoint (``.ckpt``) of ``module_class``.
        arch: Registry name (``reaf_lightning.models.list_models()``).
        arch_kwargs: Keyword arguments of ``create_model`` (``stem``, ``width``,
            ``reaf``, ``num_classes``, ...). For ``state_dict`` the number of
            classes defaults to the data module's; for ``weights`` the
            defaults are ``num_classes=1000, stem="imagenet"``.
        state_dict: File with ``torch.save(model.state_dict())``.
        weights: torchvision weights name of ``arch`` (``IMAGENET1K_V1``,
            ``IMAGENET1K_V2`` or ``DEFAULT``), read from the torch hub cache.
        module_class: LightningModule class of ``checkpoint``.
    """

    label: str | None = None
    checkpoint: str | None = None
    arch: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    state_dict: str | None = None
    weights: str | None = None
    module_class: str = DEFAULT_MODULE_CLASS

    def display_name(self) -> str:
        """Legend label: ``label`` or a name derived from the source."""
        if self.label:
            return self.label
        if self.checkpoint:
            return Path(self.checkpoint).stem
        if self.weights:
            return f"{self.arch} ({self.weights})"
        return str(self.arch)


def load_model(spec: ModelSpec, num_classes: int | None = None) -> nn.Module:
    """Build the network described by ``spec`` on the CPU, in eval mode.

    Args:
        spec: The model source.
        num_classes: Classes of the data set to analyse; used as the default
            ``num_classes`` of an ``arch`` + ``state_dict`` model.

    Raises:
        ModelLoadError: missing/corrupt/incompatible files, or an invalid spec.
    """
    sources = [
        name
        for name, given in (
            ("checkpoint", spec.checkpoint),
            ("state_dict", spec.state_dict),
            ("weights", spec.weights),
        )
        if given
    ]
    if len(sources) != 1:
        raise ModelLoadError(
            f"model {spec.display_name()!r}: give exactly one of checkpoint, state_dict or "
            f"weights (got {sources or 'none'})"
        )
    if spec.checkpoint:
        if spec.arch:
            raise ModelLoadError(
                f"model {spec.display_name()!r}: 'arch' is read from the checkpoint; "
                "use arch + state_dict to override the architecture"
            )
        model = _from_lightning_checkpoint(Path(spec.checkpoint), spec.module_class)
    elif spec.state_dict:
        kwargs = dict(spec.arch_kwargs)
        if num_classes is not None:
            kwargs.setdefault("num_classes", num_classes)
        model = _build(spec, kwargs)
        path = Path(spec.state_dict)
        _load_into(model, _state_dict_of(_read(path), path), path, spec.arch)
    else:
        kwargs = {"num_classes": 1000, "stem": "imagenet", **spec.arch_kwargs}
        model = _build(spec, kwargs)
        path = torchvision_weights_path(str(spec.arch), str(spec.weights))
        _load_into(model, _state_dict_of(_read(path), path), path, spec.arch)
    return model.eval()


def torchvision_weights_path(arch: str, weights: str) -> Path:
    """Local torch hub cache file of torchvision's ``weights`` for ``arch``.

    Raises:
        ModelLoadError: unknown architecture/weights name, or file not cached.
    """
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(arch)
    except (ValueError, KeyError):
        raise ModelLoadError(
            f"torchvision has no pretrained weights for arch {arch!r}; use a checkpoint or a "
            "state_dict instead"
        ) from None
    try:
        entry = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
    except KeyError:
        valid = ["DEFAULT", *(w.name for w in enum)]
        raise ModelLoadError(
            f"unknown torchvision weights {weights!r} for {arch}; valid: {valid}"
        ) from None
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(entry.url)
    if not path.is_file():
        raise ModelLoadError(
            f"torchvision weights {arch}.{entry.name} are not available locally: expected {path} "
            f"(download {entry.url} there, or set TORCH_HOME)"
        )
    return path


# --------------------------------------------------------------------------- helpers


def _build(spec: ModelSpec, kwargs: dict[str, Any]) -> nn.Module:
    from reaf_lightning.models import create_model

    if not spec.arch:
        raise ModelLoadError(
            f"model {spec.display_name()!r}: 'arch' (a registry name) is required with "
            "state_dict or weights"
        )
    try:
        return create_model(spec.arch, **kwargs)
    except (ValueError, TypeError) as err:
        raise ModelLoadError(f"cannot build {spec.arch!r} with {kwargs}: {_one_line(err)}") from err


def _read(path: Path) -> Any:
    """``torch.load`` with the failure modes turned into one-line errors."""
    if not path.exists():
        raise ModelLoadError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise ModelLoadError(f"checkpoint is not a file: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise ModelLoadError(f"corrupt checkpoint {path}: {_one_line(err)}") from err
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise ModelLoadError(f"corrupt checkpoint {path}: {_one_line(err)}") from err
    # Hyperparameters holding arbitrary Python objects need the full unpickler.
    # Checkpoints are the user's own files (Lightning loads them the same way).
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means corrupt
        raise ModelLoadError(f"corrupt checkpoint {path}: {_one_line(err)}") from err


def _from_lightning_checkpoint(path: Path, module_class: str) -> nn.Module:
    content = _read(path)
    if not isinstance(content, Mapping) or "state_dict" not in content:
        raise ModelLoadError(
            f"incompatible checkpoint {path}: not a Lightning checkpoint (no 'state_dict'); "
            "for a bare state_dict use arch + state_dict"
        )
    if "hyper_parameters" not in content:
        raise ModelLoadError(
            f"incompatible checkpoint {path}: no 'hyper_parameters' to rebuild the model from; "
            "use arch + state_dict instead"
        )
    cls = _import(module_class)
    try:
        module = cls.load_from_checkpoint(path, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - wrong hparams, keys or shapes: all "incompatible"
        raise ModelLoadError(
            f"incompatible checkpoint {path} for {module_class}: {_one_line(err)}"
        ) from err
    for attribute in ("net", "model"):
        network = getattr(module, attribute, None)
        if isinstance(network, nn.Module):
            return network
    raise ModelLoadError(
        f"incompatible checkpoint {path}: {module_class} has no 'net' or 'model' network"
    )


def _state_dict_of(content: Any, path: Path) -> dict[str, Tensor]:
    """The network's parameters from a bare state_dict or a Lightning checkpoint."""
    if isinstance(content, Mapping) and "state_dict" in content:
        content = content["state_dict"]
    if not isinstance(content, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in content.items()
    ):
        raise ModelLoadError(
            f"incompatible checkpoint {path}: expected a state_dict (parameter name -> tensor), "
            f"got {type(content).__name__}"
        )
    state = dict(content)
    for prefix in ("net.", "model.", "module."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _load_into(model: nn.Module, state: dict[str, Tensor], path: Path, arch: str | None) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        details = describe_mismatch(expected, {k: tuple(v.shape) for k, v in state.items()})
        raise ModelLoadError(
            f"incompatible checkpoint {path} for arch {arch!r}: " + (details or _one_line(err))
        ) from err


def _import(dotted: str) -> type:
    module_name, _, attr = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError):
        raise ModelLoadError(f"cannot import module_class {dotted!r}") from None


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(err).__name__}: {first}"[:300]
