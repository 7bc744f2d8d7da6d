"""The run folder's lock: one process at a time drives a search in a run folder.

Two `easc search` processes started together on one `--out` would both pass the "is the folder empty"
check and interleave their children in one database; a `--resume` of a folder whose search still runs
would do the same. The driver therefore holds an exclusive `fcntl.flock` on `RUN/search.lock` for as long
as it has the run open. The lock belongs to the open file, so the operating system releases it when the
process dies however it dies (kill -9 included): a stale lock cannot block a resume. The holder writes its
process id into the file, so that the process turned away can name it.

Readers (`easc report`, `easc export --best`) take no lock: SQLite's WAL lets them read while the driver
writes.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

LOCK_FILE = "search.lock"


class RunLockedError(Exception):
    """The run folder is held by another process; the message names the folder and the process id.
    The CLI reports it as bad input (exit 2), like a StoreError."""


def _holder_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""


def _locked_message(run_dir: Path, pid: str) -> str:
    who = f"process {pid}" if pid else "another process"
    return (f"{run_dir}: the run folder is in use by {who} (a search is running there); wait for it to end, "
            f"or stop it, before starting or resuming a search in this folder")


class RunLock:
    """An exclusive lock on a run folder, taken at construction; `release()` (or process exit) frees it."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        path = self.run_dir / LOCK_FILE
        # O_NOFOLLOW: a symlink planted as the lock file must not make us truncate its target.
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):
            os.close(self._fd)
            self._fd = None
            raise OSError(errno.EINVAL, "the lock file is not a regular file", str(path))
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder_pid(self._fd)
            os.close(self._fd)
            self._fd = None
            raise RunLockedError(_locked_message(self.run_dir, pid)) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            # The file stays: unlinking it would let a third process lock a new file while a second one still
            # waits on the old one.
            os.close(self._fd)
            self._fd = None


def check_unlocked(run_dir: str | Path) -> None:
    """Raise RunLockedError if a live process holds `run_dir`'s lock; creates nothing."""
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return  # no lock file (or unreadable): nobody can be holding it through this path
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunLockedError(_locked_message(Path(run_dir), _holder_pid(fd))) from None
    finally:
        os.close(fd)
