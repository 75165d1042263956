"""Admission of requests into the embedded server: the server-wide byte
budget and one connection's in-flight accounting and outbox.

How it works: a request costs the payload it carries plus the reply payload
it may get (``header_cost``/``request_cost``).  ``ConnectionState.admit``
waits until the request fits its connection's caps (count and bytes; one
always fits) and then the server-wide ``Budget``; ``done`` gives both back
once the reply is sent or dropped.  Shared: the Budget by every connection
(its own condition guards it); a ConnectionState by its reader thread, the
workers answering its requests and its writer (``cond`` guards the
accounting, ``out_cond`` the outbox and writer flags).  Waits poll ``TICK``
so a closing connection stops waiting (``closing``).
"""

from __future__ import annotations

import socket
import threading
from collections import deque

from sheepdog_backend.protocol.constants import Flag
from sheepdog_backend.protocol.header import Request, RequestHeader, Response

TICK = 0.5  # how often blocked waits (and socket timeouts) look at their clocks


class Budget:
    """Bytes admitted and not yet answered, across all connections.

    Fairness: while a connection that holds nothing waits, connections that
    already hold some budget get no more, so a few clients pipelining large
    requests (and never reading the replies) cannot keep a newcomer out."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self.waiting = 0
        self._fresh_waiting = 0  # waiters whose connection holds nothing
        self._cond = threading.Condition()

    def acquire(self, cost: int, held: int, cancelled: threading.Event) -> bool:
        """Wait for room for ``cost`` more bytes on a connection that holds
        ``held`` (one request always fits an empty budget); False if
        ``cancelled`` is set first."""
        with self._cond:
            self.waiting += 1
            self._fresh_waiting += not held
            try:
                while not ((not self.used or self.used + cost <= self.limit)
                           and (not held or not self._fresh_waiting)):
                    if cancelled.is_set():
                        return False
                    self._cond.wait(TICK)
            finally:
                self.waiting -= 1
                self._fresh_waiting -= not held
            self.used += cost
            self.peak = max(self.peak, self.used)
            self._cond.notify_all()  # a held waiter may proceed now
            return True

    def release(self, cost: int) -> None:
        with self._cond:
            self.used -= cost
            self._cond.notify_all()


class ConnectionState:
    """One accepted socket: its outbox and its in-flight accounting."""

    def __init__(self, sock: socket.socket, budget: Budget) -> None:
        self.sock = sock
        self.budget = budget
        self.outbox: deque[tuple[Response, int]] = deque()
        self.out_cond = threading.Condition()  # guards outbox, writing, finished
        self.writing = False  # a writer thread runs for this connection
        self.finished = False  # the reader is done: a writer ends once the outbox is empty
        self.broken = False  # a send failed: later replies are dropped
        self.cond = threading.Condition()
        self.inflight = 0
        self.inflight_bytes = 0
        self.closing = threading.Event()  # stop waiting for room: the connection goes

    def admit(self, cost: int, max_count: int, max_bytes: int) -> bool:
        """Wait until the request fits this connection's limits (one always
        fits) and the server's budget, then count it; False when closing."""
        with self.cond:
            while self.inflight and (self.inflight >= max_count
                                     or self.inflight_bytes + cost > max_bytes):
                if self.closing.is_set():
                    return False
                self.cond.wait(TICK)
            held = self.inflight_bytes
            self.inflight += 1
            self.inflight_bytes += cost
        if self.budget.acquire(cost, held, self.closing):
            return True
        with self.cond:
            self.inflight -= 1
            self.inflight_bytes -= cost
            self.cond.notify_all()
        return False

    def done(self, cost: int) -> None:
        self.budget.release(cost)
        with self.cond:
            self.inflight -= 1
            self.inflight_bytes -= cost
            self.cond.notify_all()

    def drain(self) -> None:
        """Wait until every admitted request has been answered (or dropped)."""
        with self.cond:
            while self.inflight:
                self.cond.wait()


def header_cost(header: RequestHeader) -> int:
    """Bytes a request may hold while in flight: the payload it carries plus
    the reply payload it may get (none for a WRITE without PIGGYBACK, as the
    handler enforces)."""
    reply = 0 if header.flags & Flag.WRITE and not header.flags & Flag.PIGGYBACK \
        else header.data_length
    return header.payload_length + reply


def request_cost(request: Request) -> int:
    reply = 0 if request.flags & Flag.WRITE and not request.flags & Flag.PIGGYBACK \
        else request.data_length
    return len(request.payload) + reply
