"""Suite-wide fixtures."""

from __future__ import annotations

import pytest
import torch

# The process's state before any test (or fixture) ran.
_INITIAL_DETERMINISTIC = (
    torch.are_deterministic_algorithms_enabled(),
    torch.is_deterministic_algorithms_warn_only_enabled(),
)


@pytest.fixture(autouse=True)
def _reset_deterministic_mode():
    """In-process ``Trainer(deterministic=...)`` runs switch a process-global torch flag.

    Left on (also by module-scoped fixtures that train), it silently changes later
    tests (e.g. REAF ``impl="auto"`` stops timing), so every test starts and ends
    with the process's initial mode.
    """
    enabled, warn_only = _INITIAL_DETERMINISTIC
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
