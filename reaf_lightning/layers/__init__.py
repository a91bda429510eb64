"""Convolution layers of REAF (paper §III): the REAF convolution and REAF+.

Read ``reaf_conv`` first (the definition, Eq. 5-6, and the module); ``strategies``
holds the faster kernels computing the same function and ``autotune`` picks one.
"""

from reaf_lightning.layers.autotune import autotune_cache, resolve_auto_impl
from reaf_lightning.layers.create import create_conv2d
from reaf_lightning.layers.reaf_conv import (
    REAF_IMPLS,
    REAFConv2d,
    REAFSpec,
    parse_reaf,
    reaf_conv2d,
)
from reaf_lightning.layers.reaf_plus import REAFPlusConv2d

__all__ = [
    "REAF_IMPLS",
    "REAFConv2d",
    "REAFPlusConv2d",
    "REAFSpec",
    "autotune_cache",
    "create_conv2d",
    "parse_reaf",
    "reaf_conv2d",
    "resolve_auto_impl",
]
