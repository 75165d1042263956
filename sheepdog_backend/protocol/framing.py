"""Incremental framing: feed bytes in any chunking, get whole messages out.

How it works: the reader keeps a queue of received chunks (and an offset into
the first one, so consuming part of a chunk copies nothing).  It first waits
for 48 header bytes, decodes the header, then waits for the payload length the
header announces (requests: ``data_length`` only with Flag.WRITE; responses:
always ``data_length``).  A length above ``max_payload`` raises
``MessageTooLarge`` before any of it is buffered, so a hostile peer cannot make
us allocate 4 GiB.  A payload is cut out of the queued chunks with one copy
(none when one chunk is exactly the payload).

Receiving in place: once ``next_message()`` has decoded a header and returned
None, the owner may call ``payload_buffer()`` to get a writable view of the
payload bytes still missing, fill a prefix of it (``socket.recv_into``) and
``commit(n)``; bytes already queued are moved into the buffer first, and a
later ``feed()`` writes into it too.  The buffer is the reader's own
``bytearray`` (the message's payload becomes ``bytes`` of it) or a ``target``
the owner supplies, exactly the payload's size: then the bytes stay there and
the message carries ``payload=b""`` with the header's ``data_length``.

After an error the reader is poisoned: the stream can no longer be trusted,
and the owner must drop the connection.
"""

from __future__ import annotations

from collections import deque
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
Buffer = bytes | bytearray | memoryview


def _byte_view(data: Buffer) -> memoryview:
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


class _Reader(Generic[H, M]):
    def __init__(self, decode: Callable[[bytes], H], max_payload: int) -> None:
        if max_payload < SD_INODE_SIZE:
            raise ValueError(f"max_payload must be at least {SD_INODE_SIZE} (one inode)")
        self._decode: Callable[[bytes], H] = decode
        self.max_payload = max_payload
        self._chunks: deque[bytes] = deque()
        self._offset = 0  # bytes of _chunks[0] already consumed
        self._queued = 0  # bytes in _chunks after _offset
        self._header: H | None = None
        self._target: memoryview | None = None  # in-place payload buffer, if any
        self._given: bytearray | memoryview | None = None  # the owner's target
        self._filled = 0  # bytes of _target received
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as part of a message."""
        return self._queued + self._filled

    @property
    def pending_header(self) -> H | None:
        """The header of the message being received, once it is complete."""
        return self._header

    @property
    def payload_missing(self) -> int:
        """Payload bytes of the pending message not received yet (0 without a
        pending header)."""
        if self._header is None:
            return 0
        return max(0, self._header.payload_length - self._queued - self._filled)

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def feed(self, data: Buffer) -> None:
        self._check()
        if not data:
            return
        if self._target is not None:
            view = _byte_view(data)
            n = min(len(view), len(self._target) - self._filled)
            self._target[self._filled:self._filled + n] = view[:n]
            self._filled += n
            if n == len(view):
                return
            data = view[n:]
        chunk = bytes(data)
        self._chunks.append(chunk)
        self._queued += len(chunk)

    def payload_buffer(self, target: bytearray | memoryview | None = None) -> memoryview:
        """A writable view of the missing payload bytes of the pending message.

        Call after ``next_message()`` returned None with a pending header.
        ``target`` (writable, exactly the payload's length) receives the
        payload in place; without one the reader allocates its own.  Fill a
        prefix of the returned view, then ``commit()`` how much was written.
        """
        self._check()
        header = self._header
        if header is None or not self.payload_missing:
            raise ValueError("no payload is pending: call next_message() first")
        if self._target is not None:
            if target is not None and target is not self._given:
                raise ValueError("a different payload buffer is already in use")
            return self._target[self._filled:]
        need = header.payload_length
        if target is None:
            buf = memoryview(bytearray(need))
        else:
            buf = _byte_view(target)
            if buf.readonly or len(buf) != need:
                raise ValueError(f"the payload buffer must be writable and {need} bytes, "
                                 f"got {len(buf)}{' read-only' if buf.readonly else ''}")
        queued = self._queued
        if queued:  # fewer than ``need`` (else the message would be complete)
            pos = 0
            first = True
            for chunk in self._chunks:
                part = memoryview(chunk)[self._offset:] if first else chunk
                first = False
                buf[pos:pos + len(part)] = part
                pos += len(part)
            self._chunks.clear()
            self._offset = self._queued = 0
        self._target, self._given, self._filled = buf, target, queued
        return buf[queued:]

    def commit(self, n: int) -> None:
        """Record that ``n`` bytes were written at the start of the view
        ``payload_buffer()`` returned."""
        self._check()
        if self._target is None:
            raise ValueError("no payload buffer is in use")
        if not 0 <= n <= len(self._target) - self._filled:
            raise ValueError(f"commit of {n} bytes; {len(self._target) - self._filled} "
                             "are missing")
        self._filled += n

    def _take(self, n: int) -> bytes:
        """Remove and return the next ``n`` queued bytes (n <= queued)."""
        chunks = self._chunks
        first, off = chunks[0], self._offset
        self._queued -= n
        if len(first) - off >= n:
            if off == 0 and len(first) == n:
                chunks.popleft()
                return first
            out = first[off:off + n]
            if off + n == len(first):
                chunks.popleft()
                self._offset = 0
            else:
                self._offset = off + n
            return out
        parts: list[bytes | memoryview] = [memoryview(first)[off:]]
        chunks.popleft()
        self._offset = 0
        need = n - (len(first) - off)
        while need:
            chunk = chunks[0]
            if len(chunk) <= need:
                parts.append(chunks.popleft())
                need -= len(chunk)
            else:
                parts.append(memoryview(chunk)[:need])
                self._offset = need
                need = 0
        return b"".join(parts)

    def next_message(self) -> M | None:
        """Return the next complete message, or None if more bytes are needed."""
        self._check()
        try:
            if self._header is None:
                if self._queued < HEADER_SIZE:
                    return None
                header = self._decode(self._take(HEADER_SIZE))
                if header.payload_length > self.max_payload:
                    raise MessageTooLarge(
                        f"opcode {header.opcode:#x} announces {header.payload_length} "
                        f"payload bytes; the limit is {self.max_payload}")
                self._header = header
            need = self._header.payload_length
            target = self._target
            if target is not None:
                if self._filled < need:
                    return None
                payload = b"" if self._given is not None else bytes(target)
                self._target, self._given, self._filled = None, None, 0
            elif self._queued < need:
                return None
            else:
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
        return self._header is None and self._queued == 0


class RequestReader(_Reader[RequestHeader, Request]):
    """Server side: turns a byte stream into ``Request`` objects."""

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        super().__init__(decode_request_header, max_payload)


class ResponseReader(_Reader[ResponseHeader, Response]):
    """Client side: turns a byte stream into ``Response`` objects."""

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        super().__init__(decode_response_header, max_payload)
