"""Thin TCP loop around the Handler: listeners, one thread per connection.

How it works: each listening address has an accept thread (polling a 0.2 s
timeout so it notices ``stop``); each accepted connection gets a thread that
feeds received bytes into a RequestReader, hands every complete request to the
handler in arrival order and writes the response (header, then payload, under
the connection's send lock).  Clients may pipeline any number of requests;
responses carry the request ids so out-of-order matching works as well, and
connections progress independently.  A malformed frame (a payload above the
cap, a truncated header at EOF) closes that connection only.  Several
listeners share one handler, i.e. one store: a "cluster" whose gateways can
be killed one by one with ``stop_listener``.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Sequence

from sheepdog_backend.exception import ProtocolError
from sheepdog_backend.protocol.framing import RequestReader
from sheepdog_backend.protocol.structs import NodeId
from sheepdog_backend.server.handler import Handler

LOG = logging.getLogger(__name__)
_RECV = 1 << 20


class _Listener:
    def __init__(self, sock: socket.socket, address: tuple[str, int]) -> None:
        self.sock = sock
        self.address = address
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None
        self.connections: set[socket.socket] = set()


class SheepServer:
    def __init__(self, handler: Handler, *, host: str = "127.0.0.1",
                 ports: Sequence[int] = (7000,)) -> None:
        if not ports:
            raise ValueError("at least one port is needed")
        self.handler = handler
        self.host = host
        self.ports = list(ports)
        self.listeners: list[_Listener] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [listener.address for listener in self.listeners]

    def start(self) -> None:
        try:
            for port in self.ports:
                self.listeners.append(self._bind(port))
        except OSError:
            for listener in self.listeners:
                listener.sock.close()
            self.listeners = []
            raise
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
        live = [listener for listener in self.listeners if not listener.stopped.is_set()]
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

    def _accept_loop(self, listener: _Listener) -> None:
        while not listener.stopped.is_set():
            try:
                conn, _peer = listener.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            conn.settimeout(None)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if listener.stopped.is_set():
                    conn.close()
                    break
                listener.connections.add(conn)
                thread = threading.Thread(target=self._serve, args=(listener, conn),
                                          name="sheep-conn", daemon=True)
                self._threads.append(thread)
            thread.start()

    def _serve(self, listener: _Listener, conn: socket.socket) -> None:
        reader = RequestReader(max_payload=self.handler.max_payload)
        try:
            while True:
                data = conn.recv(_RECV)
                if not data:
                    break
                reader.feed(data)
                for request in reader:
                    response = self.handler.handle(request)
                    conn.sendall(response.encode_header())
                    if response.payload:
                        conn.sendall(response.payload)
        except ProtocolError as exc:
            LOG.info("closing a connection after a malformed frame: %s", exc)
        except OSError:
            pass  # peer went away or we are stopping
        finally:
            with self._lock:
                listener.connections.discard(conn)
            conn.close()

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
            conns = list(listener.connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self) -> None:
        for index in range(len(self.listeners)):
            self.stop_listener(index)
        with self._lock:
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(timeout=5)
