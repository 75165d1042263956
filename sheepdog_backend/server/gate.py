"""A shared/exclusive gate between data writes and VDI state changes.

How it works: every mutation of a data object (the rename that installs a
CREATE_AND_WRITE_OBJ, the pwrite of a WRITE_OBJ) holds the gate *shared*
while it checks that its VDI is still a live working VDI and changes the
object; a snapshot (NEW_VDI freezing the working VDI) and DEL_VDI hold it
*exclusive* while they commit and refresh the registry.  So a data write
either lands entirely before the VDI was frozen or deleted (and is then part
of the snapshot, or seen and collected by the delete), or sees the new state
and is refused - it can never land in a snapshot or leave an object behind a
deleted VDI.  Shared holders run in parallel; a waiting exclusive holder
stops new shared ones (no starvation).  Shared holders must never take
``meta_lock`` (exclusive holders hold it), which keeps the two deadlock-free.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Gate:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._waiting:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                if not self._shared:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            try:
                while self._exclusive or self._shared:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()
