"""One writer per cube: an advisory ``flock`` on a lock file beside the store.

The kernel drops the lock when its process dies (even by ``kill -9``), so a crash never
leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from dynamics.errors import CubeInputError, CubeLockedError
from store.safe_files import make_directories


class WriterLock:
    """Exclusive, non-blocking lock on ``<cube>.lock``; a second writer fails at once.

    The lock sits beside the cube's *real* directory (symlinks resolved), so two writers
    that name one cube by different paths (``f.zarr`` and a link to it) share one lock.
    """

    def __init__(self, cube_path: Path) -> None:
        self.cube = Path(cube_path)
        real = Path(os.path.realpath(cube_path))
        self.path = real.with_name(real.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            make_directories(self.path.parent)  # one level at a time: a very deep --out is no RecursionError
        except OSError as exc:
            raise CubeInputError(
                f"cannot create the directory of cube {self._name()}: {exc.strerror or exc}; choose another --out"
            ) from None
        while True:
            try:  # O_NOFOLLOW: a link planted at the lock's name must not get another file truncated
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            except OSError as exc:
                raise CubeInputError(
                    f"cannot lock cube {self._name()}: its lock file {self.path} "
                    f"{'is a symbolic link' if self.path.is_symlink() else f'cannot be opened ({exc.strerror})'}"
                    "; remove it or choose another --out"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise CubeLockedError(
                    f"cube {self._name()} is being written by another process (pid {holder}); "
                    "wait for it to finish or stop it, or choose another --out"
                ) from None
            # The previous holder may have unlinked the file between our open and flock:
            # only a lock on the file that is still at the path counts.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def _name(self) -> str:
        real = self.path.with_name(self.path.name.removesuffix(".lock"))
        typed = Path(os.path.abspath(self.cube))
        return str(self.cube) if typed == real else f"{self.cube} (that is {real})"

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
