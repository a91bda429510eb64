"""What a run owns: the files it wrote, listed in its record, and the one way they are deleted.

Not part of the paper. A run directory holds the user's own files too, a
checkpoint directory may be shared or sit behind a link on scratch space, so the
run's files are never guessed from names or patterns. Every writer of a run lists
a path in the run record's ``files`` *before* writing it (:func:`claim`), so a file
is listed even when its writer is killed half-way; a clean-up deletes nothing else
(:func:`remove_owned`):

* only listed entries, and only inside the run directory or the command's
  checkpoint directory. These two may themselves be links (checkpoints on
  scratch): entries are listed where they really are, and the two folders are
  taken where they really are; below them no link is followed, and a listed
  entry that has become a link is refused: the run never writes links;
* all or none: each entry is first renamed into a hidden folder beside it
  (``.reaf-removing-<pid>``, the same directory, so the same file system); if one
  rename fails, the done ones are renamed back and the run is as it was; only
  then are those folders deleted. The record itself goes last.

:func:`foreign_outputs` names what is in the way of a command: files with the
layout's names (and checkpoints in its checkpoint directory) that the record does
not list, which the command would write over or mix with.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path

from reaf_lightning.errors import ConfigError, OutputError
from reaf_lightning.io import file_kind, shown
from reaf_lightning.runs.layout import RunDir
from reaf_lightning.runs.record import RecordError, RunRecord, read_record, write_record

__all__ = ["claim", "entry_of", "foreign_outputs", "remove_owned", "unclaim"]

_TRASH = ".reaf-removing-"


def _real(path: str | os.PathLike[str]) -> str:
    """``path`` with the links of its folders resolved, not a link in its last part."""
    absolute = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(absolute)), os.path.basename(absolute))


def _inside(root: str, path: str) -> bool:
    return path != root and os.path.commonpath([root, path]) == root


def entry_of(run_dir: str | os.PathLike[str], path: str | os.PathLike[str]) -> str:
    """How the record lists ``path``: where it really is (its folders' links resolved, so
    that every name of one file gives one entry), relative to the run directory when
    inside it (a moved run keeps its list), else absolute."""
    root, real = os.path.realpath(run_dir), _real(path)
    if _inside(root, real):
        return Path(os.path.relpath(real, root)).as_posix()
    return Path(real).as_posix()


def _update(run_dir: str | os.PathLike[str], add: list[str], drop: list[str]) -> None:
    path = RunDir(Path(run_dir)).metrics
    try:
        record = read_record(path) if os.path.lexists(path) else RunRecord()
    except RecordError:
        return  # not this package's record: nothing can be listed, so nothing is ever deleted
    files = [f for f in record.files if f not in drop]
    files += [entry for entry in dict.fromkeys(add) if entry not in files]
    if files != record.files:
        write_record(path, record.model_copy(update={"files": files}))


def claim(run_dir: str | os.PathLike[str], paths: Iterable[str | os.PathLike[str]]) -> None:
    """List ``paths`` in the run record of ``run_dir`` before they are written.

    Creates the record (``finished: false``, nothing else) when the run has none yet.
    Only the one process holding the run's lock (global rank 0) calls it. A
    ``metrics.json`` that is not a record of this package (refused by every command
    before it writes) is left alone.
    """
    _update(run_dir, [entry_of(run_dir, p) for p in paths], [])


def unclaim(run_dir: str | os.PathLike[str], paths: Iterable[str | os.PathLike[str]]) -> None:
    """Take ``paths``, which the run itself deleted (an older best checkpoint), off its list."""
    _update(run_dir, [], [entry_of(run_dir, p) for p in paths])


def foreign_outputs(run: RunDir, record: RunRecord | None, stage: str) -> list[Path]:
    """The files a ``stage`` would write over or mix with that the run did not write.

    The layout's outputs of the stage (:meth:`RunDir.outputs`) and, for ``fit``, every
    checkpoint in the checkpoint directory, where they exist and ``record`` (the run
    directory's record, ``None`` without one) does not list them.
    """
    listed = set(record.files) if record is not None else set()
    present = [p for p in run.outputs(stage) if os.path.lexists(p)]
    if stage == "fit":
        present += run.checkpoints()
    return [p for p in present if entry_of(run.path, p) not in listed]


# -- removing what the run wrote: all or none, never through a link -------------------------
def _locate(run: RunDir, entry: str) -> tuple[Path, list[str]]:
    """(root, parts below it) of a listed entry, or a refusal naming it. The roots are the
    run directory and the command's checkpoint directory where they really are."""
    absolute = os.path.join(os.path.realpath(run.path), entry)  # an absolute entry stays
    roots = {os.path.realpath(run.checkpoint_dir), os.path.realpath(run.path)}
    for root in sorted(roots, key=len, reverse=True):  # the most specific first
        if _inside(root, absolute):
            return Path(root), list(Path(os.path.relpath(absolute, root)).parts)
    raise ConfigError(
        f"--overwrite_run: {shown(entry)}, listed in {run.metrics}, is neither in the run "
        f"directory {run.path} nor in this command's checkpoint directory {run.checkpoint_dir}; "
        "nothing was deleted: give the --checkpoint.dirpath the run was trained with, or train "
        "into another --trainer.default_root_dir"
    )


def _through_link(path: Path) -> ConfigError:
    try:
        target = f" (to {shown(os.readlink(path))})"
    except OSError:
        target = ""
    return ConfigError(
        f"--overwrite_run: {path} is a symbolic link{target}; a run's files are deleted only "
        "inside its own folders, never through a link, and the run wrote no link: nothing "
        "was deleted; remove the link yourself or train into another --trainer.default_root_dir"
    )


def _open_parent(root: Path, parts: list[str]) -> int | None:
    """A descriptor of the folder holding ``root/parts``, reached without following a link
    below ``root``; ``None`` when a folder on the way is gone (so is the entry)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    walked = root
    for part in parts[:-1]:
        walked = walked / part
        try:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        except FileNotFoundError:
            os.close(fd)
            return None
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.ELOOP, errno.ENOTDIR):
                raise (
                    _through_link(walked)
                    if walked.is_symlink()
                    else ConfigError(
                        f"--overwrite_run: {walked} is not a folder, but the run wrote files "
                        "inside it; nothing was deleted"
                    )
                ) from None
            raise
        os.close(fd)
        fd = inner
    return fd


def remove_owned(run: RunDir, record: RunRecord) -> int:
    """Delete every file the run's record lists, then the record: all of them or none.

    Returns:
        How many files and folders were deleted (the record included).

    Raises:
        ConfigError: an entry is outside the run's folders, or reached through a link,
            or is not a file or folder (nothing deleted).
        OutputError: a rename failed (permission, read-only file system): everything is
            back in place; or the renamed files could not be deleted (they are in the
            hidden folder named).
    """
    plan = [_locate(run, entry) for entry in dict.fromkeys([*record.files, "metrics.json"])]
    folders: dict[tuple[int, int], tuple[int, str]] = {}  # parent folder -> (its fd, trash name)
    moved: list[tuple[int, str, str]] = []  # (parent fd, name, trash name)
    opened: list[int] = []

    def put_back() -> None:
        for fd, name, trash in reversed(moved):
            with contextlib.suppress(OSError):
                os.rename(f"{trash}/{name}", name, src_dir_fd=fd, dst_dir_fd=fd)
        for fd, trash in folders.values():
            with contextlib.suppress(OSError):
                os.rmdir(trash, dir_fd=fd)

    where = run.path
    try:
        try:
            for root, parts in plan:
                where = root.joinpath(*parts)
                fd = _open_parent(root, parts)
                if fd is None:
                    continue
                opened.append(fd)
                name = parts[-1]
                try:
                    info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue  # listed, already gone
                if stat.S_ISLNK(info.st_mode):
                    raise _through_link(where)
                if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
                    raise ConfigError(
                        f"--overwrite_run: {where} is {file_kind(info.st_mode)}, not a file "
                        "the run wrote; nothing was deleted"
                    )
                folder = os.fstat(fd)
                if (folder.st_dev, folder.st_ino) not in folders:
                    os.mkdir(f"{_TRASH}{os.getpid()}", 0o700, dir_fd=fd)
                    folders[(folder.st_dev, folder.st_ino)] = (fd, f"{_TRASH}{os.getpid()}")
                trash = folders[(folder.st_dev, folder.st_ino)][1]
                os.rename(name, f"{trash}/{name}", src_dir_fd=fd, dst_dir_fd=fd)
                moved.append((fd, name, trash))
        except BaseException as err:
            put_back()
            if isinstance(err, OSError):
                raise OutputError(
                    f"--overwrite_run: cannot delete {where} ({err.strerror or err}); the run "
                    f"in {run.path} is as it was, nothing was deleted"
                ) from None
            raise
        for fd, trash in folders.values():
            try:
                shutil.rmtree(trash, dir_fd=fd)
            except OSError as err:
                raise OutputError(
                    f"--overwrite_run: the run's files are gone from {run.path}, but a hidden "
                    f"folder {trash} beside them could not be deleted ({err.strerror or err}); "
                    "delete it yourself"
                ) from None
    finally:
        for fd in opened:
            os.close(fd)
    return len(moved)
