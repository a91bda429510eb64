"""Helpers shared by the test modules, importable as ``helpers`` (``pythonpath`` in
``pyproject.toml``): fake data sets in their real on-disk formats (:mod:`.fake_data`), the tiny
quick-start run (:mod:`.tiny_run`), real ``reaf-lightning`` processes with injected faults
(:mod:`.fit_processes`) and W&B's offline run files read back (:mod:`.wandb_records`)."""

from pathlib import Path

#: The repository root and its tests folder.
REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
