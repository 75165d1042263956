"""One TCP connection to a Sheepdog gateway, with several requests in flight.

How it works: ``send()`` gives each request a fresh 32-bit id, writes it and
remembers the id with the time it was sent.  ``wait(id)`` / ``wait_any()`` read
the socket through the codec's ``ResponseReader`` until a response arrives;
responses may come back in any order, so ones nobody asked for yet are parked
in ``_ready``.  A response whose id is not in flight, or bytes that do not
decode, poison the stream: the connection closes itself and raises
``ProtocolError``.  Any socket error or timeout also closes it; a closed
connection is never used again (``usable`` is False) and the pool drops it.

A request may name a buffer (``send(req, into=view)``) for its response
payload: when the response header announces exactly that many bytes, the
payload is received straight into it (``recv_into``, no intermediate copy) and
the response carries ``payload=b""``.  Headers and other payloads are read in
modest chunks, so little of a following in-place payload is read ahead.

Each request has its own deadline (``request_timeout`` after it was sent);
a wait gives up with ``ReadTimeout`` when the awaited request's deadline
passes.  The user of a connection may also set ``call_deadline`` (an absolute
``time.monotonic()`` value, the end of the public call it serves): past it no
request is sent and no wait goes on (``DeadlineExceeded``), so a call that a
garbage reply would drive into an endless series of requests still ends.
Every transport error carries ``request_sent``: False means nothing reached
the peer (safe to send elsewhere), True means the outcome is unknown.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import TypeVar

from sheepdog_backend.exception import (
    ConnectionClosed,
    ConnectTimeout,
    DeadlineExceeded,
    InvalidInput,
    ProtocolError,
    ReadTimeout,
    TransportError,
)
from sheepdog_backend.protocol.constants import SD_LISTEN_PORT
from sheepdog_backend.protocol.framing import DEFAULT_MAX_PAYLOAD, ResponseReader
from sheepdog_backend.protocol.header import Request, Response

_RECV_SIZE = 1 << 20  # largest recv() of a payload that has no buffer of its own
_HEAD_RECV = 1 << 16  # recv() between messages: little read-ahead of the next payload
E = TypeVar("E", bound=Exception)


def _send_frame(sock: socket.socket, header: bytes, payload: bytes) -> None:
    """Header and payload in one sendmsg() where the socket takes it all
    (no concatenated copy of the payload), the rest with sendall()."""
    if not payload:
        sock.sendall(header)
        return
    sent = sock.sendmsg([header, payload])
    if sent < len(header):
        sock.sendall(header[sent:])
        sent = len(header)
    if sent - len(header) < len(payload):
        sock.sendall(memoryview(payload)[sent - len(header):])


class ConnectFailed(TransportError):
    """The TCP connection could not be established (refused, unreachable)."""


def mark(exc: TransportError, sent: bool) -> TransportError:
    """Record on a transport error whether its request may have reached the peer."""
    exc.request_sent = sent  # type: ignore[attr-defined]
    return exc


def request_was_sent(exc: BaseException) -> bool:
    """True unless the error certainly happened before anything was sent."""
    return bool(getattr(exc, "request_sent", True))


@dataclass(frozen=True, slots=True, order=True)
class Address:
    """A gateway address; ``str()`` gives the canonical ``host:port`` form."""

    host: str
    port: int = SD_LISTEN_PORT

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def check_host(host: str, context: str = "") -> str:
    """The canonical host: an IP address as Python prints it, or a DNS name in
    lower case without a trailing dot; InvalidInput for anything else."""
    prefix = f"gateway {context!r}: " if context else ""
    if not isinstance(host, str) or not host:
        raise InvalidInput(f"{prefix}empty host")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host.rstrip(".")
    labels = name.split(".")
    ok = all(
        0 < len(label) <= 63 and label.replace("-", "").isalnum() and label.isascii()
        and not label.startswith("-") and not label.endswith("-")
        for label in labels)
    if not ok or len(host) > 253:
        raise InvalidInput(f"{prefix}{host!r} is not an IP address or host name")
    return name.lower()


def check_port(port: int | str, context: str = "") -> int:
    """A TCP port 1-65535 from an int or a string of ASCII digits."""
    prefix = f"gateway {context!r}: " if context else ""
    if isinstance(port, str):
        if not port.isdigit() or not port.isascii():
            raise InvalidInput(f"{prefix}port {port!r} is not a number")
        port = int(port)
    elif not isinstance(port, int) or isinstance(port, bool):
        raise InvalidInput(f"{prefix}port {port!r} is not a number")
    if not 1 <= port <= 65535:
        raise InvalidInput(f"{prefix}port {port} is outside 1-65535")
    return port


def parse_address(text: str, default_port: int = SD_LISTEN_PORT) -> Address:
    """Parse ``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 address.

    The one parser for every gateway address a user gives (client arguments,
    ini options, backing references, the CLI), so all accept the same strings."""
    if not isinstance(text, str):
        raise InvalidInput(f"gateway must be a string, got {type(text).__name__}")
    raw = text.strip()
    port_text: str | None = None
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0:
            raise InvalidInput(f"gateway {text!r}: unclosed '[' (missing ']')")
        host, rest = raw[1:end], raw[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise InvalidInput(f"gateway {text!r}: junk after ']'")
            port_text = rest[1:]
        try:
            if ipaddress.ip_address(host).version != 6:
                raise ValueError
        except ValueError:
            raise InvalidInput(f"gateway {text!r}: brackets need an IPv6 address") from None
    elif raw.count(":") > 1:
        host = raw  # bare IPv6 without port
    elif ":" in raw:
        host, port_text = raw.split(":", 1)
    else:
        host = raw
    port = check_port(port_text, text) if port_text is not None else default_port
    return Address(check_host(host, text), port)


class Connection:
    """A connected socket speaking the Sheepdog protocol (not thread-safe:
    one user at a time, the pool guarantees it)."""

    def __init__(self, address: Address, *, connect_timeout: float = 5.0,
                 request_timeout: float = 30.0, max_payload: int = DEFAULT_MAX_PAYLOAD
                 ) -> None:
        if connect_timeout <= 0 or request_timeout <= 0:
            raise InvalidInput("timeouts must be positive")
        self.address = address
        self.request_timeout = request_timeout
        self._reader = ResponseReader(max_payload)
        self._inflight: dict[int, float] = {}  # id -> deadline
        self._ready: dict[int, Response] = {}
        self._targets: dict[int, memoryview] = {}  # id -> buffer for its payload
        self._next_id = 1
        self._sock: socket.socket | None = None
        self.call_deadline: float | None = None  # set by the user for one call
        try:
            sock = socket.create_connection((address.host, address.port), connect_timeout)
        except TimeoutError:
            raise mark(ConnectTimeout(f"connect to {address} timed out after "
                                      f"{connect_timeout}s"), False) from None
        except OSError as exc:
            raise mark(ConnectFailed(f"cannot connect to {address}: {exc}"), False) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock

    # -- state -------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """Open and with nothing in flight or parked: safe to hand to a new user."""
        return self._sock is not None and not self._inflight and not self._ready

    @property
    def closed(self) -> bool:
        return self._sock is None

    @property
    def inflight(self) -> int:
        return len(self._inflight) + len(self._ready)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        self._inflight.clear()
        self._ready.clear()
        self._targets.clear()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _fail(self, exc: E) -> E:
        self.close()
        return exc

    # -- sending -----------------------------------------------------------

    def send(self, request: Request, *, into: memoryview | None = None) -> int:
        """Send a request with a fresh id; return the id to wait for.  With
        ``into``, a response payload of exactly ``len(into)`` bytes is received
        into it and the response's ``payload`` is empty."""
        sock = self._sock
        if sock is None:
            raise mark(ConnectionClosed(f"connection to {self.address} is closed"), False)
        if self.call_deadline is not None and time.monotonic() >= self.call_deadline:
            raise mark(self._fail(DeadlineExceeded(
                f"the call's deadline passed before a request to {self.address} "
                "could be sent")), True)
        rid = self._next_id
        self._next_id = rid + 1 if rid < 0xFFFFFFFF else 1
        req = request.with_id(rid)
        try:
            header = req.encode_header()
        except ProtocolError:
            raise  # our own bad values: the stream is still fine
        try:
            sock.settimeout(self.request_timeout)
            _send_frame(sock, header, req.payload)
        except TimeoutError:
            raise mark(self._fail(ReadTimeout(
                f"sending to {self.address} timed out")), True) from None
        except OSError as exc:
            raise mark(self._fail(ConnectionClosed(
                f"send to {self.address} failed: {exc}")), True) from exc
        self._inflight[rid] = time.monotonic() + self.request_timeout
        if into is not None:
            self._targets[rid] = into
        return rid

    # -- receiving ---------------------------------------------------------

    def _receive_one(self, deadline: float) -> Response:
        """Read until one whole response is decoded (any id)."""
        call_deadline = self.call_deadline
        by_call = call_deadline is not None and call_deadline < deadline
        if call_deadline is not None:
            deadline = min(deadline, call_deadline)
        sock = self._sock
        if sock is None:
            raise mark(ConnectionClosed(f"connection to {self.address} is closed"), True)
        reader = self._reader
        try:
            while True:
                message = reader.next_message()
                if message is not None:
                    return message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                header = reader.pending_header
                target = None if header is None else self._targets.get(header.id)
                if target is not None and header is not None \
                        and len(target) == header.payload_length:
                    received = sock.recv_into(reader.payload_buffer(target))
                    if received:
                        reader.commit(received)
                        continue
                else:
                    data = sock.recv(min(_RECV_SIZE, max(_HEAD_RECV, reader.payload_missing)))
                    if data:
                        reader.feed(data)
                        continue
                raise mark(self._fail(ConnectionClosed(
                    f"{self.address} closed the connection with "
                    f"{len(self._inflight)} request(s) in flight")), True)
        except ProtocolError as exc:
            self.close()
            raise ProtocolError(f"bad response from {self.address}: {exc}") from exc
        except TimeoutError:
            if by_call:
                raise mark(self._fail(DeadlineExceeded(
                    f"the call's deadline passed waiting for {self.address}")),
                    True) from None
            raise mark(self._fail(ReadTimeout(
                f"{self.address} did not answer within {self.request_timeout}s")),
                True) from None
        except OSError as exc:
            raise mark(self._fail(ConnectionClosed(
                f"receive from {self.address} failed: {exc}")), True) from exc

    def _accept(self, response: Response) -> int:
        rid = response.id
        if rid not in self._inflight:
            self.close()
            raise ProtocolError(
                f"{self.address} answered request id {rid}, which is not in flight")
        del self._inflight[rid]
        self._targets.pop(rid, None)
        self._ready[rid] = response
        return rid

    def wait(self, rid: int) -> Response:
        """The response to request ``rid`` (parking others that arrive first)."""
        while rid not in self._ready:
            deadline = self._inflight.get(rid)
            if deadline is None:
                raise ValueError(f"request id {rid} was never sent on this connection")
            self._accept(self._receive_one(deadline))
        return self._ready.pop(rid)

    def wait_any(self) -> Response:
        """The next response of any in-flight request."""
        if self._ready:
            return self._ready.pop(next(iter(self._ready)))
        if not self._inflight:
            raise ValueError("no request in flight")
        deadline = min(self._inflight.values())
        rid = self._accept(self._receive_one(deadline))
        return self._ready.pop(rid)

    def call(self, request: Request) -> Response:
        """Send one request and wait for its response."""
        return self.wait(self.send(request))


def call_unix(path: str, request: Request, timeout: float) -> Response:
    """One request over a fresh connection to the unix socket ``path`` (a
    sheep's STORE_DIR/sock, a gateway's --unix) and its answer, all within
    ``timeout`` seconds; ConnectFailed, ConnectionClosed or ReadTimeout
    otherwise (ProtocolError for an answer that is not to it).  For one-off
    probes: no pool, no retry."""
    req = request.with_id(1)
    reader = ResponseReader()
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {path}: {exc}") from exc
        try:
            _send_frame(sock, req.encode_header(), req.payload)
            while (response := reader.next_message()) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                data = sock.recv(1 << 16)
                if not data:
                    raise ConnectionClosed(f"{path} closed before answering")
                reader.feed(data)
        except TimeoutError:
            raise ReadTimeout(f"{path} did not answer within {timeout:g} s") from None
        except OSError as exc:
            raise ConnectionClosed(f"{path}: {exc}") from exc
    if response.id != req.id:
        raise ProtocolError(f"{path} answered id {response.id} to request {req.id}")
    return response
