"""One connection from the gateway to a sheep node, on the gateway's event loop
(its TCP port, or its unix socket when it runs on this host: nodesock.py).

How it works: the relay lends an ``Upstream`` to one client connection at a
time (while that client has requests in flight on it), so the client's
request ids are unique on it and pass through unchanged.  ``send(pending)``
writes the request's header and payload as received, in one ``sendmsg``
(queued only if the kernel does not take it all, or while connecting: the
connect is non-blocking).  Answers are framed in the loop's scratch buffer:
the header is read in place (protocol.peek) and matched by id, and an
answer whose payload came in the same receive is handed to the relay as
views of the scratch buffer (the relay sends them on before the buffer is
reused).  A successful answer with a larger payload is, when the relay can
(``stream_begin``: a data read's answer), passed on as it arrives, each
receive sent straight to the client (``stream_more``): its last byte reaches
the client right after it reaches the gateway; otherwise the payload gets a
buffer of its own, exactly its size, lent by the loop's pool
(engine/buffers.py), that later receives fill directly.  A connection that
fails while an answer streams closes that client's connection (it has part
of a frame; tgt reconnects and reads again).
Anything wrong (the node closed, a malformed or unexpected answer, a
timeout from the relay's sweep) ends the connection with ``fail``: the relay
gets back every request still waiting.

Runs on the loop thread only: no locks.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from typing import Any, Protocol

from sheepdog_backend.client.transport import Address
from sheepdog_backend.engine.conn import Downstream, Frame
from sheepdog_backend.engine.loop import ERR, IN, OUT, EventLoop
from sheepdog_backend.engine.stream import advance, unsent
from sheepdog_backend.protocol.peek import RESPONSE_HEAD

HEADER = 48
_unpack_answer = RESPONSE_HEAD.unpack_from


class Pending:
    """A request in flight on an upstream."""

    __slots__ = ("conn", "frame", "kept", "offset", "oid", "start", "ticket")

    def __init__(self, conn: Downstream, frame: Frame, ticket: Any, kept: bool,
                 start: float, oid: int, offset: int) -> None:
        self.conn = conn
        self.frame = frame
        self.ticket = ticket  # the snapshot guard's Ticket, if it looked at the request
        self.kept = kept  # admitted by the recovery replay: settle it
        self.start = start
        self.oid = oid
        self.offset = offset


class Relaying(Protocol):
    """What an upstream needs of the relay."""

    loop: EventLoop
    max_payload: int

    def answer(self, up: Upstream, pending: Pending, header: memoryview,
               payload: memoryview, result: int, epoch: int, owned: bool) -> None: ...

    def failed(self, up: Upstream, reason: str, pendings: list[Pending], sent: bool) -> None: ...

    def stream_begin(self, up: Upstream, pending: Pending, header: memoryview,
                     chunk: memoryview, length: int, epoch: int) -> bool: ...

    def stream_more(self, up: Upstream, pending: Pending, chunk: memoryview,
                    done: bool) -> None: ...

    def stream_broken(self, pending: Pending) -> None: ...


class Upstream:
    def __init__(self, relay: Relaying, address: Address, now: float,
                 path: str | None = None) -> None:
        if path:  # the node's unix socket (nodesock.py)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        try:
            sock.connect(path or (address.host, address.port))
        except BlockingIOError:
            if path:  # a unix connect does not go on in the background
                sock.close()
                raise ConnectionRefusedError(f"{path}: the node's backlog is full") from None
        except OSError:
            sock.close()
            raise
        self.relay = relay
        self.address = address
        self.path = path
        self.sock = sock
        self.fd = sock.fileno()
        self.connected = False
        self.closed = False
        self.started = now  # when the connect began
        self.owner: Downstream | None = None
        self.waiting: dict[int, Pending] = {}
        self.out: deque[list[memoryview]] = deque()
        self.partial = b""
        # header, pending, result and epoch of an answer whose payload is arriving
        self._answer: tuple[bytes, Pending, int, int] | None = None
        self._view: memoryview | None = None
        self._filled = 0
        # An answer passed on to its client as it arrives (relay.stream_begin),
        # and how many of its bytes are still to come.
        self._streaming: Pending | None = None
        self._stream_left = 0
        self.mask = OUT
        relay.loop.add(self.fd, OUT, self)

    def oldest(self) -> float:
        """When the oldest request still waiting was received (0: none waits)."""
        return min((p.start for p in self.waiting.values()), default=0.0)

    # -- sending -------------------------------------------------------------------

    def send(self, pending: Pending) -> bool:
        """Send a request; False (nothing sent) when its id is already in flight here."""
        frame = pending.frame
        if frame.id in self.waiting:
            return False
        self.waiting[frame.id] = pending
        payload = frame.payload
        if self.out or not self.connected:
            self._queue(frame.header, payload, 0)
            return True
        try:
            n = self.sock.sendmsg((frame.header, payload)) if payload \
                else self.sock.send(frame.header)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self.fail(f"send failed: {exc}")
            return True
        if n < HEADER + len(payload):
            self._queue(frame.header, payload, n)
        return True

    def _queue(self, header: bytes, payload: bytes | memoryview, skip: int) -> None:
        self.out.append(unsent(header, payload, skip, False))  # the frame's own buffers
        self._update_mask()

    def _flush(self) -> None:
        out = self.out
        while out:
            parts = out[0]
            try:
                n = self.sock.sendmsg(parts)
            except BlockingIOError:
                return
            except OSError as exc:
                self.fail(f"send failed: {exc}")
                return
            if not advance(parts, n):
                return
            out.popleft()
        self._update_mask()

    def _update_mask(self) -> None:
        mask = IN if self.connected else 0
        if self.out or not self.connected:
            mask |= OUT
        if mask != self.mask and not self.closed:
            self.mask = mask
            self.relay.loop.modify(self.fd, mask)

    # -- events --------------------------------------------------------------------

    def on_event(self, mask: int) -> None:
        if not self.connected:
            error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error or (mask & ERR and not mask & OUT):
                self.fail(f"cannot connect: {os.strerror(error)}" if error
                          else "cannot connect")
                return
            if not mask & OUT:
                return
            self.connected = True
            self._update_mask()
        if mask & OUT:
            self._flush()
            if self.closed:
                return
        if mask & IN:
            self._read()
        elif mask & ERR:
            self.fail("the node closed the connection")

    def on_error(self, exc: BaseException) -> None:
        self.fail(f"{type(exc).__name__}: {exc}")

    def _read(self) -> None:
        view = self._view
        try:
            if view is not None:
                n = self.sock.recv_into(view[self._filled:])
            else:
                n = self.sock.recv_into(self.relay.loop.scratch_view)
        except BlockingIOError:
            return
        except OSError as exc:
            self.fail(f"receive failed: {exc}")
            return
        if not n:
            self.fail("the node closed the connection")
            return
        if view is not None:
            self._filled += n
            if self._filled == len(view):
                assert self._answer is not None
                header, pending, result, epoch = self._answer
                self._answer, self._view = None, None
                self.relay.answer(self, pending, memoryview(header), view, result, epoch, True)
            return
        data = self.relay.loop.scratch_view[:n]
        streaming = self._streaming
        if streaming is not None:  # the rest of an answer being passed on as it comes
            take = min(self._stream_left, n)
            self._stream_left -= take
            done = not self._stream_left
            if done:
                self._streaming = None
            self.relay.stream_more(self, streaming, data[:take], done)
            if self.closed or take == n:
                return
            data = data[take:]
        if self.partial:
            data = memoryview(self.partial + data)
            self.partial = b""
        self._frames(data)

    def _frames(self, data: memoryview) -> None:
        pos, end = 0, len(data)
        relay = self.relay
        while end - pos >= HEADER:
            _, opcode, _, epoch, rid, length, result = _unpack_answer(data, pos)
            pending = self.waiting.pop(rid, None)
            if pending is None:
                self.fail(f"an unexpected answer (opcode {opcode:#x}, id {rid})")
                return
            if length > relay.max_payload:
                self.waiting[rid] = pending
                self.fail(f"an answer of {length} bytes; the limit is {relay.max_payload}")
                return
            body = pos + HEADER
            if body + length <= end:
                relay.answer(self, pending, data[pos:body], data[body:body + length], result,
                             epoch, False)
                if self.closed:
                    return
                pos = body + length
                continue
            got = end - body
            if not result and relay.stream_begin(self, pending, data[pos:body], data[body:end],
                                                 length, epoch):
                self._streaming, self._stream_left = pending, length - got
                return
            buf = relay.loop.buffers.get(length)
            buf[:got] = data[body:end]
            self._answer = (bytes(data[pos:body]), pending, result, epoch)
            self._view, self._filled = buf, got
            return
        if pos < end:
            self.partial = bytes(data[pos:end])

    # -- lent to the lane (lane.py) ----------------------------------------------------

    @property
    def quiet(self) -> bool:
        """Connected, nothing waiting, queued or half-received."""
        return (self.connected and not self.closed and not self.waiting and not self.out
                and not self.partial and self._view is None and self._streaming is None)

    def lend(self) -> None:
        self.relay.loop.remove(self.fd)

    def take_back(self) -> None:
        if not self.closed:
            self.mask = IN
            self.relay.loop.add(self.fd, IN, self)

    # -- ending ----------------------------------------------------------------------

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.relay.loop.remove(self.fd)
        try:
            self.sock.close()
        except OSError:
            pass

    def fail(self, reason: str) -> None:
        """End the connection; the relay gets back what still waits."""
        if self.closed:
            return
        sent = self.connected and bool(self.waiting)
        pendings = list(self.waiting.values())
        if self._answer is not None:
            pendings.append(self._answer[1])
            self._answer, self._view = None, None
        if self._streaming is not None:  # part of it went to the client: it must go
            self.relay.stream_broken(self._streaming)
            self._streaming = None
        self.waiting.clear()
        self.out.clear()
        self.close()
        self.relay.failed(self, reason, pendings, sent)
