"""One writer per output folder: an exclusive OS lock held for a command's whole life.

``amc search`` (fresh or ``--resume``) and ``amc bench quality`` (fresh or ``--resume``)
hold :class:`FolderLock` on their folder. A second writer is refused at once with
``RUN is in use by process PID``, before it reads or writes anything there.

The lock is ``flock(2)`` on ``FOLDER/.amc.lock``, which holds the holder's PID. The kernel
drops a ``flock`` lock when its process ends, however it ends: a lock left by a process
killed with SIGKILL never blocks the next writer (the stale file is simply locked again).
``flock`` locks belong to an open file, so two openers in one process exclude each other
too. The file is removed again on release, while still locked; an opener that locked the
file just removed sees that the path now names another file (or none) and tries again,
so two writers can never hold two different files.
"""
from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from amc.errors import AmcError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; the folder is not locked there
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".amc.lock"
"""The lock file's name; folder checks (:func:`amc.checkpoint.fresh_dir`) ignore it."""


class FolderLock:
    """An exclusive lock on ``folder`` (which must exist); a context manager.

    Raises:
        AmcError: ``FOLDER is in use by process PID`` when another process (or another
            :class:`FolderLock` in this one) holds it.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> "FolderLock":
        if fcntl is None:
            return self
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            except OSError as e:
                raise AmcError(f"cannot lock {self.folder}: {e.strerror or e}") from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _holder(fd)
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise AmcError(f"cannot lock {self.folder}: {e.strerror or e}") from e
                who = f"process {holder}" if holder else "another process"
                raise AmcError(f"{self.folder} is in use by {who}") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # locked a file its holder removed on release: lock the new one
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError as e:
                os.close(fd)
                raise AmcError(f"cannot write {self.path}: {e.strerror or e}") from e
            self.fd = fd
            return self
        raise AmcError(f"cannot lock {self.folder}: its lock file keeps changing")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # still locked: whoever opened this file sees it gone and retries
        except OSError:
            pass
        os.close(self.fd)  # closing the last descriptor drops the lock
        self.fd = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(fd: int) -> int | None:
    """The PID the holder wrote, waiting briefly for a holder that has locked but not yet written."""
    for _ in range(20):
        try:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        except OSError:
            return None
        if text.isdigit():
            return int(text)
        time.sleep(0.01)
    return None
