"""Networks by name from a config: the registry, torchvision's and timm's builders, converted.

A config names a network as text, and a config is untrusted input: nothing it
names is imported. Only three sources are looked up, each by its own public
listing — this package's registry (``create_model``), torchvision's
classification builders (``torchvision.models.list_models``, built with
``weights=None``: nothing is downloaded) as ``torchvision.<name>``, and timm's
models (``timm.list_models``, ``pretrained=False``) as ``timm.<name>`` when timm
is installed. A ``convert`` setting then applies :func:`reaf_lightning.convert`.

:func:`build_network` is the one function that turns a network name from a config
or a checkpoint into a network: the training module, the run's cost count, the
export and ``reaf-analysis`` all build through it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from torch import nn

from reaf_lightning.conversion.core import convert as convert_network
from reaf_lightning.models.registry import create_model

__all__ = ["CONVERT_SETTINGS", "build_network", "external_builder"]

CONVERT_SETTINGS = (
    "reaf",
    "match",
    "include",
    "exclude",
    "pointwise",
    "grouped",
    "input_size",
    "impl",
    "tolerance",
)


def external_builder(name: str) -> Callable[..., nn.Module]:
    """The builder of ``torchvision.<model>`` or ``timm.<model>``, looked up in their listings.

    Raises:
        ValueError: another prefix, an unknown model, or timm not installed.
    """
    source, _, model = name.partition(".")
    if source == "torchvision":
        from torchvision import models

        valid = models.list_models(module=models)
        if model not in valid:
            raise ValueError(
                f"unknown torchvision classification model {model!r}; valid: {', '.join(valid)}"
            )
        return partial(models.get_model, model, weights=None)
    if source == "timm":
        try:
            import timm
        except ImportError as err:
            raise ValueError(
                f"model {name!r} needs timm: pip install 'reaf-lightning[timm]'"
            ) from err
        if model not in timm.list_models():
            raise ValueError(f"unknown timm model {model!r} (see timm.list_models())")
        return partial(timm.create_model, model, pretrained=False)
    raise ValueError(
        f"model {name!r}: a dotted name must start with 'torchvision.' or 'timm.'; other "
        "networks: build them in Python and call reaf_lightning.convert"
    )


def build_network(name: str, convert: Mapping[str, Any] | None = None, **kwargs: Any) -> nn.Module:
    """Build ``name`` with ``kwargs``, then convert it when a ``convert`` setting is given.

    Args:
        name: a registry name, ``torchvision.<model>`` or ``timm.<model>``.
        convert: keyword arguments of :func:`reaf_lightning.convert` (one of
            ``CONVERT_SETTINGS``), e.g. ``{"reaf": "4-3-4", "match": "flops"}``.
        **kwargs: the network's own arguments (``num_classes``, ...).

    Raises:
        ValueError: an unknown name or convert setting, naming the valid ones.
    """
    model = external_builder(name)(**kwargs) if "." in name else create_model(name, **kwargs)
    if convert is None:
        return model
    if not isinstance(convert, Mapping):
        raise ValueError(f"convert={convert!r} must be a mapping of {', '.join(CONVERT_SETTINGS)}")
    unknown = sorted(set(convert) - set(CONVERT_SETTINGS))
    if unknown:
        raise ValueError(
            f"convert: unknown setting(s) {unknown}; valid: {', '.join(CONVERT_SETTINGS)}"
        )
    settings = dict(convert)
    for key in ("include", "exclude", "input_size"):
        if key in settings:
            settings[key] = tuple(settings[key])
    return convert_network(model, **settings).model
