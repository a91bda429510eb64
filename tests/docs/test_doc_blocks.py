"""Every shell and Python block of README.md and docs/, run as written, in reading order.

One test per block (:mod:`helpers.doc_blocks` says how pages mark a block and how it runs):
the fast tier runs the unmarked blocks, ``pytest -m slow`` the training ones, and blocks that
need what CI cannot have are reported as skipped with what they need. Where the page shows
what a block prints, the output is compared. A few blocks have a check here beside them, for
what their output does not show (the quick start's runs and their records).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.doc_blocks import Block, Reader, all_blocks

BLOCKS, PROBLEMS = all_blocks()


def _marks(block: Block) -> list[pytest.MarkDecorator]:
    if block.skip:
        return [pytest.mark.skip(reason=block.skip)]
    return [pytest.mark.slow] if block.tier == "slow" else []


def check_quickstart(cwd: Path, printed: str) -> None:
    """The quick start tells the paper's story: a REAF network, its baseline at equal cost."""
    records = {}
    for name in ("quickstart", "quickstart_baseline"):
        run = cwd / "logs" / name / "seed0"
        records[name] = json.loads((run / "metrics.json").read_text())
        assert list(run.glob("wandb/offline-run-*")), "W&B did not log offline"
        assert (run / "checkpoints" / "last.ckpt").is_file()
    reaf, baseline = records["quickstart"], records["quickstart_baseline"]
    assert (reaf["network"]["arch"], baseline["network"]["arch"]) == ("reaf_resnet18", "resnet18")
    assert reaf["finished"] and baseline["finished"] and reaf["format"] == "reaf-run/1"
    assert reaf["fit"]["final"]["val/acc1"] >= 0.95  # as the config and the page promise
    assert baseline["fit"]["final"]["val/acc1"] >= 0.9
    assert abs(baseline["gmacs"] / reaf["gmacs"] - 1) < 0.02  # the same FLOPs class
    out = cwd / "outputs" / "quickstart"
    for name in ("selectivity.png", "selectivity.pdf", "selectivity_summary.csv"):
        assert (out / name).is_file(), name
    for name, record in records.items():  # the report shows both runs' final errors
        err1 = 100 * record["fit"]["final"]["val/err1"]
        assert re.search(rf"\| {name} \| 1 \| {err1:.2f} \|", printed), printed


#: Checks that follow a block, by its page and first line.
CHECKS: dict[tuple[str, str], Callable[[Path, str], None]] = {
    ("README.md", "# 1. train a REAF network"): check_quickstart,
}


def test_pages_mark_their_blocks_correctly():
    assert not PROBLEMS, "\n".join(PROBLEMS)


def test_every_check_follows_one_block():
    for page, first_line in CHECKS:
        found = [b for b in BLOCKS if (b.page, b.first_line) == (page, first_line)]
        assert len(found) == 1, (page, first_line)
        assert not found[0].skip


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    reader = Reader(tmp_path_factory.mktemp("reader"))
    yield reader
    reader.close()


@pytest.mark.parametrize("block", [pytest.param(b, id=b.id, marks=_marks(b)) for b in BLOCKS])
def test_block(block: Block, reader: Reader):
    printed = reader.run(block)
    check = CHECKS.get((block.page, block.first_line))
    if check is not None:
        check(reader.cwd, printed)
