"""EmbeddedServer: an in-process Sheepdog-compatible server (handler + TCP loop).

``EmbeddedServer`` wires a Handler (over a data directory) to a SheepServer
listening on one or more ports (0 = pick a free one) and serves in background
threads; ``addresses``/``gateways`` give the real ports after ``start()``.
``format=True`` formats a new data directory the way ``dog cluster format -c N``
would (MAKE_FS through the handler).  Re-exported by sheepdog_backend.testing.fixtures.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from types import TracebackType

from sheepdog_backend.protocol.constants import ClusterFlag, Opcode
from sheepdog_backend.protocol.header import ClusterRequest, Request
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
                 sync: bool = False) -> None:
        if not 1 <= copies <= 31:
            raise ValueError(f"copies must be 1..31, got {copies}")
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
        state = ServerState(self.data_dir, sync=self.sync)
        self.handler = Handler(state)
        if self.format and not state.config.formatted:
            response = self.handler.handle(format_request(self.copies, state.now()))
            if not response.ok:
                raise RuntimeError(f"formatting {self.data_dir} failed: {response.result:#x}")
        server = SheepServer(self.handler, host=self.host, ports=self.ports)
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def stop_listener(self, index: int) -> None:
        if self._server is None:
            raise RuntimeError("the embedded server is not running")
        self._server.stop_listener(index)

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
