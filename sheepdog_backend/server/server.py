"""Thin TCP loop around the Handler: listeners, connections, a worker pool.

How it works: each listening address has an accept thread (polling a 0.2 s
timeout so it notices ``stop``).  Each accepted connection gets a reader
thread, and a writer thread while it has replies to send (started by the
first reply, it stays ``_LINGER`` s for more, then ends: an idle connection
costs one thread).  The reader feeds received bytes into a
RequestReader and hands every complete request to an executor, the way sheep
hands requests to its worker pools (sheepdog-protocol.md §2.4):

* object I/O (CREATE_AND_WRITE_OBJ, READ_OBJ, WRITE_OBJ, REMOVE_OBJ,
  DISCARD_OBJ, EXIST) goes to a pool shared by all connections and runs
  concurrently, also for requests pipelined on one connection;
* every other op (VDI and cluster ops: NEW_VDI, DEL_VDI, GET_VDI_INFO,
  LOCK_VDI, MAKE_FS, ...) goes to one serial worker, so they run one at a
  time in arrival order, as sheep's cluster-op queue does.

The store is safe under this (see state.py/store.py: inode changes take
``meta_lock``, creates are temp file + rename, writes are pwrite).  A worker
puts its response on the connection's outbox; the writer sends
responses one by one in completion order, so responses never interleave and
workers never block on a socket.  Clients match responses by id.

Back-pressure and limits (all options of SheepServer, EmbeddedServer and
``serve``):

* a request is *admitted* as soon as its header is read and before its
  payload is received; its cost is the payload it carries plus the reply
  payload it may get (``header_cost`` in admission.py).  It needs room on its connection (at most
  ``max_inflight`` requests and about ``max_inflight_bytes``) and in the
  server-wide ``memory_budget`` shared by every connection (``Budget``; one
  request always fits when nothing else is in flight).  Until it is admitted
  the reader reads nothing more from that connection (TCP pushes back on the
  client), so memory held for requests and replies stays within the budget
  plus a 64 KiB receive buffer per connection, whatever the clients do;
* while a connection holding nothing waits for budget, connections that
  hold some get no more (a newcomer is not kept out by a few hoarders);
* a reply that makes no progress for ``send_timeout`` seconds (the client
  stopped reading) closes the connection and frees what it held; while
  other requests wait for budget, a stall of ``pressure_stall`` seconds is
  enough, so clients that never read their replies cannot keep well-behaved
  ones waiting for long;
* a connection with nothing in flight (or a half-received request) that
  sends nothing for ``idle_timeout`` seconds is closed (tgt and QEMU
  reconnect on their next request);
* at most ``max_connections`` connections are served (each costs two
  threads); one more is accepted and closed at once.

``stats()`` reports connections, bytes in flight and their peak, and how
many connections each limit closed.  A malformed frame (a payload above the
cap, a truncated header at EOF) stops reading on that connection only:
requests already read are still answered, then the connection closes.  At
EOF the same happens (a client may half-close and still read its answers).
``stop``/``stop_listener`` shut the sockets down, and ``stop`` joins every
reader, writer, accept and worker thread.  Several listeners share one
handler, i.e. one store: a "cluster" whose gateways can be killed one by one
with ``stop_listener``.

The loop needs only a narrow interface of its handler (``RequestHandler``:
``handle``, ``max_payload``, ``state.epoch``/``state.node_id``), so the
local gateway (sheepdog_backend.gateway) reuses it with a handler that
forwards to a cluster.  ``unix_paths`` adds unix-socket listeners (tgt's
Sheepdog store connects to ``unix:PATH:VDI``).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from sheepdog_backend.exception import ProtocolError, SystemError_
from sheepdog_backend.protocol.constants import Opcode
from sheepdog_backend.protocol.framing import RequestReader
from sheepdog_backend.protocol.header import (
    Request,
    Response,
    result_response,
)
from sheepdog_backend.protocol.structs import NodeId
from sheepdog_backend.server.admission import (
    TICK,
    Budget,
    ConnectionState,
    header_cost,
    request_cost,
)
from sheepdog_backend.server.handler import Handler

LOG = logging.getLogger(__name__)
_RECV = 1 << 20  # most bytes received into an admitted payload at once
_HEAD_RECV = 64 << 10  # most bytes received while no payload is admitted
_LINGER = 1.0  # how long an idle writer thread waits for the next reply

IO_OPS = frozenset({
    Opcode.CREATE_AND_WRITE_OBJ, Opcode.READ_OBJ, Opcode.WRITE_OBJ, Opcode.REMOVE_OBJ,
    Opcode.DISCARD_OBJ, Opcode.EXIST,
})
DEFAULT_WORKERS = 8
DEFAULT_MAX_INFLIGHT = 16
DEFAULT_MAX_INFLIGHT_BYTES = 64 << 20
DEFAULT_MEMORY_BUDGET = 256 << 20
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_SEND_TIMEOUT = 60.0
DEFAULT_PRESSURE_STALL = 5.0


class NodeState(Protocol):
    @property
    def epoch(self) -> int: ...

    node_id: NodeId


class RequestHandler(Protocol):
    """What the loop needs of a handler (server.handler.Handler is one)."""

    max_payload: int

    @property
    def state(self) -> NodeState: ...

    def handle(self, request: Request) -> Response: ...


class _Listener:
    def __init__(self, sock: socket.socket, address: tuple[str, int]) -> None:
        self.sock = sock
        self.address = address
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None
        self.connections: set[socket.socket] = set()
        self.conns: set[ConnectionState] = set()


class SheepServer:
    def __init__(self, handler: Handler | RequestHandler, *, host: str = "127.0.0.1",
                 ports: Sequence[int] = (7000,), workers: int = DEFAULT_WORKERS,
                 max_inflight: int = DEFAULT_MAX_INFLIGHT,
                 max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 send_timeout: float = DEFAULT_SEND_TIMEOUT,
                 pressure_stall: float = DEFAULT_PRESSURE_STALL,
                 unix_paths: Sequence[str] = ()) -> None:
        if not ports and not unix_paths:
            raise ValueError("at least one port is needed")
        if min(workers, max_inflight, max_inflight_bytes, memory_budget, max_connections) < 1:
            raise ValueError("workers, in-flight limits, the memory budget and the "
                             "connection limit must be positive")
        if min(idle_timeout, send_timeout, pressure_stall) < 0:
            raise ValueError("timeouts must be >= 0 (0: none)")
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.send_timeout = send_timeout
        self.pressure_stall = pressure_stall
        self.budget = Budget(memory_budget)
        self.counters = {"refused": 0, "idle_closed": 0, "stall_closed": 0}
        self._connections = 0
        self._last_refusal_log = 0.0
        self.handler = handler
        self.host = host
        self.ports = list(ports)
        self.unix_paths = list(unix_paths)
        self.workers = workers
        self.max_inflight = max_inflight
        self.max_inflight_bytes = max_inflight_bytes
        self.listeners: list[_Listener] = []
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()  # readers and writers alive
        self._pool: ThreadPoolExecutor | None = None
        self._serial: ThreadPoolExecutor | None = None

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [listener.address for listener in self.listeners]

    def start(self) -> None:
        if self._pool is not None:
            raise RuntimeError("the server is already running")
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
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="sheep-io")
        self._serial = ThreadPoolExecutor(1, thread_name_prefix="sheep-cluster")
        self._advertise()
        for index, listener in enumerate(self.listeners):
            thread = threading.Thread(target=self._accept_loop, args=(listener,),
                                      name=f"sheep-accept-{index}", daemon=True)
            listener.thread = thread
            thread.start()

    def _advertise(self) -> None:
        """Advertise the first live listener as this node's address.

        dog and the client talk to the addresses GET_NODE_LIST reports (e.g.
        STAT_SHEEP per node), so a stopped listener must not stay advertised
        while another one still serves the same store."""
        live = [listener for listener in self.listeners
                if not listener.stopped.is_set() and listener.sock.family != socket.AF_UNIX]
        if live:
            host, port = live[0].address
            self.handler.state.node_id = NodeId(host, port)

    def _bind(self, port: int) -> _Listener:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, port))
            sock.listen(64)
            sock.settimeout(0.2)
        except OSError:
            sock.close()
            raise
        address = sock.getsockname()
        return _Listener(sock, (self.host, int(address[1])))

    def _bind_unix(self, path: str) -> _Listener:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(64)
            sock.settimeout(0.2)
        except OSError:
            sock.close()
            raise
        return _Listener(sock, (path, 0))

    def _accept_loop(self, listener: _Listener) -> None:
        while not listener.stopped.is_set():
            try:
                sock, _peer = listener.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            with self._lock:
                full = self._connections >= self.max_connections
                if full:
                    self.counters["refused"] += 1
                else:
                    self._connections += 1
            if full:
                self._refuse(sock)
                continue
            sock.settimeout(TICK)
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = ConnectionState(sock, self.budget)
            with self._lock:
                if listener.stopped.is_set():
                    self._connections -= 1
                    sock.close()
                    break
                listener.connections.add(sock)
                listener.conns.add(conn)
                reader = threading.Thread(target=self._serve, args=(listener, conn),
                                          name="sheep-conn", daemon=True)
                self._threads.add(reader)
            reader.start()

    def _refuse(self, sock: socket.socket) -> None:
        """Over the connection limit: close at once (the client sees EOF)."""
        now = time.monotonic()
        if now - self._last_refusal_log > 10:
            self._last_refusal_log = now
            LOG.warning("refusing connections beyond the limit of %d", self.max_connections)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        except OSError:
            pass
        sock.close()

    def stats(self) -> dict[str, int]:
        """Connections served, bytes in flight now and at the peak, and how
        many connections each limit closed or refused."""
        with self._lock:
            return {"connections": self._connections, "inflight_bytes": self.budget.used,
                    "peak_inflight_bytes": self.budget.peak,
                    "waiting_for_budget": self.budget.waiting, **self.counters}

    def _count(self, counter: str) -> None:
        with self._lock:
            self.counters[counter] += 1

    # -- one connection ------------------------------------------------------

    def _serve(self, listener: _Listener, conn: ConnectionState) -> None:
        reader = RequestReader(max_payload=self.handler.max_payload)
        admitted: int | None = None  # cost admitted for the pending header
        quiet_since = time.monotonic()
        try:
            while True:
                request = reader.next_message()
                if request is not None:
                    cost = admitted if admitted is not None else request_cost(request)
                    if admitted is None and not conn.admit(cost, self.max_inflight,
                                                           self.max_inflight_bytes):
                        break
                    admitted = None
                    self._dispatch(conn, request, cost)
                    continue
                header = reader.pending_header
                if header is not None and admitted is None:
                    cost = header_cost(header)
                    if not conn.admit(cost, self.max_inflight, self.max_inflight_bytes):
                        break
                    admitted = cost
                try:
                    if reader.payload_missing:
                        view = reader.payload_buffer()
                        n = conn.sock.recv_into(view, min(len(view), _RECV))
                        if n:
                            reader.commit(n)
                    else:
                        data = conn.sock.recv(_HEAD_RECV)
                        n = len(data)
                        reader.feed(data)
                except TimeoutError:
                    if conn.closing.is_set():
                        break
                    waiting_for_us = conn.inflight - (admitted is not None)
                    if (self.idle_timeout and time.monotonic() - quiet_since
                            >= self.idle_timeout
                            and (not waiting_for_us or admitted is not None)):
                        self._count("idle_closed")
                        LOG.info("closing a connection idle for %.0f s", self.idle_timeout)
                        break
                    continue
                if not n:
                    break
                quiet_since = time.monotonic()
        except ProtocolError as exc:
            LOG.info("closing a connection after a malformed frame: %s", exc)
        except OSError:
            pass  # peer went away or we are stopping
        finally:
            if admitted is not None:  # admitted, never dispatched
                conn.done(admitted)
            conn.drain()  # every admitted request answered (sent or dropped)
            with conn.out_cond:
                conn.finished = True
                conn.out_cond.notify_all()
            with self._lock:
                listener.connections.discard(conn.sock)
                listener.conns.discard(conn)
                self._connections -= 1
                self._threads.discard(threading.current_thread())
            conn.sock.close()

    def _dispatch(self, conn: ConnectionState, request: Request, cost: int) -> None:
        executor = self._pool if request.opcode in IO_OPS else self._serial
        assert executor is not None
        try:
            executor.submit(self._work, conn, request, cost)
        except RuntimeError:  # shutting down: nobody will answer it
            conn.done(cost)
            raise OSError("the server is stopping") from None

    def _work(self, conn: ConnectionState, request: Request, cost: int) -> None:
        try:
            response = self.handler.handle(request)
        except Exception:  # a bug: answer it rather than leave the client waiting
            LOG.exception("opcode %#x failed unexpectedly", request.opcode)
            response = result_response(request, int(SystemError_.code),
                                       epoch=self.handler.state.epoch)
        self._post(conn, response, cost)

    def _post(self, conn: ConnectionState, response: Response, cost: int) -> None:
        """Queue a reply; start a writer thread if none runs."""
        with conn.out_cond:
            conn.outbox.append((response, cost))
            if conn.writing:
                conn.out_cond.notify()
                return
            conn.writing = True
        writer = threading.Thread(target=self._write_loop, args=(conn,),
                                  name="sheep-conn-send", daemon=True)
        with self._lock:
            self._threads.add(writer)
        writer.start()

    def _write_loop(self, conn: ConnectionState) -> None:
        try:
            while True:
                with conn.out_cond:
                    while not conn.outbox:
                        if conn.finished or not conn.out_cond.wait(_LINGER):
                            if not conn.outbox:
                                conn.writing = False
                                return
                    response, cost = conn.outbox.popleft()
                if not conn.broken:
                    try:
                        self._send(conn, response.encode_header())
                        if response.payload:
                            self._send(conn, response.payload)
                    except OSError:
                        conn.broken = True  # stop reading too: nobody hears our answers
                        conn.closing.set()
                        try:
                            conn.sock.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                del response  # free the payload before the budget says so
                conn.done(cost)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _send(self, conn: ConnectionState, data: bytes) -> None:
        """Send all of ``data``; give up (OSError) when the client takes
        nothing for ``send_timeout`` s, or ``pressure_stall`` s while other
        requests wait for budget."""
        view = memoryview(data)
        stalled_since = time.monotonic()
        while view:
            try:
                sent = conn.sock.send(view)
            except TimeoutError:
                if conn.closing.is_set():
                    raise OSError("the connection is closing") from None
                stalled = time.monotonic() - stalled_since
                if ((self.send_timeout and stalled >= self.send_timeout)
                        or (self.pressure_stall and self.budget.waiting
                            and stalled >= self.pressure_stall)):
                    self._count("stall_closed")
                    LOG.info("closing a connection whose client read nothing for %.1f s",
                             stalled)
                    raise OSError("the client stopped reading") from None
                continue
            view = view[sent:]
            stalled_since = time.monotonic()

    # -- stopping ------------------------------------------------------------

    def stop_listener(self, index: int) -> None:
        """Close one listening socket and every connection it accepted."""
        listener = self.listeners[index]
        with self._lock:
            listener.stopped.set()
        self._advertise()
        if listener.thread is not None:
            listener.thread.join(timeout=5)
        listener.sock.close()
        with self._lock:
            socks = list(listener.connections)
            for conn in listener.conns:
                conn.closing.set()
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def restart_listener(self, index: int) -> None:
        """Listen again on a listener's port after ``stop_listener``."""
        old = self.listeners[index]
        if not old.stopped.is_set():
            raise RuntimeError(f"listener {index} is still running")
        listener = self._bind(old.address[1])
        self.listeners[index] = listener
        thread = threading.Thread(target=self._accept_loop, args=(listener,),
                                  name=f"sheep-accept-{index}", daemon=True)
        listener.thread = thread
        thread.start()
        self._advertise()

    def stop(self) -> None:
        for index in range(len(self.listeners)):
            self.stop_listener(index)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=5)
        for executor in (self._pool, self._serial):
            if executor is not None:
                executor.shutdown(wait=True)
        self._pool = self._serial = None
        with self._lock:  # writers started by the last replies
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=5)
