"""REAF / REAF+ (Zhu, Al-Ars, Hofstee, IEEE Access 2020) as a PyTorch Lightning package.

``ImageClassifier`` and :func:`convert` are imported lazily (PEP 562), so that
``import reaf_lightning.models`` or ``reaf_lightning.layers`` — which never need
Lightning — does not pay for importing it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

__all__ = ["ImageClassifier", "__version__", "convert"]

try:
    __version__ = version("reaf-lightning")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

if TYPE_CHECKING:  # pragma: no cover
    from reaf_lightning.conversion import convert
    from reaf_lightning.training.module import ImageClassifier


def __getattr__(name: str) -> Any:
    if name == "ImageClassifier":
        from reaf_lightning.training.module import ImageClassifier

        return ImageClassifier
    if name == "convert":
        from reaf_lightning.conversion import convert

        return convert
    raise AttributeError(f"module 'reaf_lightning' has no attribute {name!r}")
