"""The shell and Python blocks of README.md and docs/, read with Sybil and run as a reader would.

The pages are parsed with Sybil's Markdown lexers (fenced blocks, and marks in HTML comments,
which neither GitHub nor the site shows). A mark stands on the line before a fence:

* no mark: a ``bash`` or ``python`` block runs in the fast tier (``pytest``);
* ``<!-- test: slow -->``: it runs in the slow tier (``pytest -m slow``), for training;
* ``<!-- test: skip REASON -->``: it needs what CI cannot have (REASON says what: ImageNet,
  a GPU, a SLURM cluster, W&B online, ...); it is reported as skipped with REASON, and a
  small version that does run stands beside it on the page;
* ``<!-- test: output -->`` on a ``text`` fence: what the block before it prints (stdout),
  compared as doctest compares (``...`` stands for any text, runs of whitespace are equal).

Every fence carries a language, so that no runnable block goes unnoticed: ``bash`` and
``python`` run, every other language (``text``, ``yaml``, ``bibtex``) is shown only.

:class:`Reader` runs the blocks in page order, README.md first and then the site's pages in
the order of ``mkdocs.yml``'s navigation, in one working directory: a copy of the repository
(what a fresh clone holds), with a fresh ``HOME``, no W&B credentials (so W&B logs offline),
one thread (``OMP_NUM_THREADS=1``) and this environment's commands on ``PATH``. Shell blocks
run in ``bash`` with ``set -eo pipefail`` (a failing command fails its block); the Python
blocks of a page share one interpreter started in that directory, as a reader pasting them
into ``python`` would. A block may use what earlier blocks of its own tier left (the slow
tier's trained runs), never what a block of the other tier left: each tier also runs alone.
"""

from __future__ import annotations

import doctest
import json
import os
import re
import select
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from sybil import Document, Region
from sybil.parsers.markdown.lexers import DirectiveInHTMLCommentLexer, RawFencedCodeBlockLexer

from helpers import REPO

#: Fences that run, and the marks a fence may carry.
RUNNABLE = ("bash", "python")
MARKS = ("slow", "skip", "output")
#: How long one block may take before it counts as hung (the slowest trains for a minute).
TIMEOUT_S = 900

_FENCES = RawFencedCodeBlockLexer(
    info_pattern=re.compile(r"(?P<language>[^\n]*)$\n", re.MULTILINE),
    mapping={"language": "language", "source": "source"},
)
_MARKS = DirectiveInHTMLCommentLexer(directive="test")


@dataclass
class Block:
    """One fenced block of a page, with its mark."""

    page: str  #: relative to the repository, e.g. ``docs/quickstart.md``
    line: int  #: the line of the opening fence
    language: str
    source: str
    tier: str = "fast"  #: ``fast`` or ``slow``
    skip: str | None = None  #: why it cannot run here
    output: str | None = None  #: what it prints, when the page shows that

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def first_line(self) -> str:
        return self.source.strip().splitlines()[0]


def pages() -> list[Path]:
    """README.md, then every page of the site in the order of its navigation."""

    def walk(entry: object) -> list[str]:
        if isinstance(entry, str):
            return [entry]
        if isinstance(entry, dict):
            return [page for value in entry.values() for page in walk(value)]
        if isinstance(entry, list):
            return [page for item in entry for page in walk(item)]
        return []

    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    return [REPO / "README.md", *(REPO / "docs" / page for page in walk(nav))]


def _lexed(document: Document) -> list[Region]:
    for region in _FENCES(document):
        region.parsed = ("fence", str(region.lexemes["language"]).strip())
        yield region
    for region in _MARKS(document):
        region.parsed = ("mark", str(region.lexemes["arguments"]).strip())
        yield region


def parse(path: Path) -> tuple[list[Block], list[str]]:
    """The blocks of one page, and what is wrong with its fences and marks."""
    document = Document.parse(str(path), _lexed)
    page = path.relative_to(REPO).as_posix()
    blocks: list[Block] = []
    problems: list[str] = []
    mark: tuple[str, str, int] | None = None  # (what, argument, line)
    last: Block | None = None
    for example in document.examples():
        kind, value = example.parsed
        where = f"{page}:{example.line}"
        if kind == "mark":
            if mark is not None:
                problems.append(f"{page}:{mark[2]}: mark not followed by a fence")
            what, _, argument = value.partition(" ")
            if what not in MARKS:
                problems.append(f"{where}: unknown mark {value!r}; known: {', '.join(MARKS)}")
            elif what == "skip" and not argument.strip():
                problems.append(f"{where}: 'skip' needs a reason (what the block needs)")
            mark = (what, argument.strip(), example.line)
            continue
        source = str(example.region.lexemes["source"])
        what, argument = (mark[0], mark[1]) if mark else ("", "")
        mark = None
        if not value:
            problems.append(f"{where}: a fence without a language (bash, python, text, ...)")
        elif what == "output":
            if last is None or last.output is not None:
                problems.append(f"{where}: an output mark without a block before it")
            else:
                last.output = source
        elif value in RUNNABLE:
            last = Block(page, example.line, value, source)
            blocks.append(last)
            if what == "slow":
                last.tier = "slow"
            elif what == "skip":
                last.skip = argument
        elif what:
            problems.append(f"{where}: a {what!r} mark on a {value!r} fence, which does not run")
    if mark is not None:
        problems.append(f"{page}:{mark[2]}: mark not followed by a fence")
    return blocks, problems


def all_blocks() -> tuple[list[Block], list[str]]:
    """Every block of every page in reading order, and every problem found."""
    blocks: list[Block] = []
    problems: list[str] = []
    for path in pages():
        found, wrong = parse(path)
        blocks += found
        problems += wrong
    return blocks, problems


def copy_repository(destination: Path) -> None:
    """What a fresh clone holds: the files git tracks, and new files it does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (item.decode() for item in listed)):
        source = REPO / name
        if source.is_file():  # (deleted but not yet staged: listed, absent)
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


class Reader:
    """A reader's working directory and environment, and the current page's interpreter."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.cwd = home / "reaf-lightning"
        copy_repository(self.cwd)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("WANDB_", "PYTHON", "PYTEST_", "REAF_"))
        }
        env.update(
            HOME=str(home),
            PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
            NETRC=str(home / "no-netrc"),  # no W&B credentials: W&B logs offline
            OMP_NUM_THREADS="1",
        )
        self.env = env
        self._python: _Interpreter | None = None

    def run(self, block: Block) -> str:
        """Run one block; its stdout. Fails (``AssertionError``) if it fails or prints else."""
        if block.language == "bash":
            output = self._bash(block)
        else:
            if self._python is None or self._python.page != block.page:
                self.close()
                self._python = _Interpreter(block.page, self.cwd, self.env, self.home)
            output = self._python.run(block)
        if block.output is not None:
            flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
            checker = doctest.OutputChecker()
            if not checker.check_output(block.output, output, flags):
                shown = doctest.Example("", block.output)
                raise AssertionError(
                    f"{block.id} prints other than the page shows:\n"
                    + checker.output_difference(shown, output, flags)
                )
        return output

    def _bash(self, block: Block) -> str:
        try:
            done = subprocess.run(
                ["bash", "-eo", "pipefail", "-c", block.source],
                cwd=self.cwd,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as hung:
            raise AssertionError(f"{block.id} ran longer than {TIMEOUT_S} s") from hung
        if done.returncode != 0:
            raise AssertionError(
                f"{block.id} exited {done.returncode}:\n{block.source}\n"
                f"--- stdout (end)\n{done.stdout[-3000:]}\n--- stderr (end)\n{done.stderr[-5000:]}"
            )
        return done.stdout

    def close(self) -> None:
        if self._python is not None:
            self._python.close()
            self._python = None


# The interpreter a page's Python blocks are pasted into: it reads one JSON request per
# line, runs the block in one namespace (stdout captured) and answers on its own pipe.
_DRIVER = r"""
import contextlib, io, json, os, sys, traceback
answers = os.fdopen(int(sys.argv[1]), "w")
namespace = {"__name__": "__main__"}
for request in map(json.loads, sys.stdin):
    printed = io.StringIO()
    try:
        code = compile("\n" * request["line"] + request["source"], request["page"], "exec")
        with contextlib.redirect_stdout(printed):
            exec(code, namespace)
        error = None
    except BaseException:
        error = traceback.format_exc()
    answers.write(json.dumps({"stdout": printed.getvalue(), "error": error}) + "\n")
    answers.flush()
"""


class _Interpreter:
    def __init__(self, page: str, cwd: Path, env: dict[str, str], home: Path) -> None:
        self.page = page
        read, write = os.pipe()
        self._log = (home / f"python-{page.replace('/', '_')}.log").open("w")
        self._process = subprocess.Popen(
            [sys.executable, "-c", _DRIVER, str(write)],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
            pass_fds=(write,),
        )
        os.close(write)
        self._answers = os.fdopen(read)

    def run(self, block: Block) -> str:
        request = {"page": block.page, "line": block.line, "source": block.source}
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        ready, _, _ = select.select([self._answers], [], [], TIMEOUT_S)
        line = self._answers.readline() if ready else ""
        if not line:
            self.close()
            tail = Path(self._log.name).read_text()[-5000:]
            raise AssertionError(f"{block.id}: the interpreter hung or died:\n{tail}")
        answer = json.loads(line)
        if answer["error"]:
            tail = Path(self._log.name).read_text()[-3000:]
            raise AssertionError(f"{block.id} raised:\n{answer['error']}\n--- stderr (end)\n{tail}")
        return answer["stdout"]

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.stdin.close()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._answers.close()
        self._log.close()
