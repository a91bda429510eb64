"""REAF for any network: :func:`convert` a CNN's convolutions, widened to the original's cost.

``reaf_lightning.convert`` is :func:`reaf_lightning.conversion.convert`. Read
``core`` first (eligibility, matching the cost), then ``graph`` (which channel
counts must stay equal, from the traced dataflow) and ``rewrite`` (rebuilding
layers at new widths).
"""

from reaf_lightning.conversion.core import Conversion, ConversionReport, convert

__all__ = ["Conversion", "ConversionReport", "convert"]
