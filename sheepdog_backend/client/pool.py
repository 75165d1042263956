"""A pool of connections to one gateway.

How it works: ``connection()`` is a context manager that hands out an idle
connection (or opens a new one) for the exclusive use of the caller.  When the
block ends normally, or with a ``ServerError`` (the server answered, so the
stream is intact), a connection that is still usable goes back to the idle
list, up to ``max_idle`` of them.  Any other exception (transport error,
timeout, protocol error, a bug in the caller) or requests still in flight
destroy it: a connection that failed is never reused
(like pymemcache's ``get_and_release(destroy_on_fail=True)``).
Concurrent users beyond ``max_idle`` get extra connections that are closed
when released, so the pool never blocks.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sheepdog_backend.client.transport import Address, Connection
from sheepdog_backend.exception import ServerError


class ConnectionPool:
    def __init__(self, address: Address, *, connect_timeout: float = 5.0,
                 request_timeout: float = 30.0, max_idle: int = 4) -> None:
        self.address = address
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.max_idle = max(0, max_idle)
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self.opened = 0  # connections ever opened (for tests and stats)
        self.destroyed = 0

    def _get(self) -> Connection:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if conn.usable:
                    return conn
                conn.close()
        conn = Connection(self.address, connect_timeout=self.connect_timeout,
                          request_timeout=self.request_timeout)
        with self._lock:
            self.opened += 1
        return conn

    def _release(self, conn: Connection, failed: bool) -> None:
        if failed or not conn.usable:
            conn.close()
            with self._lock:
                self.destroyed += 1
            return
        with self._lock:
            if not self._closed and len(self._idle) < self.max_idle:
                self._idle.append(conn)
                return
        conn.close()

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        conn = self._get()
        failed = True
        try:
            yield conn
            failed = False
        except ServerError:
            failed = False  # the answer was read whole: the stream is fine
            raise
        finally:
            self._release(conn, failed)

    @property
    def idle(self) -> int:
        with self._lock:
            return len(self._idle)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
