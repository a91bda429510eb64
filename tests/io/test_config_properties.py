"""Property tests for the config reader (reaf_lightning.io.config): whatever a config file
holds, reading it gives a mapping or one ``ConfigError`` line naming the file.

Bytes and YAML-like text come from hypothesis; the YAML-like text is assembled from the
pieces that break naive readers (anchors and aliases, merge keys, duplicate keys,
environment variables, tags, deep nesting, tabs, non-ASCII).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from reaf_lightning.errors import ConfigError
from reaf_lightning.io.config import check_yaml_keys, read_yaml

_PIECES = [
    "a: 1\n", "a: 2\n", "b: &x {c: 1}\n", "d: *x\n", "<<: *x\n", "e:\n  <<: *x\n  c: 2\n",
    "f: ${HOME}\n", "g: $USER/x\n", "h: !!python/object:os.system {}\n", "i: !!binary aGk=\n",
    "- 1\n", "[" * 40, "]" * 40, "a: " + "[" * 1000, "{", "}", "\t", "j: 'unterminated\n",
    "k: é\n", "? [1, 2]\n",
    ": 3\n", "l: [1, 2, 1]\n", "m: {n: 1, n: 2}\n", "---\n", "...\n", "o: 1e400\n", "&a [*a]\n",
]  # fmt: skip
_yaml_like = st.lists(st.sampled_from(_PIECES) | st.text(max_size=12), max_size=12).map("".join)


def _read(data: bytes) -> dict | None:
    """``read_yaml`` of a file holding ``data``; on refusal, check it is one line naming
    the file."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        path.write_bytes(data)
        try:
            content = read_yaml(path)
        except ConfigError as err:
            assert str(path) in str(err) and "\n" not in str(err), str(err)
            return None
    assert isinstance(content, dict)
    return content


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | _yaml_like.map(str.encode))
def test_any_file_is_a_mapping_or_one_line_naming_it(data):
    _read(data)


@settings(max_examples=200, deadline=None)
@given(_yaml_like)
def test_what_the_reader_accepts_has_no_key_given_twice_and_no_variable(text):
    """An accepted file is one whose plain ``safe_load`` reading loses nothing: the key
    check passes on it, and no string value names an environment variable."""
    content = _read(text.encode())
    if content is None:
        return
    check_yaml_keys(text, "again")  # accepted once, accepted again
    stack: list = [content]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str):
            assert "${" not in value, value


def test_a_python_tag_is_refused_not_constructed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("a: !!python/object/apply:os.system ['echo hi']\n")
    try:
        read_yaml(path)
    except ConfigError as err:
        assert str(path) in str(err) and "\n" not in str(err)
    else:
        raise AssertionError("a python tag was accepted")
    assert yaml.safe_load("a: 1") == {"a": 1}
