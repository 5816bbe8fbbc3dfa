"""One server per jobs folder: an exclusive lock on ``<jobs-dir>/server.lock``.

A second server on the same folder would overwrite the first's token, mark its running job
interrupted and train it too; the lock makes it fail at start with one line instead. The
operating system drops the lock when the process ends, however it ends (kill -9 included), so
a stale lock file never blocks a restart.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import IO

from ...errors import UserError

LOCK_FILE = "server.lock"


class JobsFolderLock:
    """Held from :meth:`acquire` until :meth:`release` or the process's end."""

    def __init__(self, jobs_dir: Path) -> None:
        self.path = jobs_dir / LOCK_FILE
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+", encoding="utf-8")
        try:
            _lock(file)
        except OSError:
            file.seek(0)
            holder = file.read().strip() or "another process"
            file.close()
            raise UserError(
                f"another server (pid {holder}) is using the jobs folder '{self.path.parent}'",
                hint="stop it first, or give this one its own --jobs-dir",
            ) from None
        file.seek(0)
        file.truncate()
        file.write(str(os.getpid()))
        file.flush()
        self._file = file

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the lock
            self._file = None


def _lock(file: IO[str]) -> None:
    """Take an exclusive, non-blocking lock on ``file`` or raise OSError."""
    if sys.platform == "win32":
        import msvcrt

        file.seek(0)
        msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)
    else:
        import fcntl

        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
