"""Configuration files: strict YAML (no key given twice, merge keys accepted) and seeds.

Not part of the paper: a key given twice in a YAML mapping is silently the last one
for plain loaders, which would run another experiment than the file seems to say.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from reaf_lightning.errors import ConfigError, one_line

from .inputs import read_text

__all__ = [
    "CONFIG_MAX_BYTES",
    "SEED_RANGE",
    "check_seed",
    "check_yaml_keys",
    "install_strict_yaml",
    "read_yaml",
]

#: Largest configuration file read (ours: the paper's configs are under 4 KiB).
CONFIG_MAX_BYTES = 4 * 1024 * 1024

_MERGE_TAG = "tag:yaml.org,2002:merge"
#: ``$NAME`` or ``${NAME}``: how shells (and Hydra-style tools) name an environment variable.
_ENV_VARIABLE = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?")


def check_yaml_keys(text: str, source: str) -> None:
    """Refuse what plain YAML loaders would silently misread in ``text`` (read from ``source``).

    * A key given twice in one mapping: plain loaders keep the last value without a
      word. Standard merge keys (``<<: *base``) are accepted: a key merged in and then
      given again is an override, as YAML defines it, not a duplicate.
    * A value naming an environment variable (``${SCRATCH}/logs``, ``$HOME/data``): YAML
      does not expand it, so it would be taken literally (a folder named ``${SCRATCH}``
      would be created). Configs are plain YAML (ours): the shell expands a variable
      given on the command line.
    * Nesting deeper than PyYAML's recursive reader can follow (a ``RecursionError``
      otherwise).

    Raises:
        ConfigError: naming the source, the key or value and its line(s).
    """
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return  # the loader that follows reports the syntax error with its position
    except RecursionError:  # PyYAML recurses once per level of nesting
        raise ConfigError(
            f"{source}: values nested deeper than Python's recursion limit; a config is a "
            "mapping of settings a few levels deep"
        ) from None
    stack = [root] if root is not None else []
    seen_nodes: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:  # anchors make the tree a graph
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            lines: dict[object, int] = {}
            for key_node, value_node in node.value:
                stack.append(value_node)
                if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                    stack.append(key_node)
                    continue
                key = (key_node.tag, key_node.value)
                line = key_node.start_mark.line + 1
                if key in lines:
                    raise ConfigError(
                        f"{source}: key {key_node.value!r} is given twice (lines {lines[key]} "
                        f"and {line}); keep one"
                    )
                lines[key] = line
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.ScalarNode) and node.tag.endswith(":str"):
            variable = _ENV_VARIABLE.search(node.value)
            if variable:
                raise ConfigError(
                    f"{source}: {node.value!r} (line {node.start_mark.line + 1}) names the "
                    f"environment variable {variable.group(0)}, which YAML does not expand; "
                    "write the value itself, or give it on the command line where the shell "
                    "expands it"
                )


def install_strict_yaml() -> None:
    """Make jsonargparse's YAML loader refuse duplicate keys, in every file and value it reads.

    Every command's parser (``--config`` files, a nested ``--model FILE``, values on
    the command line) goes through jsonargparse's ``"yaml"`` loader; this wraps the
    loader jsonargparse has (merge keys and its number rules unchanged) with
    :func:`check_yaml_keys`, through jsonargparse's public ``set_loader``.
    Installing it twice changes nothing.
    """
    import yaml
    from jsonargparse import get_loader, set_loader

    current = get_loader("yaml")
    if getattr(current, "_reaf_strict", False):
        return

    def strict(text: str) -> Any:
        try:
            check_yaml_keys(text, "config")
        except ConfigError as err:
            raise yaml.constructor.ConstructorError(problem=str(err)) from None
        return current(text)

    strict._reaf_strict = True  # type: ignore[attr-defined]
    set_loader("yaml", strict, exceptions=(yaml.YAMLError,))


#: The seeds numpy (and so Lightning's ``seed_everything``) accepts: unsigned 32-bit.
SEED_RANGE = (0, 2**32 - 1)


def check_seed(seed: object, option: str = "seed_everything") -> None:
    """Refuse an integer seed numpy cannot take (``true``/``false``/``None`` pass).

    Raises:
        ConfigError: naming the value and the range.
    """
    if isinstance(seed, int) and not isinstance(seed, bool):
        low, high = SEED_RANGE
        if not low <= seed <= high:
            raise ConfigError(
                f"{option} {seed} is outside numpy's seed range [{low}, {high}]; give a seed in it"
            )


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping, refusing what would otherwise be misread silently.

    Refused, each with one line naming the file: a missing or unreadable file,
    one that is not a regular file (a FIFO, a device) or is larger than
    :data:`CONFIG_MAX_BYTES`, YAML syntax errors (with line and column), an empty
    file or one whose top level is not a mapping, and a key given twice in the
    same mapping (:func:`check_yaml_keys`; merge keys ``<<:`` are accepted).

    Raises:
        ConfigError: as above.
    """
    import yaml

    file = Path(path)
    text = read_text(file, CONFIG_MAX_BYTES, what="config file", error=ConfigError)
    try:
        check_yaml_keys(text, str(file))
        content = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or one_line(err)
        raise ConfigError(f"{file} is not valid YAML: {problem}{where}") from err
    if content is None:
        raise ConfigError(f"config file {file} is empty; it must hold a mapping of settings")
    if not isinstance(content, dict):
        raise ConfigError(
            f"config file {file} holds a {type(content).__name__}, not a mapping of settings "
            "(key: value lines)"
        )
    return content
