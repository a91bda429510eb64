"""What a run prints: the lines of Lightning's own that no user can act on are left out.

Not part of the paper; one home for the console policy of every ``reaf-lightning``
command (see ``docs/reliability.md``, "Start-up and help").
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["quiet_lightning"]


def quiet_lightning() -> None:
    """Leave out two lines that every run would print and no user can act on.

    * Lightning's advertisement for its ``litlogger`` package, logged once per
      ``Trainer`` through its rank-zero logger; a logging filter drops exactly
      that record (the level stays, so ``Restoring states from ...`` and the
      other information still show).
    * The ``FutureWarning`` that torch >= 2.10 gives when Lightning's
      ``CombinedLoader`` builds a ``LeafSpec`` (``lightning/pytorch/utilities/
      _pytree.py``, unchanged up to Lightning 2.6.6); it is Lightning's call, not ours.
    """
    rank_zero_logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _LITLOGGER_TIP not in rank_zero_logger.filters:
        rank_zero_logger.addFilter(_LITLOGGER_TIP)
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )


class _DropLitloggerTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


_LITLOGGER_TIP = _DropLitloggerTip()
