"""The wire engine under ``serve`` and ``gateway``: one event loop, every connection.

How it works: ``Engine(service, ...)`` binds its listeners (TCP ports on
``host``, unix sockets) and ``start`` runs one EventLoop thread that accepts
connections, frames their requests in place (engine.conn.Downstream) and hands
each complete request to the service's ``on_request`` on the loop thread.
The service answers with ``conn.send`` on the loop thread, or from another
thread through ``reply`` (which queues the send onto the loop).  There is no
thread per connection: connections are bounded by file descriptors.
``start`` raises the process's open-file limit towards what
``max_connections`` needs (the default serves 10,000 and more); at the limit
a quiet connection (nothing in flight) makes room for the new one (tgt
re-opens its per-thread connection when it needs it); when every connection
is busy, or the process runs out of descriptors, the new one is accepted and
closed at once (the client sees EOF, never silence), and the log says so
with the number.

Limits (issue 9's admission, now on the loop; engine.admission): a request
is admitted as its header arrives, before its payload, within its
connection's caps and the shared ``memory_budget``; memory held for requests
and replies stays within the budget plus one receive per parked connection,
whatever clients do.  The sweep (every ``TICK`` s) closes a connection whose
reply made no progress for ``send_timeout`` s, and one that sent nothing for
``idle_timeout`` s while it waited for nothing (tgt and QEMU reconnect on
their next request).  While others wait for budget, a reply stalled for
``pressure_stall`` s is enough, and a connection that holds nothing and must
wait has those closed at once: clients that never read their replies cannot
keep one that does waiting.

Shared: ``stats()`` and the ``stop*`` calls may come from any thread; they
read plain counters or run on the loop (``run_in_loop``).  Everything else
runs on the loop thread.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import socket
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from sheepdog_backend.engine.admission import Budget
from sheepdog_backend.engine.conn import Downstream, Frame
from sheepdog_backend.engine.loop import IN, EventLoop
from sheepdog_backend.protocol.framing import DEFAULT_MAX_PAYLOAD

LOG = logging.getLogger(__name__)
TICK = 0.5  # how often the sweep looks at the clocks
DEFAULT_MAX_INFLIGHT = 16
DEFAULT_MAX_INFLIGHT_BYTES = 64 << 20
DEFAULT_MEMORY_BUDGET = 256 << 20
DEFAULT_MAX_CONNECTIONS = 16384
DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_SEND_TIMEOUT = 60.0
DEFAULT_PRESSURE_STALL = 0.5
_SPARE_FDS = 64  # listeners, the store, the loop's own
_ACCEPTS_PER_TURN = 64
_EVICTION_SAMPLE = 256  # connections looked at for an idle one to close at the limit


class Service(Protocol):
    """What the engine asks of whoever answers the requests."""

    def on_request(self, conn: Downstream, frame: Frame) -> None: ...

    def on_close(self, conn: Downstream) -> None: ...


class Listener:
    """One listening socket and the connections it accepted."""

    def __init__(self, engine: Engine, sock: socket.socket, address: tuple[str, int]) -> None:
        self.engine = engine
        self.sock = sock
        self.fd = sock.fileno()
        self.address = address
        self.stopped = False
        self.conns: set[Downstream] = set()

    def on_event(self, mask: int) -> None:
        self.engine.accept(self)

    def on_error(self, exc: BaseException) -> None:
        LOG.error("listener %s: %s", self.address, exc)


def check_limits(*, ports: Sequence[int], unix_paths: Sequence[str], max_inflight: int,
                 max_inflight_bytes: int, memory_budget: int, max_connections: int,
                 idle_timeout: float, send_timeout: float, pressure_stall: float) -> None:
    """ValueError for limits the engine cannot run with."""
    if not ports and not unix_paths:
        raise ValueError("at least one port or unix socket is needed")
    if min(max_inflight, max_inflight_bytes, memory_budget, max_connections) < 1:
        raise ValueError("in-flight limits, the memory budget and the connection "
                         "limit must be positive")
    if min(idle_timeout, send_timeout, pressure_stall) < 0:
        raise ValueError("timeouts must be >= 0 (0: none)")


def raise_fd_limit(connections: int, extra: int = 0) -> int:
    """Raise the open-file limit towards what ``connections`` client
    connections and ``extra`` other descriptors need (the hard limit too when
    the process may); the number of client connections the limit now allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = connections + extra + _SPARE_FDS
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            try:  # root (CAP_SYS_RESOURCE) may raise the hard limit too
                resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
                soft = hard = need
            except (ValueError, OSError):
                pass
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        if new > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
                soft = new
            except (ValueError, OSError) as exc:
                LOG.warning("cannot raise the open-file limit to %d: %s", new, exc)
    if soft == resource.RLIM_INFINITY:
        return connections
    return max(1, min(connections, soft - extra - _SPARE_FDS))


class Engine:
    def __init__(self, service: Service, *, host: str = "127.0.0.1",
                 ports: Sequence[int] = (), unix_paths: Sequence[str] = (),
                 max_inflight: int = DEFAULT_MAX_INFLIGHT,
                 max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 send_timeout: float = DEFAULT_SEND_TIMEOUT,
                 pressure_stall: float = DEFAULT_PRESSURE_STALL,
                 max_payload: int = DEFAULT_MAX_PAYLOAD, extra_fds: int = 0,
                 name: str = "sheep") -> None:
        check_limits(ports=ports, unix_paths=unix_paths, max_inflight=max_inflight,
                     max_inflight_bytes=max_inflight_bytes, memory_budget=memory_budget,
                     max_connections=max_connections, idle_timeout=idle_timeout,
                     send_timeout=send_timeout, pressure_stall=pressure_stall)
        self.service = service
        # what a connection calls with each request
        self.dispatch: Callable[[Downstream, Frame], None] = service.on_request
        self.host = host
        self.ports = list(ports)
        self.unix_paths = list(unix_paths)
        self.max_inflight = max_inflight
        self.max_inflight_bytes = max_inflight_bytes
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.send_timeout = send_timeout
        self.pressure_stall = pressure_stall
        self.max_payload = max_payload
        self.extra_fds = extra_fds  # descriptors the service opens (the gateway's upstreams)
        self.budget = Budget(memory_budget)
        self.sending: set[Downstream] = set()  # connections with replies not yet taken
        self.loop = EventLoop(f"{name}-loop")
        self.listeners: list[Listener] = []
        self.connections = 0
        self.peak_connections = 0
        self.counters = {"refused": 0, "idle_closed": 0, "stall_closed": 0, "idle_evicted": 0}
        self._serving = max_connections  # what the fd limit allows (start)
        self._last_refusal_log = 0.0
        self._spare: int | None = None  # a descriptor kept for accepting at EMFILE
        self._running = False

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [listener.address for listener in self.listeners]

    # -- starting ---------------------------------------------------------------

    def start(self) -> None:
        if self._running:
            raise RuntimeError("the engine is already running")
        try:
            for port in self.ports:
                self.listeners.append(self._bind(port))
            for path in self.unix_paths:
                self.listeners.append(self._bind_unix(path))
        except OSError:
            for listener in self.listeners:
                listener.sock.close()
            self.listeners = []
            raise
        self._serving = raise_fd_limit(self.max_connections, self.extra_fds)
        if self._serving < self.max_connections:
            LOG.warning("the open-file limit allows %d connections, not the %d asked "
                        "(raise it: ulimit -n, LimitNOFILE=)", self._serving,
                        self.max_connections)
        self._spare = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        for listener in self.listeners:
            self.loop.add(listener.fd, IN, listener)
        self.loop.every(TICK, self._sweep)
        self._running = True
        self.loop.start()

    def _bind(self, port: int) -> Listener:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, port))
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return Listener(self, sock, (self.host, int(sock.getsockname()[1])))

    def _bind_unix(self, path: str) -> Listener:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return Listener(self, sock, (path, 0))

    # -- connections (loop thread) ------------------------------------------------

    def accept(self, listener: Listener) -> None:
        for _ in range(_ACCEPTS_PER_TURN):
            try:
                sock, _peer = listener.sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    self._shed(listener)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EINTR):
                    continue
                LOG.error("accept on %s failed: %s", listener.address, exc)
                return
            if listener.stopped:
                sock.close()
                return
            if self.connections >= min(self.max_connections, self._serving) \
                    and not self._evict_idle():
                self.counters["refused"] += 1
                self._refusal(f"{self.connections} connections served, the limit, all busy")
                _reset(sock)
                continue
            sock.setblocking(False)
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Downstream(self, sock, listener, time.monotonic())
            listener.conns.add(conn)
            self.connections += 1
            self.peak_connections = max(self.peak_connections, self.connections)
            self.loop.add(conn.fd, IN, conn)

    def _evict_idle(self) -> bool:
        """At the connection limit: close the quietest of a sample of idle
        connections (nothing in flight or unsent), so a new client gets in
        rather than a quiet one holding its place (tgt keeps a connection per
        I/O thread and re-opens one when it needs it).  False: none idle."""
        oldest: Downstream | None = None
        seen = 0
        for listener in self.listeners:
            for conn in listener.conns:
                if not conn.inflight and not conn.out and not conn.lent and (
                        oldest is None or conn.last_recv < oldest.last_recv):
                    oldest = conn
                seen += 1
                if seen >= _EVICTION_SAMPLE:
                    break
        if oldest is None:
            return False
        self.counters["idle_evicted"] += 1
        if self.counters["idle_evicted"] % 1000 == 1:
            LOG.warning("at the limit of %d connections: closing idle ones for new clients "
                        "(%d so far)", self.connections, self.counters["idle_evicted"])
        oldest.close()
        return True

    def _shed(self, listener: Listener) -> None:
        """Out of descriptors: accept one connection on the spare and close it,
        so the client hears EOF instead of waiting in the backlog."""
        self.counters["refused"] += 1
        self._refusal(f"out of file descriptors at {self.connections} connections")
        if self._spare is None:
            return
        os.close(self._spare)
        self._spare = None
        try:
            sock, _ = listener.sock.accept()
            _reset(sock)
        except OSError:
            pass
        try:
            self._spare = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._spare = None

    def _refusal(self, why: str) -> None:
        now = time.monotonic()
        if now - self._last_refusal_log > 10:
            self._last_refusal_log = now
            LOG.warning("refusing connections: %s (%d refused so far)", why,
                        self.counters["refused"])

    def closed(self, conn: Downstream) -> None:
        conn.listener.conns.discard(conn)
        self.connections -= 1
        self.service.on_close(conn)

    def reply(self, conn: Downstream, header: bytes, payload: bytes | bytearray | memoryview,
              cost: int) -> None:
        """Send a reply from any thread (queued onto the loop)."""
        self.loop.call_soon(lambda: conn.send(header, payload, cost))

    def relieve(self) -> None:
        """A connection that holds nothing waits for room: close those whose
        replies made no progress for ``pressure_stall`` s (they hold it)."""
        stall = self.pressure_stall
        if not stall or not self.sending:
            return
        now = self.loop.now
        for conn in list(self.sending):
            stalled = conn.stalled_for(now)
            if stalled >= stall:
                self._close_stalled(conn, stalled)

    def _close_stalled(self, conn: Downstream, stalled: float) -> None:
        self.counters["stall_closed"] += 1
        LOG.info("closing a connection whose client read nothing for %.1f s", stalled)
        conn.close()

    def _sweep(self) -> None:
        now = time.monotonic()
        send, stall = self.send_timeout, self.pressure_stall
        pressure = bool(stall and self.budget.waiting)
        for conn in list(self.sending):
            stalled = conn.stalled_for(now)
            if (send and stalled >= send) or (pressure and stalled >= stall):
                self._close_stalled(conn, stalled)
        idle = self.idle_timeout
        if not idle:
            return
        for listener in self.listeners:
            for conn in list(listener.conns):
                if conn.idle_for(now) >= idle:
                    self.counters["idle_closed"] += 1
                    LOG.info("closing a connection idle for %.0f s", idle)
                    conn.close()

    # -- stats and stopping (any thread) -------------------------------------------

    def stats(self) -> dict[str, int]:
        """Connections served, bytes in flight now and at the peak, and how
        many connections each limit closed or refused."""
        return {"connections": self.connections, "peak_connections": self.peak_connections,
                "inflight_bytes": self.budget.used, "peak_inflight_bytes": self.budget.peak,
                "waiting_for_budget": self.budget.waiting, **self.counters}

    def stop_listener(self, index: int) -> None:
        """Close one listening socket and every connection it accepted."""
        listener = self.listeners[index]

        def stop() -> None:
            listener.stopped = True
            self.loop.remove(listener.fd)
            listener.sock.close()
            for conn in list(listener.conns):
                conn.close()
        if self._running:
            self.loop.run_in_loop(stop)
        else:
            stop()

    def restart_listener(self, index: int) -> None:
        """Listen again on a listener's port after ``stop_listener``."""
        old = self.listeners[index]
        if not old.stopped:
            raise RuntimeError(f"listener {index} is still running")
        listener = self._bind(old.address[1])
        self.listeners[index] = listener
        self.loop.run_in_loop(lambda: self.loop.add(listener.fd, IN, listener))

    def close_all(self) -> None:
        """Close every listener and every connection (the loop goes on, so
        replies still coming from other threads are dropped in order)."""
        if not self._running:
            return
        for index, listener in enumerate(self.listeners):
            if not listener.stopped:
                self.stop_listener(index)

    def stop(self) -> None:
        """Close every listener and connection, then end the loop thread."""
        if not self._running:
            return
        self.close_all()
        self._running = False
        self.loop.stop()
        self.loop.close()
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None


def _reset(sock: socket.socket) -> None:
    """Close with a reset: the client sees the connection end at once."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    except OSError:
        pass
    sock.close()
