"""timm's network arguments for the package's networks: input channels, pooling, dropout, no head.

Not part of the paper, whose networks read RGB images and end in global average
pooling and a ``num_classes``-way fully connected layer (the defaults here).
These are the arguments ``timm.create_model`` gives timm's own ResNets, with
timm's meaning, so that the REAF networks drop into timm pipelines
(``reaf_lightning.timm``): ``in_chans`` input channels, ``num_classes=0`` for no
classifier (the network returns pooled features), ``global_pool`` the pooling
(``"avg"``, ``"max"``, ``"avgmax"``, ``"catavgmax"``, or ``""`` for none, which
needs ``num_classes=0``) and ``drop_rate`` the dropout before the classifier.
``"avg"`` is torchvision's ``nn.AdaptiveAvgPool2d``; the others are timm's
``timm.layers.SelectAdaptivePool2d``, imported only when asked for (timm is an
optional dependency).
"""

from __future__ import annotations

import math
from numbers import Real

from torch import nn

from reaf_lightning.layers.spec import is_int

__all__ = ["POOL_TYPES", "check_head", "global_pool_layer"]

POOL_TYPES = ("avg", "max", "avgmax", "catavgmax", "")


def check_head(
    num_classes: object, in_chans: object, global_pool: object, drop_rate: object
) -> None:
    """Refuse, in one line each, a value timm's ResNets would not take either."""
    for name, value, least in (("num_classes", num_classes, 0), ("in_chans", in_chans, 1)):
        if not is_int(value) or value < least:
            raise ValueError(f"{name}={value!r} must be an integer >= {least}")
    if global_pool not in POOL_TYPES:
        raise ValueError(
            f"global_pool={global_pool!r} is not one of 'avg', 'max', 'avgmax', 'catavgmax' "
            "or '' (no pooling)"
        )
    if global_pool == "" and num_classes:
        raise ValueError(
            f"global_pool='' (no pooling) needs num_classes=0, got {num_classes}: a classifier "
            "reads pooled features"
        )
    valid_rate = isinstance(drop_rate, Real) and not isinstance(drop_rate, bool)
    if not (valid_rate and math.isfinite(drop_rate) and 0 <= drop_rate <= 1):
        raise ValueError(f"drop_rate={drop_rate!r} must be a dropout probability in [0, 1]")


def global_pool_layer(pool_type: str) -> tuple[nn.Module, int]:
    """The pooling module of ``pool_type`` and how many features it returns per channel.

    The module keeps the ``(N, C', 1, 1)`` shape (``""``: the feature map itself); the
    network flattens it.
    """
    if pool_type == "avg":
        return nn.AdaptiveAvgPool2d(1), 1
    if pool_type == "":
        return nn.Identity(), 1
    try:
        from timm.layers import SelectAdaptivePool2d
    except ImportError:
        raise ValueError(
            f"global_pool={pool_type!r} needs timm: pip install 'reaf-lightning[timm]' "
            "('avg' and '' do not)"
        ) from None
    pool = SelectAdaptivePool2d(pool_type=pool_type, flatten=False)
    return pool, pool.feat_mult()
