"""One writer per run directory: an exclusive lock on ``RUN_DIR/run.lock``.

A run or resume takes it before it writes anything and holds it until its summary is
written. The lock is an ``flock`` on the open file (``msvcrt.locking`` on Windows), so the
operating system drops it when the process ends in any way, ``kill -9`` included: there is
never a stale lock to clear. The file stays behind and holds the last writer's pid, host
and start time, which is what a refused second writer is told.

Readers (the monitor, the history, ``export``, ``fuse``) never take the lock; ``holder``
reads the file without locking. ``flock`` is advisory and local: on a network file system
that does not pass flock through, two machines are not kept apart (one machine's
processes still are).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from engine.errors import RunDirError

LOCK_NAME = "run.lock"

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
try:  # Windows
    import msvcrt
except ImportError:
    msvcrt = None  # type: ignore[assignment]


def holder(run_dir: Path | str) -> dict[str, Any] | None:
    """What the lock file says about its last holder (pid, host, started, command); None if unreadable."""
    try:
        data = json.loads((Path(run_dir) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe_holder(info: dict[str, Any] | None) -> str:
    """``pid 123 on host box, started 2026-11-29 19:56:42`` (or that it is not recorded yet)."""
    if not info:
        return "its pid is not recorded yet"
    since = info.get("started")
    when = f", started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}" if isinstance(since, int | float) else ""
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}{when}"


class DirLock:
    """The exclusive writer's lock of one run directory. ``acquire()`` never waits."""

    def __init__(self, run_dir: Path | str, purpose: str = "run") -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.purpose = purpose
        self._fd: int | None = None
        self.note = ""  # set when this platform cannot lock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> DirLock:
        """Take the lock or raise RunDirError naming the holder's pid and host (one line)."""
        if self._fd is not None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise RunDirError(f"{self.path}: cannot create the run's lock file ({err.strerror or err})") from None
        try:
            locked = _try_lock(fd)
        except OSError as err:
            os.close(fd)
            raise RunDirError(f"{self.path}: cannot lock the run directory ({err.strerror or err})") from None
        if locked is False:
            os.close(fd)
            raise RunDirError(
                f"{self.path.parent}: another process is writing this run ({describe_holder(holder(self.path.parent))}); "
                f"wait for it to end or stop it ('rlhf-tui monitor {self.path.parent}' follows it without writing)"
            )
        if locked is None:
            self.note = f"{self.path.parent}: this platform cannot lock files; nothing stops a second process writing this run"
        self._fd = fd
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "purpose": self.purpose}
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(info) + "\n").encode())
        except OSError:
            pass  # a full disk: the lock holds all the same, only the holder's name is missing
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            pass
        finally:
            os.close(fd)  # closing drops the lock in any case

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _try_lock(fd: int) -> bool | None:
    """True: locked. False: someone else holds it. None: this platform cannot lock."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            if err.errno in (errno.ENOLCK, errno.ENOTSUP, errno.EOPNOTSUPP):
                return None  # a file system without locks
            raise
    if msvcrt is not None:  # pragma: no cover - Windows
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    return None  # pragma: no cover
