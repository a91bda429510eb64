"""Suite-wide fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_deterministic_mode():
    """In-process ``Trainer(deterministic=...)`` runs switch a process-global torch flag.

    Left on, it silently changes later tests (e.g. REAF ``impl="auto"`` stops timing),
    so every test starts and ends with the mode it found.
    """
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
