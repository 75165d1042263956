"""Blocking request handlers behind the event loop: a pool and a serial worker.

How it works: work that may block (the embedded store's file I/O and fsync,
the gateway's failover and snapshot waits) must stay off the loop.
``Workers.submit(conn, frame, handle, serial)`` runs ``handle(request)`` on a
thread, the way sheep hands requests to its worker pools
(sheepdog-protocol.md §2.4): object I/O on a pool shared by every connection
(concurrent, also for requests pipelined on one connection), every other op
(VDI and cluster ops) on one serial worker, one at a time in arrival order.
The answer goes back to the loop (``Engine.reply``), which sends it.  A
handler that raises is a bug: the client gets SYSTEM_ERROR rather than
silence.  ``WorkerService`` is the embedded server's whole service: every
request to the workers.

Shared: the two executors (thread-safe); ``submit`` runs on the loop thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from sheepdog_backend.engine.conn import Downstream, Frame
from sheepdog_backend.exception import SystemError_
from sheepdog_backend.protocol.constants import Opcode
from sheepdog_backend.protocol.header import Request, Response
from sheepdog_backend.protocol.peek import result_header

LOG = logging.getLogger(__name__)
DEFAULT_WORKERS = 8
IO_OPS = frozenset(int(op) for op in (
    Opcode.CREATE_AND_WRITE_OBJ, Opcode.READ_OBJ, Opcode.WRITE_OBJ, Opcode.REMOVE_OBJ,
    Opcode.DISCARD_OBJ, Opcode.EXIST,
))


class Replier(Protocol):
    def reply(self, conn: Downstream, header: bytes, payload: bytes | bytearray | memoryview,
              cost: int) -> None: ...


class Workers:
    def __init__(self, replier: Replier, workers: int = DEFAULT_WORKERS, *,
                 name: str = "sheep", epoch: Callable[[], int] = lambda: 0) -> None:
        if workers < 1:
            raise ValueError("workers must be positive")
        self.replier = replier
        self.epoch = epoch  # the node's epoch, for SYSTEM_ERROR answers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=f"{name}-io")
        self._serial = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-cluster")

    def submit(self, conn: Downstream, frame: Frame, handle: Callable[[Request], Response],
               serial: bool) -> None:
        executor = self._serial if serial else self._pool
        try:
            executor.submit(self._work, conn, frame, handle)
        except RuntimeError:  # shutting down: nobody will answer it
            conn.send(result_header(frame.opcode, frame.id, int(SystemError_.code)), b"",
                      frame.cost)

    def run(self, job: Callable[[], object]) -> None:
        """Run a background job on the pool (its own errors are logged)."""
        def guarded() -> None:
            try:
                job()
            except Exception:
                LOG.exception("a background job failed")
        try:
            self._pool.submit(guarded)
        except RuntimeError:  # shutting down
            pass

    def _work(self, conn: Downstream, frame: Frame,
              handle: Callable[[Request], Response]) -> None:
        try:
            response = handle(frame.request())
            header, payload = response.encode_header(), response.payload
        except Exception:  # a bug: answer it rather than leave the client waiting
            LOG.exception("opcode %#x failed unexpectedly", frame.opcode)
            header, payload = result_header(frame.opcode, frame.id, int(SystemError_.code),
                                            self.epoch()), b""
        self.replier.reply(conn, header, payload, frame.cost)

    def shutdown(self) -> None:
        """Wait for the requests running and queued (their answers go to the loop)."""
        for executor in (self._pool, self._serial):
            executor.shutdown(wait=True)


class BlockingHandler(Protocol):
    def handle(self, request: Request) -> Response: ...


class WorkerService:
    """Every request to the workers (the embedded server); ``workers`` is set
    once the engine that answers for them exists."""

    def __init__(self, handler: BlockingHandler) -> None:
        self.handler = handler
        self.workers: Workers | None = None

    def on_request(self, conn: Downstream, frame: Frame) -> None:
        assert self.workers is not None, "the service has no workers yet"
        self.workers.submit(conn, frame, self.handler.handle, frame.opcode not in IO_OPS)

    def on_close(self, conn: Downstream) -> None:
        pass
