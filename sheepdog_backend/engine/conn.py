"""One client connection on the event loop: framing in place, admission, replies.

How it works: ``on_event`` receives into the loop's scratch buffer and
frames requests there: the 48-byte header is read in place (protocol.peek),
admitted (engine.admission: the request's cost against the connection's caps
and the shared budget) and copied out with its payload when the payload is
in the same receive; a larger payload gets a buffer of its own, exactly its
size, and later receives go straight into it (``recv_into``), so a payload
is copied once at most.  A complete request becomes a ``Frame`` handed to
the service (``on_request``), which answers with ``send`` on the loop
thread: header and payload go out in one ``sendmsg``; only what the kernel
does not take is queued (copied first when it lives in a buffer the caller
reuses, such as the loop's scratch) and sent when the socket is writable.
A request's cost is given back once its reply is sent or dropped.

A request that does not fit stops the connection's reading (TCP pushes back
on the client): over its own caps until one of its replies goes out, over
the budget until the budget lets it in (``retry_admission``).  At EOF, or
after a malformed frame, reading stops and the connection closes once every
request it sent was answered; a failed send closes it at once (its later
replies are dropped).  Timeouts (idle, a client that stopped reading) are the
engine's sweep, from ``idle_for`` and ``stalled_for``.

Runs on the loop thread only, like everything it touches (the budget, the
service's ``on_request``): no locks.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from sheepdog_backend.engine.admission import Budget
from sheepdog_backend.engine.loop import ERR, IN, OUT, EventLoop
from sheepdog_backend.engine.stream import Buffer, advance, unsent
from sheepdog_backend.protocol.header import Request, decode_request_header
from sheepdog_backend.protocol.peek import PIGGYBACK, REQUEST_HEAD, WRITE

LOG = logging.getLogger(__name__)
HEADER = 48
RECV = 64 << 10  # most bytes one receive brings in while no payload is pending

_unpack_head = REQUEST_HEAD.unpack_from
_now = time.monotonic


def request_cost(flags: int, length: int) -> tuple[int, int]:
    """(payload bytes, cost) of a request: what it may hold is its payload,
    plus its reply's unless it is a plain write."""
    plen = length if flags & WRITE else 0
    return plen, plen if plen and not (flags & PIGGYBACK) else plen + length


class Frame:
    """A complete request as received: its header bytes and payload."""

    __slots__ = ("cost", "data_length", "flags", "header", "id", "opcode", "payload")

    def __init__(self, header: bytes, opcode: int, flags: int, rid: int, data_length: int,
                 cost: int) -> None:
        self.header = header
        self.opcode = opcode
        self.flags = flags
        self.id = rid
        self.data_length = data_length
        # bytes, or a view lent by the loop's BufferPool (a payload larger
        # than one receive): whoever is done with it may give it back
        self.payload: bytes | memoryview = b""
        self.cost = cost

    def request(self) -> Request:
        """The typed request (header decoded, payload as bytes)."""
        payload = self.payload if isinstance(self.payload, bytes) else bytes(self.payload)
        return decode_request_header(self.header).with_payload(payload)

    def give_back(self, loop: EventLoop) -> None:
        """Return a lent payload buffer to the loop's pool (loop thread; the
        payload must not be used any more)."""
        payload = self.payload
        if isinstance(payload, memoryview):
            self.payload = b""
            loop.buffers.put(payload)


class Host(Protocol):
    """What a connection needs of its engine."""

    loop: EventLoop
    budget: Budget
    max_inflight: int
    max_inflight_bytes: int
    max_payload: int
    dispatch: Callable[[Downstream, Frame], None]  # the service's on_request
    sending: set[Downstream]  # connections with replies the kernel has not taken yet

    def relieve(self) -> None:
        """Close connections whose replies stalled while others need room."""
        ...

    def closed(self, conn: Downstream) -> None: ...


class Downstream:
    def __init__(self, host: Host, sock: socket.socket, listener: Any, now: float) -> None:
        self.host = host
        self.sock = sock
        self.fd = sock.fileno()
        self.listener = listener
        self.partial = b""  # received bytes not framed yet (an incomplete header, or parked)
        self.receiving: Frame | None = None  # a request whose payload is arriving
        self.payload_view: memoryview | None = None
        self.filled = 0
        self.inflight = 0  # admitted and not yet answered (sent or dropped)
        self.inflight_bytes = 0
        self.want = 0  # the cost waiting for the budget
        self.parked = False  # waiting for the budget
        self.capped = False  # waiting for its own replies (its caps)
        self.eof = False  # reads no more: close once everything is answered
        self.closed = False
        self.out: deque[list[Any]] = deque()  # [parts, cost]: replies not sent whole
        # A reply passed on as it arrives (stream_start .. stream_end): other
        # replies wait in ``held`` so that frames never interleave.
        self.streaming = False
        self._held: list[tuple[bytes, bytes, int]] = []
        self.mask = IN
        self.last_recv = now
        self.stalled_since = 0.0
        self._parsing = False
        # The service's per-connection state (the gateway's paired upstream).
        self.peer: Any = None
        self.peer_inflight = 0
        self.lent = False  # off the loop: another thread relays it (the gateway's lane)

    # -- events ----------------------------------------------------------------

    def on_event(self, mask: int) -> None:
        if mask & OUT:
            self._flush()
        if self.closed:
            return
        if mask & IN:
            self._read()
        elif mask & ERR:
            self.close()

    def on_error(self, exc: BaseException) -> None:
        self.close()

    def _update_mask(self) -> None:
        if self.closed:
            return
        mask = 0 if self.eof or self.parked or self.capped else IN
        if self.out:
            mask |= OUT
        if mask != self.mask:
            self.mask = mask
            self.host.loop.modify(self.fd, mask)

    # -- receiving ---------------------------------------------------------------

    def _read(self) -> None:
        view = self.payload_view
        try:
            if view is not None:
                n = self.sock.recv_into(view[self.filled:])
            else:
                n = self.sock.recv_into(self.host.loop.scratch_view, RECV)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        if not n:
            self._end("")
            return
        self.last_recv = self.host.loop.now
        if view is not None:
            self.filled += n
            if self.filled == len(view):
                frame = self.receiving
                assert frame is not None
                frame.payload = view
                self.receiving = self.payload_view = None
                self.host.dispatch(self, frame)
            return
        data = self.host.loop.scratch_view[:n]
        if self.partial:
            data = memoryview(self.partial + data)
            self.partial = b""
        self._parse(data)

    def _parse(self, data: memoryview) -> None:
        self._parsing = True
        try:
            self._frames(data)
        finally:
            self._parsing = False
        self._update_mask()

    def _frames(self, data: memoryview) -> None:
        pos, end = 0, len(data)
        host = self.host
        while end - pos >= HEADER:
            _, opcode, flags, _, rid, length = _unpack_head(data, pos)
            plen, cost = request_cost(flags, length)
            if plen > host.max_payload:
                self._end(f"opcode {opcode:#x} announces {plen} payload bytes; the limit is "
                          f"{host.max_payload}")
                return
            if not self._admit(cost):
                self.partial = bytes(data[pos:end])
                return
            frame = Frame(bytes(data[pos:pos + HEADER]), opcode, flags, rid, length, cost)
            body = pos + HEADER
            if body + plen <= end:
                if plen:
                    frame.payload = bytes(data[body:body + plen])
                pos = body + plen
                host.dispatch(self, frame)
                if self.closed or self.eof:
                    return
                continue
            buf = host.loop.buffers.get(plen)
            got = end - body
            buf[:got] = data[body:end]
            self.receiving, self.payload_view, self.filled = frame, buf, got
            return
        if pos < end:
            self.partial = bytes(data[pos:end])

    def _admit(self, cost: int) -> bool:
        host = self.host
        if self.inflight and (self.inflight >= host.max_inflight
                              or self.inflight_bytes + cost > host.max_inflight_bytes):
            self.capped = True
            return False
        budget = host.budget
        if not budget.fits(cost, self.inflight_bytes):
            if not self.inflight_bytes:  # room held by clients that stopped reading?
                host.relieve()
            if self.closed or not budget.fits(cost, self.inflight_bytes):
                self.want = cost
                budget.park(self)
                return False
        budget.take(cost)
        self.inflight += 1
        self.inflight_bytes += cost
        return True

    def retry_admission(self) -> None:
        """Frame what was held back (the budget or the caps let it in now)."""
        if self.closed or self._parsing:
            return
        data, self.partial = self.partial, b""
        self._parse(memoryview(data))

    def _end(self, malformed: str) -> None:
        """Read no more (EOF or a malformed frame); close once all is answered."""
        if malformed:
            LOG.info("closing a connection after a malformed frame: %s", malformed)
        self.eof = True
        self.partial = b""
        if self.receiving is not None:  # admitted, never dispatched
            frame, self.receiving, self.payload_view = self.receiving, None, None
            self._release(frame.cost)
            if self.closed:
                return
        if not self.inflight and not self.out:
            self.close()
        else:
            self._update_mask()

    # -- replying ----------------------------------------------------------------

    def send(self, header: Buffer, payload: Buffer, cost: int, owned: bool = True) -> bool:
        """Send a reply and give its request's cost back once it is out.
        ``owned``: the buffers stay as they are (else what the kernel does not
        take at once is copied).  True when nothing of the buffers is kept
        (all sent, dropped, or copied)."""
        if self.closed:
            self._release(cost)
            return True
        if self.streaming:  # after the reply being streamed
            self._held.append((bytes(header), bytes(payload), cost))
            return True
        return self._transmit(header, payload, cost, owned)

    def _transmit(self, header: Buffer, payload: Buffer, cost: int | None,
                  owned: bool) -> bool:
        """Send now what the kernel takes and queue the rest; ``cost`` (None:
        no request ends with these bytes) is given back once all is out."""
        if self.out:
            self._queue(header, payload, 0, cost, owned)
            return not owned
        try:
            n = self.sock.sendmsg((header, payload)) if header and payload \
                else self.sock.send(header or payload)
        except BlockingIOError:
            n = 0
        except OSError:
            if cost is not None:
                self._release(cost)
            self.close()
            return True
        if n == len(header) + len(payload):
            if cost is not None:
                self._release(cost)
            return True
        self.stalled_since = _now()
        self._queue(header, payload, n, cost, owned)
        return not owned

    # -- a reply passed on as it arrives (the gateway's large reads) ------------

    def stream_start(self, header: Buffer, chunk: Buffer) -> None:
        """Begin a reply whose payload comes in pieces (``header`` and the
        first piece now; the caller's buffers are reused: what the kernel
        does not take is copied).  Nothing else is sent until ``stream_end``."""
        self.streaming = True
        self.stream_more(chunk, header)

    def stream_more(self, chunk: Buffer, header: Buffer = b"") -> None:
        if not self.closed:
            self._transmit(header, chunk, None, False)

    def stream_end(self, cost: int) -> None:
        """The streamed reply is whole: its request's cost goes back once it is
        out, and the replies held meanwhile follow."""
        self.streaming = False
        if self.closed:
            self._release(cost)
            return
        if self.out:
            self.out.append([[], cost])  # released when everything before it went out
        else:
            self._release(cost)
        held, self._held = self._held, []
        for header, payload, held_cost in held:
            self.send(header, payload, held_cost)

    def _queue(self, header: Buffer, payload: Buffer, skip: int, cost: int | None,
               owned: bool) -> None:
        parts = unsent(header, payload, skip, not owned)
        if not self.out:
            self.host.sending.add(self)
        self.out.append([parts, cost])  # cost None: no request ends here
        self._update_mask()

    def _flush(self) -> None:
        out = self.out
        while out:
            entry = out[0]
            parts: list[memoryview] = entry[0]
            if parts:
                try:
                    n = self.sock.sendmsg(parts)
                except BlockingIOError:
                    return
                except OSError:
                    self.close()
                    return
                self.stalled_since = _now()
                if not advance(parts, n):
                    return
            out.popleft()
            if not out:
                self.host.sending.discard(self)
            if entry[1] is not None:
                self._release(entry[1])
            if self.closed:
                return
        self._update_mask()

    def _release(self, cost: int) -> None:
        self.inflight -= 1
        self.inflight_bytes -= cost
        self.host.budget.release(cost)
        if self.closed:
            return
        if self.capped and not self._parsing:
            self.capped = False
            self.retry_admission()
            if self.closed:
                return
        if self.eof and not self.inflight and not self.out:
            self.close()

    # -- the engine's sweep ----------------------------------------------------------

    def idle_for(self, now: float) -> float:
        """Seconds without a byte from the client while it waits for nothing
        (a half-received request counts as nothing); 0 when it waits."""
        waiting = self.inflight - (self.receiving is not None)
        if waiting or self.out or self.lent:
            return 0.0
        return now - self.last_recv

    def stalled_for(self, now: float) -> float:
        """Seconds a reply has made no progress (0: nothing queued)."""
        return now - self.stalled_since if self.out else 0.0

    # -- lent to another relay (the gateway's compiled lane) -------------------------

    @property
    def quiet(self) -> bool:
        """Nothing of this connection in flight, buffered or waiting: it may be lent."""
        return not (self.inflight or self.out or self.partial or self.receiving is not None
                    or self.streaming or self._held or self.eof or self.closed or self.parked
                    or self.capped or self.lent)

    def lend(self) -> None:
        """Leave the loop (``quiet`` first): another thread reads and writes the
        socket until ``take_back``; the socket stays this connection's."""
        self.lent = True
        self.host.loop.remove(self.fd)

    def take_back(self) -> None:
        """Back on the loop, quiet."""
        self.lent = False
        self.last_recv = self.host.loop.now
        if not self.closed:
            self.mask = IN
            self.host.loop.add(self.fd, IN, self)

    def feed(self, data: bytes) -> None:
        """Bytes received elsewhere, framed as if just received."""
        if self.closed or self.eof:
            return
        if self.partial:
            data, self.partial = self.partial + data, b""
        self._parse(memoryview(data))

    def admit_again(self, data: bytes) -> Frame:
        """A whole request relayed elsewhere, taken up again here: admitted
        whatever the budget says (its memory is held already)."""
        _, opcode, flags, _, rid, length = _unpack_head(data, 0)
        plen, cost = request_cost(flags, length)
        self.host.budget.take(cost)
        self.inflight += 1
        self.inflight_bytes += cost
        frame = Frame(bytes(data[:HEADER]), opcode, flags, rid, length, cost)
        if plen:
            frame.payload = bytes(data[HEADER:HEADER + plen])
        return frame

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        host = self.host
        host.loop.remove(self.fd)
        try:
            self.sock.close()
        except OSError:
            pass
        host.budget.unpark(self)
        host.sending.discard(self)
        out, self.out = self.out, deque()
        if self.receiving is not None:
            frame, self.receiving, self.payload_view = self.receiving, None, None
            self._release(frame.cost)
        for _parts, cost in out:
            if cost is not None:
                self._release(cost)
        held, self._held = self._held, []
        for _header, _payload, cost in held:
            self._release(cost)
        self.partial = b""
        host.closed(self)
