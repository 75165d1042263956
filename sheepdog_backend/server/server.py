"""Thin TCP loop around the Handler: listeners, connections, a worker pool.

How it works: each listening address has an accept thread (polling a 0.2 s
timeout so it notices ``stop``).  Each accepted connection gets a reader
thread and a writer thread.  The reader feeds received bytes into a
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
puts its response on the connection's outbox; the writer thread sends
responses one by one in completion order, so responses never interleave and
workers never block on a socket.  Clients match responses by id.

Back-pressure: a connection has at most ``max_inflight`` requests (and about
``max_inflight_bytes`` of request/response payload) between being read and
being answered; beyond that the reader stops reading, so one client cannot
exhaust memory or the pool.  A malformed frame (a payload above the cap, a
truncated header at EOF) stops reading on that connection only: requests
already read are still answered, then the connection closes.  At EOF the
same happens (a client may half-close and still read its answers).
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
import queue
import socket
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from sheepdog_backend.exception import ProtocolError, SystemError_
from sheepdog_backend.protocol.constants import Opcode
from sheepdog_backend.protocol.framing import RequestReader
from sheepdog_backend.protocol.header import Request, Response, response_body_class
from sheepdog_backend.protocol.structs import NodeId
from sheepdog_backend.server.handler import Handler

LOG = logging.getLogger(__name__)
_RECV = 1 << 20

IO_OPS = frozenset({
    Opcode.CREATE_AND_WRITE_OBJ, Opcode.READ_OBJ, Opcode.WRITE_OBJ, Opcode.REMOVE_OBJ,
    Opcode.DISCARD_OBJ, Opcode.EXIST,
})
DEFAULT_WORKERS = 8
DEFAULT_MAX_INFLIGHT = 16
DEFAULT_MAX_INFLIGHT_BYTES = 64 << 20


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


class _Connection:
    """One accepted socket: its outbox and its in-flight accounting."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.outbox: queue.SimpleQueue[tuple[Response, int] | None] = queue.SimpleQueue()
        self.cond = threading.Condition()
        self.inflight = 0
        self.inflight_bytes = 0

    def admit(self, cost: int, max_count: int, max_bytes: int) -> None:
        """Wait until the request fits the limits (one always fits), then count it."""
        with self.cond:
            while self.inflight and (self.inflight >= max_count
                                     or self.inflight_bytes + cost > max_bytes):
                self.cond.wait()
            self.inflight += 1
            self.inflight_bytes += cost

    def done(self, cost: int) -> None:
        with self.cond:
            self.inflight -= 1
            self.inflight_bytes -= cost
            self.cond.notify_all()

    def drain(self) -> None:
        """Wait until every admitted request has been answered (or dropped)."""
        with self.cond:
            while self.inflight:
                self.cond.wait()


def _cost(request: Request) -> int:
    """Bytes a request holds while in flight: its payload or its reply's."""
    return max(len(request.payload), request.data_length)


class SheepServer:
    def __init__(self, handler: Handler | RequestHandler, *, host: str = "127.0.0.1",
                 ports: Sequence[int] = (7000,), workers: int = DEFAULT_WORKERS,
                 max_inflight: int = DEFAULT_MAX_INFLIGHT,
                 max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
                 unix_paths: Sequence[str] = ()) -> None:
        if not ports and not unix_paths:
            raise ValueError("at least one port is needed")
        if workers < 1 or max_inflight < 1 or max_inflight_bytes < 1:
            raise ValueError("workers and in-flight limits must be positive")
        self.handler = handler
        self.host = host
        self.ports = list(ports)
        self.unix_paths = list(unix_paths)
        self.workers = workers
        self.max_inflight = max_inflight
        self.max_inflight_bytes = max_inflight_bytes
        self.listeners: list[_Listener] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
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
            sock.settimeout(None)
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(sock)
            with self._lock:
                if listener.stopped.is_set():
                    sock.close()
                    break
                listener.connections.add(sock)
                writer = threading.Thread(target=self._write_loop, args=(conn,),
                                          name="sheep-conn-send", daemon=True)
                reader = threading.Thread(target=self._serve, args=(listener, conn, writer),
                                          name="sheep-conn", daemon=True)
                self._threads += [reader, writer]
            writer.start()
            reader.start()

    # -- one connection ------------------------------------------------------

    def _serve(self, listener: _Listener, conn: _Connection,
               writer: threading.Thread) -> None:
        reader = RequestReader(max_payload=self.handler.max_payload)
        try:
            while True:
                data = conn.sock.recv(_RECV)
                if not data:
                    break
                reader.feed(data)
                for request in reader:
                    self._dispatch(conn, request)
        except ProtocolError as exc:
            LOG.info("closing a connection after a malformed frame: %s", exc)
        except OSError:
            pass  # peer went away or we are stopping
        finally:
            conn.drain()
            conn.outbox.put(None)
            writer.join()
            with self._lock:
                listener.connections.discard(conn.sock)
            conn.sock.close()

    def _dispatch(self, conn: _Connection, request: Request) -> None:
        cost = _cost(request)
        conn.admit(cost, self.max_inflight, self.max_inflight_bytes)
        executor = self._pool if request.opcode in IO_OPS else self._serial
        assert executor is not None
        try:
            executor.submit(self._work, conn, request, cost)
        except RuntimeError:  # shutting down: nobody will answer it
            conn.done(cost)
            raise OSError("the server is stopping") from None

    def _work(self, conn: _Connection, request: Request, cost: int) -> None:
        try:
            response = self.handler.handle(request)
        except Exception:  # a bug: answer it rather than leave the client waiting
            LOG.exception("opcode %#x failed unexpectedly", request.opcode)
            response = Response(opcode=request.opcode, result=int(SystemError_.code),
                                body=response_body_class(request.opcode)(), id=request.id,
                                epoch=self.handler.state.epoch)
        conn.outbox.put((response, cost))

    def _write_loop(self, conn: _Connection) -> None:
        broken = False
        while True:
            item = conn.outbox.get()
            if item is None:
                return
            response, cost = item
            if not broken:
                try:
                    conn.sock.sendall(response.encode_header())
                    if response.payload:
                        conn.sock.sendall(response.payload)
                except OSError:
                    broken = True  # stop reading too: nobody hears our answers
                    try:
                        conn.sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
            conn.done(cost)

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
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self) -> None:
        for index in range(len(self.listeners)):
            self.stop_listener(index)
        with self._lock:
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(timeout=5)
        for executor in (self._pool, self._serial):
            if executor is not None:
                executor.shutdown(wait=True)
        self._pool = self._serial = None
