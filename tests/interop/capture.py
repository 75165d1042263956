"""A loopback recording proxy: every byte between a client (dog, QEMU) and a
server (real sheep or embedded), kept per connection and direction.

How it works: ``RecordingProxy(target)`` listens on 127.0.0.1 (a free port),
and for each accepted connection opens one to ``target`` and runs two daemon
threads that copy bytes unchanged, appending every chunk to that connection's
``Stream`` (``to_server`` / ``to_client``).  Nothing is decoded while the bytes
flow (the proxy cannot disturb the exchange); ``transcript()`` decodes the
recorded streams afterwards with the codec's own readers, so a frame the codec
cannot parse shows up as a ``DecodeFailure`` in the test, not as a hung proxy.

Shared state: the list of streams, guarded by ``_lock`` (the accept thread
appends, the test reads after ``stop()``).  Each stream's byte lists are
written by one copy thread only.  ``stop()`` closes the listener and every
socket and joins every thread; the context manager calls it.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from sheepdog_backend.exception import SheepdogError
from sheepdog_backend.protocol.framing import RequestReader, ResponseReader
from sheepdog_backend.protocol.header import Request, Response
from tests.proxybase import LoopbackProxy

MAX_PAYLOAD = 1 << 26  # sheep's own limit is far above what a test exchanges


@dataclass
class Stream:
    """One proxied connection's bytes, in order, per direction."""

    to_server: list[bytes] = field(default_factory=list)
    to_client: list[bytes] = field(default_factory=list)


@dataclass
class DecodeFailure:
    connection: int
    direction: str
    error: str


@dataclass
class Transcript:
    """Decoded frames of every connection, in order."""

    requests: list[tuple[int, Request]] = field(default_factory=list)
    responses: list[tuple[int, Response]] = field(default_factory=list)
    failures: list[DecodeFailure] = field(default_factory=list)
    raw_requests: list[bytes] = field(default_factory=list)
    raw_responses: list[bytes] = field(default_factory=list)


def _decode(index: int, direction: str, chunks: list[bytes],
            reader: RequestReader | ResponseReader,
            out: list[tuple[int, Request]] | list[tuple[int, Response]],
            raw: list[bytes], failures: list[DecodeFailure]) -> None:
    data = b"".join(chunks)
    try:
        reader.feed(data)
        offset = 0
        for message in reader:
            out.append((index, message))  # type: ignore[arg-type]
            size = 48 + len(message.payload)
            raw.append(data[offset:offset + size])
            offset += size
        if not reader.at_boundary():
            failures.append(DecodeFailure(index, direction,
                                          f"{reader.buffered} trailing bytes"))
    except SheepdogError as exc:
        failures.append(DecodeFailure(index, direction, f"{type(exc).__name__}: {exc}"))


class RecordingProxy(LoopbackProxy):
    def __init__(self, target: tuple[str, int]) -> None:
        super().__init__(target)
        self.streams: list[Stream] = []

    def relay(self, client: socket.socket, upstream: socket.socket) -> None:
        stream = Stream()
        with self._lock:
            self.streams.append(stream)
        self.spawn(self._copy, client, upstream, stream.to_server)
        self.spawn(self._copy, upstream, client, stream.to_client)

    @staticmethod
    def _copy(src: socket.socket, dst: socket.socket, record: list[bytes]) -> None:
        while True:
            try:
                data = src.recv(1 << 20)
            except OSError:
                data = b""
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            record.append(data)
            try:
                dst.sendall(data)
            except OSError:
                return

    def transcript(self) -> Transcript:
        out = Transcript()
        with self._lock:
            streams = list(self.streams)
        for index, stream in enumerate(streams):
            _decode(index, "request", stream.to_server, RequestReader(MAX_PAYLOAD),
                    out.requests, out.raw_requests, out.failures)
            _decode(index, "response", stream.to_client, ResponseReader(MAX_PAYLOAD),
                    out.responses, out.raw_responses, out.failures)
        return out
