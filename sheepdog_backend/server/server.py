"""The embedded server's network side: the wire engine in front of a Handler.

How it works: ``SheepServer`` runs the shared wire engine
(sheepdog_backend.engine: one event loop over every listener and connection,
requests framed in place, admission within a memory budget, idle and stall
timeouts, connections bounded by file descriptors) with a ``WorkerService``:
the store's handler blocks (file I/O, fsync), so it runs off the loop, object
I/O on a pool of ``workers`` threads shared by all connections and every
other op (VDI and cluster ops) on one serial worker in arrival order, as
sheep does.  The store is safe under this (state.py/store.py: inode changes
take ``meta_lock``, creates are temp file + rename, writes are pwrite).

The limits are the engine's (engine/engine.py says what each does):
``max_inflight`` and ``max_inflight_bytes`` per connection, ``memory_budget``
shared, ``max_connections``, ``idle_timeout``, ``send_timeout``,
``pressure_stall``.  ``stats()`` reports connections, bytes in flight and
their peak, and how many connections each limit closed.  Several listeners
share one handler, i.e. one store: a "cluster" whose gateways can be killed
one by one with ``stop_listener``; the first live TCP listener is the node
address GET_NODE_LIST reports.  ``unix_paths`` adds unix-socket listeners.
``stop`` closes every connection, waits for the workers, then ends the loop.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

from sheepdog_backend.engine import engine as wire
from sheepdog_backend.engine.engine import Engine, check_limits
from sheepdog_backend.engine.workers import DEFAULT_WORKERS, IO_OPS, Workers, WorkerService
from sheepdog_backend.protocol.structs import NodeId
from sheepdog_backend.server.handler import Handler

__all__ = [
    "DEFAULT_IDLE_TIMEOUT", "DEFAULT_MAX_CONNECTIONS", "DEFAULT_MAX_INFLIGHT",
    "DEFAULT_MAX_INFLIGHT_BYTES", "DEFAULT_MEMORY_BUDGET", "DEFAULT_PRESSURE_STALL",
    "DEFAULT_SEND_TIMEOUT", "DEFAULT_WORKERS", "IO_OPS", "SheepServer",
]

DEFAULT_MAX_INFLIGHT = wire.DEFAULT_MAX_INFLIGHT
DEFAULT_MAX_INFLIGHT_BYTES = wire.DEFAULT_MAX_INFLIGHT_BYTES
DEFAULT_MEMORY_BUDGET = wire.DEFAULT_MEMORY_BUDGET
DEFAULT_MAX_CONNECTIONS = wire.DEFAULT_MAX_CONNECTIONS
DEFAULT_IDLE_TIMEOUT = wire.DEFAULT_IDLE_TIMEOUT
DEFAULT_SEND_TIMEOUT = wire.DEFAULT_SEND_TIMEOUT
DEFAULT_PRESSURE_STALL = wire.DEFAULT_PRESSURE_STALL


class SheepServer:
    def __init__(self, handler: Handler, *, host: str = "127.0.0.1",
                 ports: Sequence[int] = (7000,), workers: int = DEFAULT_WORKERS,
                 max_inflight: int = DEFAULT_MAX_INFLIGHT,
                 max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 send_timeout: float = DEFAULT_SEND_TIMEOUT,
                 pressure_stall: float = DEFAULT_PRESSURE_STALL,
                 unix_paths: Sequence[str] = ()) -> None:
        if not ports and not unix_paths:
            raise ValueError("at least one port is needed")
        if workers < 1:
            raise ValueError("workers must be positive")
        self.handler = handler
        self.workers = workers
        self._engine: Engine | None = None
        self._workers: Workers | None = None
        limits: dict[str, Any] = {
            "max_inflight": max_inflight, "max_inflight_bytes": max_inflight_bytes,
            "memory_budget": memory_budget, "max_connections": max_connections,
            "idle_timeout": idle_timeout, "send_timeout": send_timeout,
            "pressure_stall": pressure_stall}
        check_limits(ports=ports, unix_paths=unix_paths, **limits)  # fail here, not at start
        self._engine_args: dict[str, Any] = {
            "host": host, "ports": list(ports), "unix_paths": list(unix_paths),
            "max_payload": handler.max_payload, **limits}

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return self._engine.addresses if self._engine is not None else []

    def start(self) -> None:
        if self._engine is not None:
            raise RuntimeError("the server is already running")
        service = WorkerService(self.handler)
        engine = Engine(service, **self._engine_args)
        workers = Workers(engine, self.workers, epoch=lambda: self.handler.state.epoch)
        service.workers = workers
        try:
            engine.start()
        except BaseException:
            workers.shutdown()
            raise
        self._engine, self._workers = engine, workers
        self._advertise()

    def _advertise(self) -> None:
        """Advertise the first live TCP listener as this node's address.

        dog and the client talk to the addresses GET_NODE_LIST reports (e.g.
        STAT_SHEEP per node), so a stopped listener must not stay advertised
        while another one still serves the same store."""
        assert self._engine is not None
        live = [listener for listener in self._engine.listeners
                if not listener.stopped and listener.sock.family != socket.AF_UNIX]
        if live:
            host, port = live[0].address
            self.handler.state.node_id = NodeId(host, port)

    def stats(self) -> dict[str, int]:
        """Connections served, bytes in flight now and at the peak, and how
        many connections each limit closed or refused."""
        if self._engine is None:
            raise RuntimeError("the server is not running")
        return self._engine.stats()

    def stop_listener(self, index: int) -> None:
        """Close one listening socket and every connection it accepted."""
        assert self._engine is not None, "the server is not running"
        self._engine.stop_listener(index)
        self._advertise()

    def restart_listener(self, index: int) -> None:
        """Listen again on a listener's port after ``stop_listener``."""
        assert self._engine is not None, "the server is not running"
        self._engine.restart_listener(index)
        self._advertise()

    def stop(self) -> None:
        engine, workers = self._engine, self._workers
        self._engine = self._workers = None
        if engine is None or workers is None:
            return
        engine.close_all()
        workers.shutdown()
        engine.stop()
