"""``python -m reaf_lightning.paper``: regenerate the paper's configs and sweeps, list its runs.

::

    python -m reaf_lightning.paper configs [--check | --markdown]
    python -m reaf_lightning.paper sweeps [--check]
    python -m reaf_lightning.paper runs table3      # the runs of a table (or of a rows file)

``runs`` is what ``scripts/slurm/reaf_array.sh`` asks: one line per run,
``DEVICES<TAB>NODES<TAB>RECIPE<TAB>ROW``, from the table data, never from a
config file's comments (:mod:`~reaf_lightning.paper.array_runs`). Run from the
repository root (``--root`` otherwise). Exit status 2 for an unknown table, a
malformed rows file or a missing config.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reaf_lightning.commands import run_command
from reaf_lightning.errors import ConfigError

PROG = "python -m reaf_lightning.paper"


def build_parser() -> argparse.ArgumentParser:
    """The command's parser: one subcommand per job."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root", type=Path, default=Path("."), help="the repository root (default: .)"
    )
    jobs = parser.add_subparsers(dest="job", required=True)
    configs = jobs.add_parser("configs", help="(re)write configs/<table>/<row>.yaml")
    which = configs.add_mutually_exclusive_group()
    which.add_argument("--check", action="store_true", help="exit 1 if a config is stale")
    which.add_argument("--markdown", action="store_true", help="print the table of runs")
    sweeps = jobs.add_parser("sweeps", help="(re)write configs/sweeps/*.yaml")
    sweeps.add_argument("--check", action="store_true", help="exit 1 if a sweep is stale")
    runs = jobs.add_parser("runs", help="the runs of a table or rows file, one per line")
    runs.add_argument("source", help="table3 ... table7, or a rows file")
    return parser


def _check_root(root: Path) -> None:
    if not (root / "configs" / "recipes").is_dir():
        raise ConfigError(
            f"--root {root}: no configs/recipes/ there; run from the repository root or "
            "pass --root REPOSITORY"
        )


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (1: ``--check`` found stale files)."""
    cfg = build_parser().parse_args(argv)
    status = 0

    def body() -> None:
        nonlocal status
        if cfg.job == "runs":
            from reaf_lightning.paper.array_runs import array_runs, format_runs

            print(format_runs(array_runs(cfg.source, cfg.root)))
        elif cfg.job == "configs" and cfg.markdown:
            from reaf_lightning.paper.configs import markdown

            print(markdown())
        else:
            _check_root(cfg.root)
            status = _regenerate(cfg)

    code = run_command(PROG, body)
    return code or status


def _regenerate(cfg: argparse.Namespace) -> int:
    if cfg.job == "configs":
        from reaf_lightning.paper.configs import write_configs

        touched = [str(p.relative_to(cfg.root)) for p in write_configs(cfg.root, cfg.check)]
        what = "configs"
    else:
        from reaf_lightning.paper.sweeps import write_sweeps

        touched = [f"configs/sweeps/{name}" for name in write_sweeps(cfg.root, cfg.check)]
        what = "sweeps"
    if cfg.check:
        for path in touched:
            print(f"stale: {path}", file=sys.stderr)
        if touched:
            print(f"run: {PROG} {what}", file=sys.stderr)
        return 1 if touched else 0
    print(f"{what}: {len(touched)} written or removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
