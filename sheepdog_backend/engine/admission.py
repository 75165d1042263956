"""Admission of requests on the event loop: the server-wide byte budget.

How it works: a request costs the payload it carries plus the reply payload
it may get (none for a WRITE without PIGGYBACK; engine/conn.py).  A
connection asks for room as soon as a header is parsed, before its payload
is received: on its own connection (at most ``max_inflight`` requests and
about ``max_inflight_bytes``; one request always fits) and in the budget
shared by every connection (one request always fits an empty budget).  A
request that does not fit parks its connection (the connection stops
reading, so TCP pushes back on the client) in one of two queues: *fresh*
connections, which hold nothing, and connections that already hold some.
Fairness: connections that hold some may fill the budget only up to
``limit - reserve`` (a quarter is kept for connections that hold nothing),
and while a fresh connection waits they get no more, so clients pipelining
large requests and never reading their replies cannot keep a newcomer, or a
client that reads its replies, waiting.  Every ``release`` lets the parked
connections try again, fresh ones first, each in the order it parked.

Runs on the loop thread only: no locks.  ``used``, ``peak`` and ``waiting``
are read by ``stats()`` from other threads (plain ints).
"""

from __future__ import annotations

from collections import deque
from typing import Protocol


class Parked(Protocol):
    """A connection waiting for room (engine.conn.Downstream)."""

    inflight_bytes: int
    parked: bool
    want: int  # the cost of the request it waits to admit

    def retry_admission(self) -> None:
        """Admit the waiting request (it fits now) and go on reading."""
        ...


class Budget:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the memory budget must be positive")
        self.limit = limit
        self.reserve = limit // 4  # kept for connections that hold nothing
        self.used = 0
        self.peak = 0
        self._fresh: deque[Parked] = deque()
        self._held: deque[Parked] = deque()
        self._waking = False

    @property
    def waiting(self) -> int:
        return len(self._fresh) + len(self._held)

    def fits(self, cost: int, held: int) -> bool:
        if not self.used:
            return True  # one request always fits an empty budget
        if held:
            return not self._fresh and self.used + cost <= self.limit - self.reserve
        return self.used + cost <= self.limit

    def take(self, cost: int) -> None:
        self.used += cost
        if self.used > self.peak:
            self.peak = self.used

    def park(self, conn: Parked) -> None:
        if conn.parked:
            return
        conn.parked = True
        (self._held if conn.inflight_bytes else self._fresh).append(conn)

    def unpark(self, conn: Parked) -> None:
        """Forget a parked connection (it is closing)."""
        if not conn.parked:
            return
        conn.parked = False
        for queue in (self._fresh, self._held):
            try:
                queue.remove(conn)
            except ValueError:
                continue
        self.release(0)

    def release(self, cost: int) -> None:
        self.used -= cost
        if self._waking or not (self._fresh or self._held):
            return
        self._waking = True  # a retried connection may release again: no recursion
        held = self._held
        try:
            for queue in (self._fresh, held):
                while queue:
                    conn = queue[0]
                    if not self.fits(conn.want, conn.inflight_bytes if queue is held else 0):
                        return  # the head waits for more room; nobody overtakes it
                    queue.popleft()
                    conn.parked = False
                    conn.retry_admission()  # may park again, at the back
        finally:
            self._waking = False
