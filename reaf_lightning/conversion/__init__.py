"""REAF for any network: :func:`convert` a CNN's convolutions, widened to the original's cost.

``reaf_lightning.convert`` is :func:`reaf_lightning.conversion.convert`. Read
``core`` first (the steps, matching the cost), then ``arguments`` (each setting
checked), ``eligible`` (which convolutions may become REAF), ``sharing`` (what
must stay shared), ``graph`` (which channel counts must stay equal, from the
traced dataflow) and ``rewrite`` (rebuilding layers at new widths).
"""

from reaf_lightning.conversion.core import Conversion, ConversionReport, convert

__all__ = ["Conversion", "ConversionReport", "convert"]
