"""REAF / REAF+ (Zhu, Al-Ars, Hofstee, IEEE Access 2020) as a PyTorch Lightning package.

``ImageClassifier`` and :func:`convert` are imported lazily (PEP 562), so that
``import reaf_lightning.models`` or ``reaf_lightning.layers`` — which never need
Lightning — does not pay for importing it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from reaf_lightning.timm_models import register_with_timm_on_import

__all__ = ["ImageClassifier", "convert"]

if TYPE_CHECKING:  # pragma: no cover
    from reaf_lightning.conversion import convert
    from reaf_lightning.module import ImageClassifier


# timm (when installed) builds the REAF networks; registered when timm is imported, cheaply.
register_with_timm_on_import()


def __getattr__(name: str) -> Any:
    if name == "ImageClassifier":
        from reaf_lightning.module import ImageClassifier

        return ImageClassifier
    if name == "convert":
        from reaf_lightning.conversion import convert

        return convert
    raise AttributeError(f"module 'reaf_lightning' has no attribute {name!r}")
