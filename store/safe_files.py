"""Files replaced atomically through temporary files that cannot be hijacked.

A temporary file with a fixed name (``<name>.tmp``) beside the target can be planted in
advance as a symlink to a file elsewhere, which the write would then follow and
overwrite. Here every temporary file is created by :func:`tempfile.mkstemp`: a fresh
random name, opened with ``O_CREAT | O_EXCL`` (so nothing that already exists, link or
not, is ever opened), in the target's own directory (so the final ``os.replace`` is a
rename on one file system and replaces a link at the target instead of following it).
The result gets the permissions a plain ``open``/``mkdir`` would give (``mkstemp`` and
``mkdtemp`` make private ones).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


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
