"""EmbeddedServer: an in-process Sheepdog-compatible server (handler + TCP loop).

``EmbeddedServer`` wires a Handler (over a data directory) to a SheepServer
listening on one or more ports (0 = pick a free one) and serves in background
threads; ``addresses``/``gateways`` give the real ports after ``start()``.
``format=True`` formats a new data directory the way ``dog cluster format -c N``
would (MAKE_FS through the handler).  While it runs it holds the data
directory lock (dirlock.py): a second server or a check of the same directory
gets DataDirBusy.  The keyword limits (memory budget, connection limit,
timeouts, per-connection in-flight caps) go to SheepServer (server.py).
Re-exported by sheepdog_backend.testing.fixtures.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from types import TracebackType

from sheepdog_backend.protocol.constants import ClusterFlag, Opcode
from sheepdog_backend.protocol.header import ClusterRequest, Request
from sheepdog_backend.server import server as net
from sheepdog_backend.server.dirlock import DataDirLock
from sheepdog_backend.server.handler import Handler
from sheepdog_backend.server.server import SheepServer
from sheepdog_backend.server.state import ServerState


def format_request(copies: int, ctime: int) -> Request:
    """The MAKE_FS request `dog cluster format -c copies` sends."""
    payload = b"plain\0"
    return Request(Opcode.MAKE_FS, ClusterRequest(ctime=ctime, copies=copies,
                                                  flags=ClusterFlag.AUTO_VNODES),
                   flags=1, data_length=len(payload), payload=payload)


class EmbeddedServer:
    def __init__(self, data_dir: str | os.PathLike[str], *, host: str = "127.0.0.1",
                 ports: Sequence[int] = (0,), copies: int = 1, format: bool = True,
                 sync: bool = False, memory_budget: int = net.DEFAULT_MEMORY_BUDGET,
                 max_connections: int = net.DEFAULT_MAX_CONNECTIONS,
                 idle_timeout: float = net.DEFAULT_IDLE_TIMEOUT,
                 send_timeout: float = net.DEFAULT_SEND_TIMEOUT,
                 pressure_stall: float = net.DEFAULT_PRESSURE_STALL,
                 max_inflight: int = net.DEFAULT_MAX_INFLIGHT,
                 max_inflight_bytes: int = net.DEFAULT_MAX_INFLIGHT_BYTES,
                 workers: int = net.DEFAULT_WORKERS) -> None:
        if not 1 <= copies <= 31:
            raise ValueError(f"copies must be 1..31, got {copies}")
        self.limits = {"memory_budget": memory_budget, "max_connections": max_connections,
                       "idle_timeout": idle_timeout, "send_timeout": send_timeout,
                       "pressure_stall": pressure_stall, "max_inflight": max_inflight,
                       "max_inflight_bytes": max_inflight_bytes, "workers": workers}
        self._lock: DataDirLock | None = None
        self.data_dir = os.fspath(data_dir)
        self.host = host
        self.ports = list(ports)
        self.copies = copies
        self.format = format
        self.sync = sync
        self.handler: Handler | None = None
        self._server: SheepServer | None = None

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return self._server.addresses if self._server else []

    @property
    def gateways(self) -> list[str]:
        return [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.addresses]

    def start(self) -> EmbeddedServer:
        if self._server is not None:
            raise RuntimeError("the embedded server is already running")
        os.makedirs(self.data_dir, exist_ok=True)
        lock = DataDirLock(self.data_dir)
        lock.acquire()
        try:
            state = ServerState(self.data_dir, sync=self.sync)
            self.handler = Handler(state)
            if self.format and not state.config.formatted:
                response = self.handler.handle(format_request(self.copies, state.now()))
                if not response.ok:
                    raise RuntimeError(
                        f"formatting {self.data_dir} failed: {response.result:#x}")
            server = SheepServer(self.handler, host=self.host, ports=self.ports,
                                 **self.limits)  # type: ignore[arg-type]
            server.start()
        except BaseException:
            lock.release()
            raise
        self._server = server
        self._lock = lock
        return self

    def stats(self) -> dict[str, int]:
        """The network loop's accounting (see SheepServer.stats)."""
        if self._server is None:
            raise RuntimeError("the embedded server is not running")
        return self._server.stats()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def stop_listener(self, index: int) -> None:
        if self._server is None:
            raise RuntimeError("the embedded server is not running")
        self._server.stop_listener(index)

    def restart_listener(self, index: int) -> None:
        """Serve again on the port of a listener stopped with stop_listener."""
        if self._server is None:
            raise RuntimeError("the embedded server is not running")
        self._server.restart_listener(index)

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
