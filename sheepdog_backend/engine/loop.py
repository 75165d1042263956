"""One event loop thread over many sockets (epoll), with calls from other threads.

How it works: ``run`` (the engine's loop thread) waits in ``epoll.poll`` and
calls ``on_event(mask)`` of the handler registered for each ready file
descriptor, level-triggered: a handler that leaves bytes unread is called
again on the next turn.  Other threads hand work to the loop with
``call_soon``: the call joins a deque and, when the loop may be asleep, one
eventfd write wakes it.  ``every(seconds, fn)`` runs periodic sweeps (timeouts
are checked there, not with a timer per connection).  ``scratch`` is the
loop's receive buffer: handlers ``recv_into`` it and parse in place, and
whatever must outlive the handler's turn is copied out of it; ``buffers``
lends reusable buffers for payloads larger than one receive (buffers.py).

Shared: the ``_calls`` deque (appended by any thread, drained by the loop;
deque operations are atomic) and the ``_woken`` flag.  Everything else
belongs to the loop thread, and handlers run there one at a time, so they
need no locks among themselves.  A handler that raises is logged and told
``on_error``; the loop goes on.
"""

from __future__ import annotations

import heapq
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from sheepdog_backend.engine.buffers import BufferPool

LOG = logging.getLogger(__name__)
SCRATCH = 256 << 10  # bytes one recv may bring into the loop's buffer

IN = select.EPOLLIN
OUT = select.EPOLLOUT
ERR = select.EPOLLERR | select.EPOLLHUP


class Handler(Protocol):
    def on_event(self, mask: int) -> None: ...

    def on_error(self, exc: BaseException) -> None: ...


class EventLoop:
    def __init__(self, name: str = "sheep-loop") -> None:
        self.name = name
        self._epoll = select.epoll()
        self._handlers: dict[int, Handler] = {}
        self._calls: deque[Callable[[], object]] = deque()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake_fd, IN)
        self._woken = False
        self._timers: list[tuple[float, int, Callable[[], object]]] = []
        self._seq = 0
        self._stopping = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self.now = time.monotonic()  # when the loop last woke (a coarse clock for handlers)
        self.scratch = bytearray(SCRATCH)
        self.scratch_view = memoryview(self.scratch)
        self.buffers = BufferPool()  # payloads larger than one receive

    # -- registration (loop thread, or before the loop runs) -------------------

    def add(self, fd: int, mask: int, handler: Handler) -> None:
        self._epoll.register(fd, mask)
        self._handlers[fd] = handler

    def modify(self, fd: int, mask: int) -> None:
        self._epoll.modify(fd, mask)

    def remove(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass

    @property
    def handlers(self) -> int:
        return len(self._handlers)

    # -- calls and timers --------------------------------------------------------

    def call_soon(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the loop thread soon (any thread may call this)."""
        self._calls.append(fn)
        if not self._woken and not self._closed:
            self._woken = True
            try:
                os.eventfd_write(self._wake_fd, 1)
            except OSError:  # closed: the loop has stopped
                pass

    def call_later(self, delay: float, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the loop thread after ``delay`` seconds (loop thread only)."""
        self._seq += 1
        heapq.heappush(self._timers, (time.monotonic() + delay, self._seq, fn))

    def every(self, interval: float, fn: Callable[[], object]) -> None:
        """Run ``fn`` every ``interval`` seconds while the loop runs."""
        def tick() -> None:
            try:
                fn()
            finally:
                self.call_later(interval, tick)
        self.call_later(interval, tick)

    def in_loop(self) -> bool:
        return threading.current_thread() is self._thread

    def run_in_loop(self, fn: Callable[[], object], timeout: float = 10.0) -> None:
        """Run ``fn`` on the loop thread and wait until it ran (any other thread)."""
        if self._thread is None or self.in_loop():
            fn()
            return
        done = threading.Event()
        failure: list[BaseException] = []

        def call() -> None:
            try:
                fn()
            except BaseException as exc:  # handed to the caller
                failure.append(exc)
            finally:
                done.set()
        self.call_soon(call)
        if not done.wait(timeout):
            raise TimeoutError(f"the event loop did not run a call within {timeout} s")
        if failure:
            raise failure[0]

    # -- running -------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the event loop is already running")
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """End ``run`` and wait for the loop thread; handlers stay registered."""
        thread = self._thread
        if thread is None:
            return

        def halt() -> None:
            self._stopping = True
        self.call_soon(halt)
        if thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None

    def close(self) -> None:
        self._closed = True
        self._epoll.close()
        os.close(self._wake_fd)

    def _run_calls(self) -> None:
        calls = self._calls
        for _ in range(len(calls)):
            fn = calls.popleft()
            try:
                fn()
            except Exception:
                LOG.exception("%s: a call failed", self.name)

    def _run_timers(self, now: float) -> None:
        """Run the timers due at ``now``."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, fn = heapq.heappop(timers)
            try:
                fn()
            except Exception:
                LOG.exception("%s: a timer failed", self.name)

    def run(self) -> None:
        poll = self._epoll.poll
        handlers = self._handlers
        wake_fd = self._wake_fd
        timers = self._timers
        monotonic = time.monotonic
        while not self._stopping:
            self.now = now = monotonic()
            if timers and timers[0][0] <= now:
                self._run_timers(now)
            if self._calls:
                timeout = 0.0
            else:
                timeout = max(0.0, timers[0][0] - now) if timers else -1.0
            try:
                events = poll(timeout)
            except InterruptedError:
                continue
            for fd, mask in events:
                if fd == wake_fd:
                    try:
                        os.eventfd_read(wake_fd)
                    except BlockingIOError:
                        pass
                    self._woken = False
                    continue
                handler = handlers.get(fd)
                if handler is None:
                    continue
                try:
                    handler.on_event(mask)
                except Exception as exc:
                    LOG.exception("%s: a handler failed", self.name)
                    try:
                        handler.on_error(exc)
                    except Exception:
                        LOG.exception("%s: closing a failed handler failed", self.name)
            if self._calls:
                self._woken = False
                self._run_calls()
