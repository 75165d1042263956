"""The data directory lock: one server (or check) at a time per data directory.

How it works: ``<data_dir>/serve.lock`` is ``flock``ed exclusively (non
blocking) by EmbeddedServer while it serves and by ``check_data_dir`` while
it checks or repairs; a second taker gets ``DataDirBusy`` instead of two
processes changing one store behind each other's back.  The kernel drops the
lock when its holder dies, so a killed server never leaves it behind.  The
lock object is used by one thread; the file is never removed.
"""

from __future__ import annotations

import fcntl
import os

from sheepdog_backend.exception import DataDirBusy

LOCK_FILE = "serve.lock"


class DataDirLock:
    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.path = os.path.join(os.fspath(data_dir), LOCK_FILE)
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._fd is not None:
            raise RuntimeError("the data directory lock is already held")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirBusy(f"{os.path.dirname(self.path)} is in use by another server "
                              "or check (stop it first)") from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
