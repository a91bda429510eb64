"""Suite-wide fixtures (the process's deterministic mode, one trained tiny run to share) and
the hypothesis profile."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from helpers.tiny_run import TINY_ARGS, finish_wandb, isolate_wandb
from hypothesis import settings

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


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """The run directory of one tiny quick-start ``fit`` (1 epoch), trained once per session.

    Trained through the CLI like a user would (``reaf-lightning fit --config
    configs/quickstart.yaml`` + :data:`TINY_ARGS`), with W&B offline: the directory
    is ``<tmp>/logs/quickstart/seed0`` and holds ``config.yaml``,
    ``checkpoints/{last,best-epoch=000}.ckpt`` and ``wandb/offline-run-*``.
    Treat it as read-only: copy it (``shutil.copytree``) before training on.
    """
    from reaf_lightning.training.cli import run

    tmp = tmp_path_factory.mktemp("trained_run")
    cwd = os.getcwd()
    with pytest.MonkeyPatch.context() as mp:
        isolate_wandb(mp, tmp)
        mp.delenv("REAF_DEBUG", raising=False)
        os.chdir(tmp)
        try:
            run(["fit", *TINY_ARGS, "--trainer.max_epochs", "1"])
        finally:
            finish_wandb()
            os.chdir(cwd)
            enabled, warn_only = _INITIAL_DETERMINISTIC
            torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    return tmp / "logs" / "quickstart" / "seed0"


@pytest.fixture
def one_thread(monkeypatch):
    """One intra-op thread here and in subprocesses (``OMP_NUM_THREADS``), restored after.

    Opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``: on the shared 2-core
    machine a tiny model with 2 intra-op threads runs ~8x slower than with one as soon as
    another process is busy (OpenMP threads wait for each other).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(threads)


# Property tests (hypothesis) draw their examples from a fixed seed, so every run and CI
# machine sees the same ones; no example database is written into the checkout; no per-example
# deadline (timings vary on shared CI machines). HYPOTHESIS_PROFILE=explore draws new ones.
settings.register_profile("reaf", derandomize=True, database=None, deadline=None)
settings.register_profile("explore", database=None, deadline=None, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "reaf"))


@pytest.fixture
def finished_run(trained_run, tmp_path, monkeypatch) -> Path:
    """A copy of :func:`trained_run` at ``<tmp>/exp/seed0``, W&B off, to train on or break."""
    monkeypatch.delenv("REAF_DEBUG", raising=False)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    copy = tmp_path / "exp" / "seed0"
    shutil.copytree(trained_run, copy, symlinks=True)
    return copy
