"""Convolution layers of REAF (paper §III): the REAF convolution and REAF+.

Read ``reaf_conv`` first (the definition, Eq. 5-6, and the module). Below it, each
module imports only the ones listed after it: ``dispatch`` (how a call reaches a
strategy), ``autotune`` (``impl="auto"``), ``strategies`` (the table of kernels),
``plan`` (index tensors from the spec), ``spec`` (``G_I-G_M-G_O``).
"""

from reaf_lightning.layers.autotune import autotune_cache, resolve_auto_impl
from reaf_lightning.layers.create import create_conv2d
from reaf_lightning.layers.plan import REAFPlan, make_plan
from reaf_lightning.layers.reaf_conv import REAFConv2d, reaf_conv2d
from reaf_lightning.layers.reaf_plus import REAFPlusConv2d
from reaf_lightning.layers.spec import REAFSpec, parse_reaf
from reaf_lightning.layers.strategies import STRATEGIES, Strategy, check_impl

__all__ = [
    "STRATEGIES",
    "REAFConv2d",
    "REAFPlan",
    "REAFPlusConv2d",
    "REAFSpec",
    "Strategy",
    "autotune_cache",
    "check_impl",
    "create_conv2d",
    "make_plan",
    "parse_reaf",
    "reaf_conv2d",
    "resolve_auto_impl",
]
