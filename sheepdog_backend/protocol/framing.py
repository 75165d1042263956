"""Incremental framing: feed bytes in any chunking, get whole messages out.

How it works: the reader keeps a list of received chunks.  It first waits for
48 header bytes, decodes the header, then waits for the payload length the
header announces (requests: ``data_length`` only with Flag.WRITE; responses:
always ``data_length``).  A length above ``max_payload`` raises
``MessageTooLarge`` before any of it is buffered, so a hostile peer cannot make
us allocate 4 GiB.  After an error the reader is poisoned: the stream can no
longer be trusted, and the owner must drop the connection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from sheepdog_backend.exception import MessageTooLarge, ProtocolError
from sheepdog_backend.protocol.constants import HEADER_SIZE, SD_INODE_SIZE
from sheepdog_backend.protocol.header import (
    Request,
    RequestHeader,
    Response,
    ResponseHeader,
    decode_request_header,
    decode_response_header,
)

# The largest legitimate message with default objects is a whole inode read
# (12,587,576 B).  Larger objects (block_size_shift > 23) need a larger cap.
DEFAULT_MAX_PAYLOAD = 32 * 1024 * 1024

H = TypeVar("H", RequestHeader, ResponseHeader)
M = TypeVar("M", Request, Response)


class _Reader(Generic[H, M]):
    def __init__(self, decode: Callable[[bytes], H], max_payload: int) -> None:
        if max_payload < SD_INODE_SIZE:
            raise ValueError(f"max_payload must be at least {SD_INODE_SIZE} (one inode)")
        self._decode: Callable[[bytes], H] = decode
        self.max_payload = max_payload
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._header: H | None = None
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as part of a message."""
        return self._buffered

    @property
    def pending_header(self) -> H | None:
        """The header of the message being received, once it is complete."""
        return self._header

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._error is not None:
            raise self._error
        if data:
            self._chunks.append(bytes(data))
            self._buffered += len(data)

    def _take(self, n: int) -> bytes:
        joined = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
        out, rest = joined[:n], joined[n:]
        self._chunks = [rest] if rest else []
        self._buffered = len(rest)
        return out

    def next_message(self) -> M | None:
        """Return the next complete message, or None if more bytes are needed."""
        if self._error is not None:
            raise self._error
        try:
            if self._header is None:
                if self._buffered < HEADER_SIZE:
                    return None
                header = self._decode(self._take(HEADER_SIZE))
                if header.payload_length > self.max_payload:
                    raise MessageTooLarge(
                        f"opcode {header.opcode:#x} announces {header.payload_length} "
                        f"payload bytes; the limit is {self.max_payload}")
                self._header = header
            need = self._header.payload_length
            if self._buffered < need:
                return None
            payload = self._take(need) if need else b""
            header, self._header = self._header, None
            return header.with_payload(payload)  # type: ignore[return-value]
        except ProtocolError as exc:
            self._error = exc
            raise

    def __iter__(self) -> Iterator[M]:
        while True:
            message = self.next_message()
            if message is None:
                return
            yield message

    def at_boundary(self) -> bool:
        """True when no partial message is buffered (a clean place for EOF)."""
        return self._header is None and self._buffered == 0


class RequestReader(_Reader[RequestHeader, Request]):
    """Server side: turns a byte stream into ``Request`` objects."""

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        super().__init__(decode_request_header, max_payload)


class ResponseReader(_Reader[ResponseHeader, Response]):
    """Client side: turns a byte stream into ``Response`` objects."""

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        super().__init__(decode_response_header, max_payload)
