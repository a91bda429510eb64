"""``reaf-report``: finished runs -> the paper's tables (Markdown, CSV, LaTeX) and Table 3's figure.

::

    reaf-report                                    # every run under logs/
    reaf-report --log_roots '[logs, /scratch/me/logs]' --tables '[table3]' \\
        --csv outputs/report/table3.csv --latex outputs/report/table3.tex \\
        --figure outputs/report/table3

Reads only the run records (``metrics.json``) that training leaves in every
run directory (no W&B needed), each as untrusted input
(:mod:`reaf_lightning.runs.find`), and averages only runs that trained the
same thing (:mod:`reaf_lightning.report.summary`). Outputs follow the package's
output rules (:mod:`reaf_lightning.io`), checked before anything is read, and
are replaced together or not at all. Exit statuses as every command of the
package (:mod:`reaf_lightning.errors`).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import NoReturn

from jsonargparse import ActionConfigFile, ArgumentParser

from reaf_lightning.commands import parse, prepare_arguments, run_main
from reaf_lightning.errors import ConfigError, DataError

__all__ = ["build_parser", "main"]

PROG = "reaf-report"


def build_parser() -> ArgumentParser:
    """The command's flags (``--config`` YAML files and flags compose, later wins)."""
    parser = ArgumentParser(
        prog=PROG,
        description="The paper's tables from finished runs: mean ± std and a 95% interval over "
        "seeds, REAF rows vs their baselines, beside the paper's numbers.",
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


def _outputs(csv: str | None, latex: str | None, figure: str | None) -> dict[str, Path]:
    """The requested output files, checked (:func:`reaf_lightning.io.check_outputs`) and
    their directories writable, before anything is read."""
    from reaf_lightning.io import check_outputs, ensure_writable
    from reaf_lightning.report.figure import table3_figure_paths

    paths = {name: Path(p) for name, p in (("csv", csv), ("latex", latex)) if p}
    if figure:
        paths.update(table3_figure_paths(Path(figure)))
    check_outputs(list(paths.values()))
    for path in paths.values():
        ensure_writable(path.parent, what=f"directory of {path}")
    return paths


def _report(argv: list[str]) -> None:
    argv = prepare_arguments(argv)
    cfg = parse(build_parser(), argv)
    if not cfg.log_roots or not all(cfg.log_roots):
        raise ConfigError(
            f"--log_roots {cfg.log_roots!r} names no directory; give the directories "
            "runs were written to, e.g. --log_roots '[logs]'"
        )
    outputs = _outputs(cfg.csv, cfg.latex, cfg.figure)

    from reaf_lightning.io import check_outputs, shown
    from reaf_lightning.report.summary import (
        format_markdown,
        format_unfinished,
        report_frame,
        unfinished_frame,
    )
    from reaf_lightning.runs.find import find_runs

    runs, skipped, read = find_runs(cfg.log_roots)
    inputs = [*read, *(str(c) for c in cfg.get("config") or [])]
    check_outputs(list(outputs.values()), inputs=inputs)  # before anything is printed
    for line in skipped:
        print(f"{PROG}: skipped {line}", file=sys.stderr)
    finished = [run for run in runs if run.finished]
    if not finished and not cfg.tables:
        roots = ", ".join(shown(root) for root in cfg.log_roots)
        raise DataError(f"no finished runs (metrics.json with a finished fit) under {roots}")
    twice = Counter((run.experiment, run.identity, run.seed) for run in finished)
    for (experiment, _, seed), count in sorted(twice.items(), key=str):
        if count > 1:
            print(f"{PROG}: note: {experiment} has {count} runs with seed {seed}", file=sys.stderr)
    frame, notes = report_frame(runs, cfg.tables)
    for note in notes:
        print(f"{PROG}: note: {shown(note)}", file=sys.stderr)
    print(format_markdown(frame), end="")
    unfinished = format_unfinished(unfinished_frame(runs))
    if unfinished:
        print("\n" + unfinished, end="")
    if outputs:
        _write(outputs, frame, runs, inputs=inputs)
    for path in outputs.values():
        print(f"{PROG}: wrote {path}", file=sys.stderr)


def _write(outputs: dict[str, Path], frame, runs, inputs: list) -> None:
    """Every output of the command, replaced together or not at all."""
    from reaf_lightning.io import atomic_outputs
    from reaf_lightning.report.summary import format_latex, report_frame

    with atomic_outputs(list(outputs.values()), inputs=inputs) as temps:
        temp = dict(zip(outputs, temps))
        if "csv" in temp:
            frame.to_csv(temp["csv"], index=False)
        if "latex" in temp:
            temp["latex"].write_text(format_latex(frame), encoding="utf-8")
        if "png" in temp:
            from reaf_lightning.report.figure import save_table3_figure

            table3, _ = report_frame(runs, ["table3"])
            save_table3_figure(table3, {"png": temp["png"], "pdf": temp["pdf"]})


def main(args: list[str] | None = None) -> NoReturn:
    """Entry point of ``reaf-report``; ``args`` as on the command line (``None``: ``sys.argv``)."""
    run_main(PROG, _report, args)


if __name__ == "__main__":
    main()
