"""``python -m reaf_lightning.paper``: regenerate the paper's configs and sweeps, list its runs.

::

    python -m reaf_lightning.paper configs [--check | --markdown]
    python -m reaf_lightning.paper sweeps [--check]
    python -m reaf_lightning.paper runs table3      # the runs of a table (or of a rows file)

``runs`` is what ``scripts/slurm/reaf_array.sh`` asks: one line per run,
``DEVICES<TAB>NODES<TAB>RECIPE<TAB>ROW``, from the table data, never from a
config file's comments (:mod:`~reaf_lightning.paper.array_runs`). Run from the
repository root (``--root`` otherwise). Exit status 1 when ``--check`` finds a
stale file; 2 for an unknown table, a malformed rows file or a missing config
(:mod:`reaf_lightning.errors`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

from jsonargparse import ArgumentParser

from reaf_lightning.commands import parse, run_main
from reaf_lightning.errors import ConfigError

PROG = "python -m reaf_lightning.paper"


def build_parser() -> ArgumentParser:
    """The command's parser: one subcommand per job."""
    parser = ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0], exit_on_error=False, default_env=False
    )
    parser.add_argument("--root", type=Path, default=Path("."), help="the repository root")
    jobs = parser.add_subcommands(required=True, dest="job")
    configs = ArgumentParser()
    which = configs.add_mutually_exclusive_group()
    which.add_argument("--check", action="store_true", help="exit 1 if a config is stale")
    which.add_argument("--markdown", action="store_true", help="print the table of runs")
    jobs.add_subcommand("configs", configs, help="(re)write configs/<table>/<row>.yaml")
    sweeps = ArgumentParser()
    sweeps.add_argument("--check", action="store_true", help="exit 1 if a sweep is stale")
    jobs.add_subcommand("sweeps", sweeps, help="(re)write configs/sweeps/*.yaml")
    runs = ArgumentParser()
    runs.add_argument("source", type=str, help="table3 ... table7, or a rows file")
    jobs.add_subcommand("runs", runs, help="the runs of a table or rows file, one per line")
    return parser


def main(args: list[str] | None = None) -> NoReturn:
    """Entry point; exits with the status of :mod:`reaf_lightning.errors`, or 1 for stale files."""
    run_main(PROG, _paper, args)


def _paper(argv: list[str]) -> None:
    cfg = parse(build_parser(), argv)
    job = cfg[cfg.job]
    if cfg.job == "runs":
        from reaf_lightning.paper.array_runs import array_runs, format_runs

        print(format_runs(array_runs(job.source, cfg.root)))
    elif cfg.job == "configs" and job.markdown:
        from reaf_lightning.paper.configs import markdown

        print(markdown())
    elif not (cfg.root / "configs" / "recipes").is_dir():
        raise ConfigError(
            f"--root {cfg.root}: no configs/recipes/ there; run from the repository root or "
            "pass --root REPOSITORY"
        )
    else:
        _regenerate(cfg.job, cfg.root, job)


def _regenerate(what: str, root: Path, job: Any) -> None:
    """Write (or with ``--check`` compare) the configs or the sweeps; exit 1 if stale."""
    if what == "configs":
        from reaf_lightning.paper.configs import write_configs

        touched = [str(p.relative_to(root)) for p in write_configs(root, job.check)]
    else:
        from reaf_lightning.paper.sweeps import write_sweeps

        touched = [f"configs/sweeps/{name}" for name in write_sweeps(root, job.check)]
    if not job.check:
        print(f"{what}: {len(touched)} written or removed")
        return
    for path in touched:
        print(f"stale: {path}", file=sys.stderr)
    if touched:
        print(f"run: {PROG} {what}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
