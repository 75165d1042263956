"""The loopback TCP proxy skeleton the test proxies share.

How it works: ``LoopbackProxy(target)`` listens on 127.0.0.1 (a free port);
``start()`` runs an accept thread that, for every client connection, opens one
to ``target`` and hands the pair to the subclass's ``relay(client, upstream)``,
which starts the threads that move (and fault, or record) the bytes with
``spawn``.  A client whose upstream cannot be reached is closed.

Shared state: the lists of sockets and threads, guarded by ``_lock`` (the
accept thread and the relay threads append, ``stop()`` reads).  ``stop()``
closes the listener first (no new connection), then every socket, and joins
every thread with a bound; the context manager calls it.  Subclasses keep
their own per-connection state in the relay threads' arguments.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

P = TypeVar("P", bound="LoopbackProxy")


def cut(*socks: socket.socket) -> None:
    """Shut down and close sockets (on a listener it wakes a blocked accept)."""
    for sock in socks:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()


class LoopbackProxy:
    def __init__(self, target: tuple[str, int], backlog: int = 16) -> None:
        self.target = target
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(backlog)
        self.host = "127.0.0.1"
        self.port: int = self._listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    def relay(self, client: socket.socket, upstream: socket.socket) -> None:
        """Start the threads (``spawn``) that carry one proxied connection."""
        raise NotImplementedError

    def start(self: P) -> P:
        self.spawn(self._accept_loop)
        return self

    def spawn(self, fn: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=fn, args=args, daemon=True)
        thread.start()
        with self._lock:
            self._threads.append(thread)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, 5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            with self._lock:
                self._socks += [client, upstream]
            self.relay(client, upstream)

    def stop(self) -> None:
        self._stopping.set()
        cut(self._listener)
        with self._lock:
            socks, threads = list(self._socks), list(self._threads)
        cut(*socks)
        for thread in threads:
            thread.join(5)

    def __enter__(self: P) -> P:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
