"""Files replaced atomically through temporary files that cannot be hijacked.

A temporary file with a fixed name (``<name>.tmp``) beside the target can be planted in
advance as a symlink to a file elsewhere, which the write would then follow and
overwrite. Here every temporary file is created by :func:`tempfile.mkstemp`: a fresh
random name, opened with ``O_CREAT | O_EXCL`` (so nothing that already exists, link or
not, is ever opened), in the target's own directory (so the final ``os.replace`` is a
rename on one file system and replaces a link at the target instead of following it).
The result gets the permissions a plain ``open``/``mkdir`` would give (``mkstemp`` and
``mkdtemp`` make private ones).

Outputs of several files (figures, the TSE export) are written all or none
(:func:`write_files_together`, :func:`files_into`): a full disk in the middle leaves nothing
of that run behind, and directories are made one level at a time (:func:`make_directories`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from dynamics.errors import PathError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Make ``path`` hold ``data``: whole or not at all, never writing through a symlink."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_copy(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Copy the file ``source`` to ``path`` (replaced atomically, as :func:`atomic_write_bytes`)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fresh_directory(beside: str | os.PathLike, prefix: str) -> Path:
    """A new empty directory with a random name in ``beside`` (``mkdir`` fails on anything existing)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=beside))
    path.chmod(0o777 & ~_umask())
    return path


def is_disk_full(exc: OSError) -> bool:
    """A full disk or an exhausted quota: the user's to fix, not a bug."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def missing_ancestors(directory: str | os.PathLike) -> list[Path]:
    """The directories on the way to ``directory`` (itself included) that do not exist yet, deepest first."""
    missing = []
    path = Path(os.path.abspath(directory))
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def make_directories(directory: str | os.PathLike) -> list[Path]:
    """``mkdir -p``, one level at a time: ``Path.mkdir(parents=True)`` and ``os.makedirs`` recurse
    once per missing level, so a path 1,200 levels deep would end in a ``RecursionError``.

    Returns the directories made, deepest first (for :func:`remove_directories`).
    """
    missing = missing_ancestors(directory)
    made = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:  # made meanwhile by someone else: theirs, not ours to remove
            if not path.is_dir():
                raise
            continue
        made.append(path)
    return made[::-1]


def remove_directories(made: list[Path]) -> None:
    """Remove the directories a run made (deepest first), each only if it is still empty."""
    for directory in made:
        try:
            directory.rmdir()
        except OSError:  # not empty (someone else uses it now) or already gone: leave it
            break


def write_files_together(files: Mapping[Path, bytes]) -> None:
    """Make every file hold its bytes, or change nothing: all or none.

    Each file is written to a fresh temporary file beside it (as :func:`atomic_write_bytes`),
    and only when every one is whole are they renamed into place. A failure while writing (a
    full disk) removes the temporary files and the directories made for them and leaves every
    existing file as it was; a full disk is one line naming the file (:class:`PathError`).
    """
    staged: list[tuple[str, Path]] = []
    made: list[Path] = []
    current: Path | None = None
    try:
        for path, data in files.items():
            current = path
            made += make_directories(path.parent)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            staged.append((tmp, path))
            os.fchmod(fd, 0o666 & ~_umask())
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException as exc:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        remove_directories(sorted(made, key=lambda p: len(p.parts), reverse=True))
        if isinstance(exc, OSError) and is_disk_full(exc):
            raise PathError(
                f"no space left on the device writing {current}; free space or choose another directory "
                "(nothing of this run was kept there)"
            ) from None
        raise


@contextlib.contextmanager
def files_into(directory: str | os.PathLike) -> Iterator[Path]:
    """A fresh staging directory inside ``directory`` whose files all land in ``directory`` at
    the end (each renamed into place), or none do.

    A failure inside the block (a full disk while the files are made) removes the staging
    directory and the directories made for it; what ``directory`` held before is untouched.
    A full disk is one line naming ``directory`` (:class:`PathError`).
    """
    directory = Path(directory)
    made = make_directories(directory)
    staging: Path | None = None
    try:
        staging = fresh_directory(directory, ".staging.")
        yield staging
        for file in sorted(staging.iterdir()):
            os.replace(file, directory / file.name)
    except BaseException as exc:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        remove_directories(made)
        if isinstance(exc, OSError) and is_disk_full(exc):
            name = exc.filename if isinstance(exc.filename, str) and exc.filename else str(directory)
            if staging is not None and name.startswith(str(staging) + os.sep):  # as it would have been called
                name = str(directory / Path(name).name)
            raise PathError(
                f"no space left on the device writing {name}; free space or choose another directory "
                "(nothing of this run was kept there)"
            ) from None
        raise
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
