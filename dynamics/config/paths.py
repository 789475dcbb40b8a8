"""Paths the user gives: checked up front, and OS errors on them told as one line.

Every command that writes (``scan``/``ablate --out``, ``toy --out``, ``plot --out``, ``tse
export DIR``) calls :func:`check_output_dir` before anything is computed, downloaded or
written: a path under a file, in a directory this process cannot write (read-only, ``/proc``,
``/sys``), with an over-long name or a NUL byte, too long as a whole for the files that go
inside it, or inside a cube (a zarr store: its files are the cube's) is one line naming the
path and why. A cube's ``--out`` goes through :func:`check_cube_out` (its name ends in
``.zarr``; a trailing slash is the same directory). What still goes wrong later on such a
path (a disk that fills up, a directory made read-only meanwhile) reaches the CLI as an
:class:`OSError` (or, from the writers that know the path, a :class:`PathError`), which
:func:`explain_os_error` turns into one line, naming the path, when the path is one the user
gave.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from dynamics.errors import PathError

#: Bytes kept free below the system's path limit for what is written inside an output
#: directory (a cube's ``<variable>/c/0/0/0`` chunks and temporary names, figure and TSE files).
ROOM_INSIDE = 256

#: OS errors that say something about the path or the disk, not about the program.
PATH_ERRNOS = {
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.ENAMETOOLONG,
    errno.ELOOP,
    errno.ENOTEMPTY,
    errno.EXDEV,
}


def check_output_dir(path: str | os.PathLike, option: str, may_exist: bool = True, not_a_cube: bool = False) -> Path:
    """Refuse, as one line, an output directory that cannot be created or written; creates nothing.

    Args:
        path: what the user typed.
        option: the option as the user typed it (``--out``, ``DIR``), for the message.
        may_exist: whether an existing directory is acceptable (its contents are the
            caller's business: a cube to resume, figures to replace).
        not_a_cube: refuse a directory that is itself a cube (figures, a TSE export or a toy
            suite written into a cube); a directory *inside* a cube is always refused.

    Returns:
        The path, ``~`` expanded.
    """
    text = os.fspath(path)
    if not text.strip():
        raise PathError(f"{option} is empty: give a directory path")
    if "\0" in text:
        raise PathError(f"{option} {text!r} contains a NUL character")
    target = Path(text).expanduser()
    real = Path(os.path.realpath(target))  # a link to a directory yet to be made: it is made where the link points
    for part in real.parts:
        if len(os.fsencode(part)) > 255:
            raise PathError(f"{option} {text!r}: the name {part[:40]!r}... is longer than 255 bytes")
    _check_length(real, option, text)
    _check_not_in_cube(real, option, text, not_a_cube)
    if real.exists():
        if not real.is_dir():
            raise PathError(f"{option} {text!r} exists and is a file, not a directory; choose another path")
        if not may_exist:
            raise PathError(f"{option} {text!r} already exists; choose a new path")
        _probe(real, option, text, real)
        return target
    ancestor = real.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise PathError(f"{option} {text!r}: {ancestor} is a file, not a directory; choose another path")
    _probe(ancestor, option, text, real)
    return target


def check_cube_out(path: str, option: str = "--out") -> Path:
    """A cube's output directory: a name ending in ``.zarr`` (``x.zarr/`` is the same directory), then
    :func:`check_output_dir` (an existing cube is resumed; a cube inside another is refused)."""
    if not Path(path).name.endswith(".zarr") or Path(path).name == ".zarr":
        raise PathError(f"{option} {path!r}: a cube is a directory whose name ends in .zarr, e.g. runs/p14.zarr")
    return check_output_dir(path, option)


def _check_length(real: Path, option: str, text: str) -> None:
    """A path so long (or deep) that the files inside it would pass the system's limit: one line now."""
    try:
        limit = os.pathconf("/", "PC_PATH_MAX")
    except (OSError, ValueError):
        limit = 4096
    length = len(os.fsencode(str(real)))
    if length + ROOM_INSIDE > limit:
        raise PathError(
            f"{option} {text[:60]!r}... is {length:,} bytes long ({len(real.parts) - 1:,} directories deep); "
            f"the files written inside it need it under {limit - ROOM_INSIDE:,} bytes (the system's limit is "
            f"{limit:,}): choose a shorter path"
        )


def _check_not_in_cube(real: Path, option: str, text: str, not_a_cube: bool) -> None:
    """Nothing is written inside a cube (any zarr store): its files would be taken for the cube's, or lost
    with it. The outermost store is named."""
    candidates = [real, *real.parents] if not_a_cube else list(real.parents)
    stores = [p for p in candidates if (p / "zarr.json").is_file()]
    if not stores:
        return
    outer = stores[-1]
    where = "is the cube" if outer == real else "is inside the cube"
    raise PathError(f"{option} {text!r} {where} {str(outer)!r}; choose a directory outside any cube")


def _probe(directory: Path, option: str, text: str, target: Path) -> None:
    """Create and remove an empty directory in ``directory``: the one test every file system answers truly."""
    try:
        probe = tempfile.mkdtemp(prefix=".dynamics-probe-", dir=directory)
    except OSError as exc:
        where = "in it" if directory == target else f"in {directory}"
        raise PathError(
            f"{option} {text!r}: cannot write {where} ({exc.strerror or exc}); choose a writable directory"
        ) from None
    os.rmdir(probe)


def is_under(filename: str | os.PathLike, paths: Iterable[str | os.PathLike]) -> bool:
    """Whether ``filename`` is one of ``paths``, inside one, or a directory on the way to one."""
    name = os.path.realpath(os.fspath(filename))
    for path in paths:
        given = os.path.realpath(os.path.expanduser(os.fspath(path)))
        if (
            name == given
            or name.startswith(given.rstrip(os.sep) + os.sep)
            or given.startswith(name.rstrip(os.sep) + os.sep)
        ):
            return True
    return False


def explain_os_error(exc: OSError, user_paths: Iterable[str | os.PathLike]) -> str | None:
    """One line for an OS error on a path the user gave (None: not about the user's paths)."""
    if exc.errno not in PATH_ERRNOS:
        return None
    names = [n for n in (exc.filename, exc.filename2) if n is not None]
    if not names or not any(is_under(n, user_paths) for n in names):
        return None
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left writing {names[0]}: free space or choose another path"
    return f"cannot use {names[0]}: {reason}"
