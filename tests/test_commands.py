"""The parse-and-run helper that all four commands share (``reaf_lightning.commands``).

Each check runs the real helper with a real jsonargparse parser, a real signal or the
real entry points; expected messages come from calling jsonargparse or reading
Lightning's docstrings directly, not from copied strings.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest
from helpers.tiny_run import TINY_ARGS
from jsonargparse import ArgumentError, ArgumentParser
from lightning.pytorch.callbacks import ModelCheckpoint

from reaf_lightning.commands import command_line, first_sentence, parse, run_main
from reaf_lightning.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, one_line
from reaf_lightning.training.cli import main as reaf_lightning_main
from reaf_lightning.training.cli import run
from reaf_lightning.training.console import quiet_lightning

LIGHT_COMMANDS = {
    "reaf-zoo": "reaf_lightning.paper.zoo",
    "reaf-report": "reaf_lightning.report.cli",
    "reaf-analysis": "reaf_lightning.analysis.cli",
    "python -m reaf_lightning.export": "reaf_lightning.export",
}


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="toy", exit_on_error=False)
    parser.add_argument("--epochs", type=int, default=1)
    return parser


def _exit_status(work, args) -> int:
    with pytest.raises(SystemExit) as exc:
        run_main("toy", work, args)
    return exc.value.code


def test_a_parse_error_exits_2_with_jsonargparse_words_on_one_line(capsys):
    with pytest.raises(ArgumentError) as direct:  # the library's own message, independently
        _parser().parse_args(["--epochs", "many"])
    seen = []
    assert _exit_status(lambda argv: seen.append(parse(_parser(), argv)), ["--epochs", "many"]) == (
        EXIT_USER_ERROR
    )
    assert seen == []  # the work never ran
    assert capsys.readouterr().err == f"toy: error: {one_line(direct.value)}\n"


def test_given_args_win_over_sys_argv_and_none_reads_it(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pytest", "-q", "tests/"])
    seen: list[int] = []

    def work(argv):
        seen.append(parse(_parser(), argv).epochs)

    assert _exit_status(work, ["--epochs", "3"]) == 0
    monkeypatch.setattr(sys, "argv", ["toy", "--epochs", "5"])
    assert _exit_status(work, None) == 0
    assert seen == [3, 5]
    assert command_line(("--epochs", 7)) == ["--epochs", "7"]


def test_ctrl_c_exits_130_and_says_so(capsys):
    def work(argv):
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, delivered to this process
        time.sleep(5)  # the handler interrupts this long before it ends
        raise AssertionError("SIGINT did not interrupt the work")

    with pytest.raises(SystemExit) as exc:
        run_main("toy", work, [], on_interrupt=lambda: "nothing was saved")
    assert exc.value.code == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "toy: interrupted (Ctrl-C); nothing was saved\n"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_help_of_the_light_commands_exits_0_without_torch():
    code = "\n".join(
        [
            "import importlib, sys",
            f"for prog, module in {LIGHT_COMMANDS!r}.items():",
            "    try:",
            "        importlib.import_module(module).main(['--help'])",
            "    except SystemExit as e:",
            "        print('EXIT', prog, e.code)",
            "print('HEAVY', sorted(m for m in ('torch', 'lightning') if m in sys.modules))",
        ]
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    for prog in LIGHT_COMMANDS:
        assert f"EXIT {prog} 0" in result.stdout
        assert f"usage: {prog}" in result.stdout
    assert "HEAVY []" in result.stdout


def test_reaf_lightning_help_exits_0_with_its_name(capsys):
    with pytest.raises(SystemExit) as exc:
        reaf_lightning_main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: reaf-lightning") and "fit" in out


def test_fit_help_shows_the_first_sentence_of_each_option_and_the_data_modules(capsys):
    with pytest.raises(SystemExit) as exc:
        reaf_lightning_main(["fit", "--help"])
    assert exc.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    # Lightning's own documentation of one option: its first sentence is shown, the rest not.
    after = ModelCheckpoint.__doc__.split("every_n_epochs:", 1)[1]
    documented = one_line(after.split("save_on_train_epoch_end:", 1)[0])
    first = first_sentence(documented)
    assert first != documented  # the documentation has more than one sentence
    assert first in help_text
    assert documented[len(first) :].strip()[:40] not in help_text
    assert "reaf_lightning.data.DigitsDataModule" in help_text  # --data choices are listed


def test_first_sentence():
    assert first_sentence("Stop here. Not this.") == "Stop here."
    assert first_sentence("name, e.g. ``x``. Then more.") == "name, e.g. ``x``."
    assert first_sentence("Defaults to ``None``. If ``True``, safe. More.") == "If ``True``, safe."
    assert first_sentence("one\n   sentence") == "one sentence"


def test_running_from_python_under_another_command_line_warns_nothing(monkeypatch, recwarn):
    """Tests call the command with their own arguments while sys.argv is pytest's."""
    monkeypatch.setattr(sys, "argv", ["pytest", "-q", "-x", "tests/cli"])
    with pytest.raises(SystemExit) as exc:
        run(["fit", *TINY_ARGS, "--print_config"])
    assert exc.value.code == 0
    assert [str(w.message) for w in recwarn if "sys.argv" in str(w.message)] == []


# --- quiet output ----------------------------------------------------------------------------


def test_a_trainer_logs_no_litlogger_tip_but_its_other_information(caplog):
    from lightning.pytorch import Trainer

    quiet_lightning()
    with caplog.at_level(logging.INFO):
        Trainer(logger=False, accelerator="cpu", enable_progress_bar=False, max_epochs=1)
    messages = [record.getMessage() for record in caplog.records]
    assert any(message.startswith("GPU available") for message in messages)
    assert not [message for message in messages if "litlogger" in message]


def _leafspec_warnings(quiet: bool) -> list[str]:
    from lightning.pytorch.utilities.combined_loader import CombinedLoader

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if quiet:
            quiet_lightning()
        CombinedLoader({"train": [1, 2]}, mode="max_size_cycle")  # what every fit builds
    return [str(w.message) for w in caught if "LeafSpec" in str(w.message)]


def test_lightnings_leafspec_deprecation_is_not_shown():
    # Without the filter the warning is there (when a Lightning release stops building a
    # LeafSpec this fails: the filter in quiet_lightning can then go).
    assert _leafspec_warnings(quiet=False)
    assert _leafspec_warnings(quiet=True) == []
