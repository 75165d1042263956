"""A minimal blocking raw-protocol connection (tests, benchmarks, smoke checks).

Sends codec-built Requests and reads Responses with the codec's framing; it
does no retries and no pooling (the real client lives in ``client/``).
"""

from __future__ import annotations

import socket
from types import TracebackType

from sheepdog_backend.exception import ConnectionClosed
from sheepdog_backend.protocol.framing import ResponseReader
from sheepdog_backend.protocol.header import Request, Response


class RawConnection:
    def __init__(self, host: str, port: int, *, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader = ResponseReader()

    def send(self, request: Request) -> None:
        self.sock.sendall(request.encode())

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> Response:
        while True:
            message = self._reader.next_message()
            if message is not None:
                return message
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionClosed("the server closed the connection")
            self._reader.feed(data)

    def call(self, request: Request) -> Response:
        self.send(request)
        return self.recv()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
