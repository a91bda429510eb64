"""``reaf-report``: finished runs -> the paper's tables (Markdown, CSV, LaTeX) and Table 3's figure.

::

    reaf-report                                    # every run under logs/
    reaf-report --log_roots '[logs, /scratch/me/logs]' --tables '[table3]' \\
        --csv outputs/report/table3.csv --latex outputs/report/table3.tex \\
        --figure outputs/report/table3

Reads only the ``metrics.json`` files that training leaves in every run
directory (no W&B needed), so it also works for runs trained with
``--trainer.logger false``. Output locations are checked before anything is
read; every file is written atomically. Exit statuses as every command of the
package (:mod:`reaf_lightning.errors`).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import NoReturn

from jsonargparse import ActionConfigFile, ArgumentParser

from reaf_lightning.commands import parse, run_main
from reaf_lightning.errors import ConfigError, DataError

__all__ = ["build_parser", "main"]

PROG = "reaf-report"


def build_parser() -> ArgumentParser:
    """The command's flags (``--config`` YAML files and flags compose, later wins)."""
    parser = ArgumentParser(
        prog=PROG,
        description="The paper's tables from finished runs: mean ± std over seeds vs the paper.",
        exit_on_error=False,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file(s) of these flags.")
    parser.add_argument(
        "--log_roots",
        type=list[str],
        default=["logs"],
        help="Directories searched (recursively) for run dirs holding metrics.json.",
    )
    parser.add_argument(
        "--tables",
        type=list[str] | None,
        default=None,
        help="Paper tables to show, e.g. [table3, table4]; default: every table with runs.",
    )
    parser.add_argument("--csv", type=str | None, default=None, help="Also write this CSV file.")
    parser.add_argument("--latex", type=str | None, default=None, help="Also write this .tex file.")
    parser.add_argument(
        "--figure",
        type=str | None,
        default=None,
        help="Write Table 3's error-vs-MACs figure as FIGURE.png and FIGURE.pdf.",
    )
    return parser


def _outputs(csv: str | None, latex: str | None, figure: str | None) -> list[Path]:
    """The requested output files; their directories are checked writable before any work."""
    from reaf_lightning.io import ensure_writable

    paths = [Path(p) for p in (csv, latex) if p]
    if figure:
        stem = Path(figure)
        stem = stem.with_suffix("") if stem.suffix in (".png", ".pdf") else stem
        paths += [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for path in paths:
        if path.is_dir():
            raise ConfigError(f"output {path} is a directory; give a file name")
        ensure_writable(path.parent, what=f"directory of {path}")
    return paths


def _report(argv: list[str]) -> None:
    cfg = parse(build_parser(), argv)
    outputs = _outputs(cfg.csv, cfg.latex, cfg.figure)

    from reaf_lightning.io import atomic_outputs
    from reaf_lightning.report.record import find_runs
    from reaf_lightning.report.tables import format_latex, format_markdown, report_frame

    runs, skipped = find_runs(cfg.log_roots)
    for line in skipped:
        print(f"{PROG}: skipped {line}", file=sys.stderr)
    if not runs and not cfg.tables:
        roots = ", ".join(cfg.log_roots)
        raise DataError(f"no finished runs (metrics.json with a finished fit) under {roots}")
    twice = Counter((run.experiment, run.seed) for run in runs)
    for (experiment, seed), count in sorted(twice.items(), key=str):
        if count > 1:
            print(f"{PROG}: note: {experiment} has {count} runs with seed {seed}", file=sys.stderr)
    frame = report_frame(runs, cfg.tables)
    print(format_markdown(frame), end="")
    if cfg.csv:
        with atomic_outputs([cfg.csv]) as (temp,):
            frame.to_csv(temp, index=False)
    if cfg.latex:
        with atomic_outputs([cfg.latex]) as (temp,):
            temp.write_text(format_latex(frame))
    if cfg.figure:
        from reaf_lightning.report.figure import table3_figure

        table3_figure(report_frame(runs, ["table3"]), outputs[-1].with_suffix(""))
    for path in outputs:
        print(f"{PROG}: wrote {path}", file=sys.stderr)


def main(args: list[str] | None = None) -> NoReturn:
    """Entry point of ``reaf-report``; ``args`` as on the command line (``None``: ``sys.argv``)."""
    run_main(PROG, _report, args)


if __name__ == "__main__":
    main()
