"""The package's file helpers, shared by training, analysis, the zoo and the report.

One home per job: :mod:`.inputs` (bounded reads of untrusted files and the safe
checkpoint loader), :mod:`.outputs` (the output rules and all-or-nothing writes) and
:mod:`.config` (strict YAML, seeds); everything is importable from here.

* Reading untrusted files: :func:`read_bounded` (a regular file of bounded size, never a
  FIFO or device that could hang or never end) and :func:`read_text` (the same, as
  UTF-8 text), :func:`read_yaml` and
  :func:`check_yaml_keys` (duplicate keys refused, merge keys ``<<:`` accepted),
  :func:`load_checkpoint` (the safe unpickler), and :func:`import_class` (a class
  named in a file only from an allow-list).
* Writing outputs: :func:`check_outputs` (the rules every command's outputs follow) and
  :func:`atomic_outputs` (all of a command's files replaced together or none).

The output rules every command follows are stated once, in :mod:`.outputs`.

Not part of the paper: these keep long runs from losing work and keep every
command's failures to one line (see :mod:`reaf_lightning.errors`).
"""

from .config import (
    CONFIG_MAX_BYTES,
    SEED_RANGE,
    check_seed,
    check_yaml_keys,
    install_strict_yaml,
    read_yaml,
)
from .inputs import file_kind, import_class, load_checkpoint, read_bounded, read_text, shown
from .outputs import atomic_outputs, check_outputs, check_stem, ensure_writable

__all__ = [
    "CONFIG_MAX_BYTES",
    "SEED_RANGE",
    "atomic_outputs",
    "check_outputs",
    "check_seed",
    "check_stem",
    "check_yaml_keys",
    "ensure_writable",
    "file_kind",
    "import_class",
    "install_strict_yaml",
    "load_checkpoint",
    "read_bounded",
    "read_text",
    "read_yaml",
    "shown",
]
