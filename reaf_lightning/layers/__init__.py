"""Convolution layers of REAF (paper §III): the REAF convolution and REAF+."""

from reaf_lightning.layers.create import create_conv2d
from reaf_lightning.layers.reaf_conv import (
    REAF_IMPLS,
    REAFConv2d,
    REAFSpec,
    autotune_cache,
    parse_reaf,
    resolve_auto_impl,
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
    "resolve_auto_impl",
]
