"""The runs of a SLURM array: a paper table's experiments, or the lines of a rows file.

``scripts/slurm/reaf_array.sh`` asks ``python -m reaf_lightning.paper runs SOURCE``
for its runs instead of reading config files' comments. Each run is its
``--config`` files in order (the recipe first) and the devices per node and
nodes it trains on (``trainer.devices`` / ``trainer.num_nodes`` of the last
file that sets them, as the later ``--config`` wins), so that the script asks
SLURM for as many tasks per node as the run starts processes.

A rows file has one run per line: its config files in order, or only a paper
row's config, whose recipe then comes from the table data. Blank lines and
``#`` comments are skipped; words may be quoted (``"my rows/a.yaml"``); CRLF
line ends and a UTF-8 byte-order mark are accepted. The file is only read,
and only as text: nothing in it is run.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from reaf_lightning.errors import ConfigError
from reaf_lightning.io import read_text
from reaf_lightning.paper.configs import config_path, experiment_rows, recipe_path
from reaf_lightning.paper.tables import paper_rows

__all__ = ["ArrayRun", "array_runs", "format_runs"]

MAX_ROWS_FILE_BYTES = 1 << 20  # a rows file lists runs; anything larger is not one


@dataclass(frozen=True)
class ArrayRun:
    """One run of the array: its ``--config`` files and the processes it starts."""

    configs: tuple[str, ...]
    devices: int
    num_nodes: int


def _table_configs(table: str) -> list[tuple[str, ...]]:
    try:
        rows = paper_rows(table)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if all(row.same_as is not None for row in rows):
        restated = sorted({row.same_as.split("/")[0] for row in rows})
        raise ConfigError(
            f"{table} restates rows of {' and '.join(restated)}: it has no runs of its own"
        )
    return [(recipe_path(row), config_path(row)) for row in rows if row.same_as is None]


def _recipe_of(config: str, where: str) -> str:
    wanted = Path(config).as_posix().removeprefix("./")
    for row in experiment_rows():
        if config_path(row) == wanted:
            return recipe_path(row)
    raise ConfigError(
        f"{where}: {config} alone is not a paper row's config (configs/<table>/<row>.yaml); "
        "put its recipe before it on the line"
    )


def _file_configs(path: Path) -> list[tuple[str, ...]]:
    text = read_text(path, MAX_ROWS_FILE_BYTES, "rows file", ConfigError)
    runs = []
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{path}:{number}"
        try:
            words = shlex.split(line, comments=True)
        except ValueError as err:
            raise ConfigError(f"{where}: {err} (quote each path once)") from None
        if any("\t" in word for word in words):
            raise ConfigError(f"{where}: a path with a tab character is not supported")
        if len(words) == 1:
            words = [_recipe_of(words[0], where), words[0]]
        if words:
            runs.append(tuple(words))
    return runs


def _count(value: Any, key: str, config: str) -> int:
    """``trainer.devices`` / ``num_nodes`` as a number of processes per node / nodes."""
    if isinstance(value, list) and key == "devices" and value:
        return len(value)
    if isinstance(value, str) and value.isdecimal():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ConfigError(
        f"{config}: trainer.{key}={value!r}; a SLURM array needs a positive number "
        "(or a list of device ids) to ask for that many tasks per node"
    )


def _processes(configs: tuple[str, ...], root: Path) -> tuple[int, int]:
    devices, nodes = 1, 1
    for config in configs:
        path = root / config
        if not path.is_file():
            raise ConfigError(f"{config}: no such config file (paths are relative to {root})")
        try:
            content = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError, OSError) as err:
            raise ConfigError(f"{config}: not readable YAML ({type(err).__name__})") from None
        trainer = content.get("trainer") if isinstance(content, dict) else None
        if isinstance(trainer, dict):
            if "devices" in trainer:
                devices = _count(trainer["devices"], "devices", config)
            if "num_nodes" in trainer:
                nodes = _count(trainer["num_nodes"], "num_nodes", config)
    return devices, nodes


def array_runs(source: str, root: Path = Path(".")) -> list[ArrayRun]:
    """The runs of ``source``: an existing rows file, else a paper table (``table3``...).

    Raises:
        ConfigError: unknown table, unreadable or malformed rows file, a missing
            config, or a config whose ``trainer.devices`` is not a count.
    """
    path = Path(source)
    configs = _file_configs(path) if path.is_file() else _table_configs(source)
    if not configs:
        raise ConfigError(f"{source}: no runs in it")
    return [ArrayRun(c, *_processes(c, root)) for c in configs]


def format_runs(runs: list[ArrayRun]) -> str:
    """One line per run: ``DEVICES<TAB>NODES<TAB>CONFIG<TAB>CONFIG...`` (what the script reads)."""
    return "\n".join("\t".join([str(r.devices), str(r.num_nodes), *r.configs]) for r in runs)
