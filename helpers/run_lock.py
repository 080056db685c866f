"""One process at a time in a run folder: <out>/run.lock, held with flock while a process writes
the folder, naming its PID.

The kernel releases a flock when its process ends, however it ends (kill -9 included), so a lock
left by a killed run never blocks the next one: a run.lock without a live holder is taken over.
A process that ends normally removes the file.
"""

import fcntl
import os
from pathlib import Path

LOCK_NAME = "run.lock"


class FolderInUse(Exception):
    """Another live process holds the run folder; the message names it and what to do."""


class RunLock:
    """The lock of one run folder, held by this process until release()."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path, self.fd = path, fd

    @classmethod
    def take(cls, out: Path) -> "RunLock":
        """Hold `out`'s lock, or raise FolderInUse naming the process that holds it."""
        path = out / LOCK_NAME
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise FolderInUse(
                    f"{out} is in use by another run (process {holder}, {path}): wait for it to "
                    "end or stop it, or choose another --out"
                ) from None
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:  # else its holder removed the file meanwhile: lock the new one
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return cls(path, fd)

    def release(self) -> None:
        """Remove the file and let go (removed while held, so no one locks a removed file)."""
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)
            self.fd = None
