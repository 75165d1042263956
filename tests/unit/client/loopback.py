"""Loopback TCP helpers for client tests: a scripted Sheepdog peer and a fault proxy.

ScriptedPeer: accepts connections on 127.0.0.1 and hands every decoded request
to ``handler(request, conn)``; the handler answers with ``conn.reply()`` or
``conn.send_raw()`` whenever it likes (out of order, never, garbage).

FaultProxy: sits between a client and a real server and, per request, lets a
``rule(request, n)`` decide: "pass", "lose_reply" (forward the request, then cut
the client connection instead of delivering its answer), "cut_before" (cut
without forwarding) or ("delay", seconds) before forwarding.

Both bind 127.0.0.1, use daemon threads and are stopped by the test that
started them (``stop()`` closes every socket and joins every thread).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from sheepdog_backend.protocol.framing import RequestReader, ResponseReader
from sheepdog_backend.protocol.header import Request, Response
from tests.proxybase import LoopbackProxy, cut


class PeerConn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.requests: list[Request] = []
        self._lock = threading.Lock()

    def reply(self, response: Response) -> None:
        self.send_raw(response.encode())

    def send_raw(self, data: bytes) -> None:
        with self._lock:
            try:
                self.sock.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        cut(self.sock)


Handler = Callable[[Request, PeerConn], None]


class ScriptedPeer:
    def __init__(self, handler: Handler, host: str = "127.0.0.1") -> None:
        self.handler = handler
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(16)
        self.host = host
        self.port = self._listener.getsockname()[1]
        self.conns: list[PeerConn] = []
        self.requests: list[Request] = []
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self.errors: list[BaseException] = []

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def start(self) -> ScriptedPeer:
        t = threading.Thread(target=self._accept_loop, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def _accept_loop(self) -> None:
        while not self._stopping:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            conn = PeerConn(sock)
            self.conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: PeerConn) -> None:
        reader = RequestReader()
        while True:
            try:
                data = conn.sock.recv(1 << 20)
            except OSError:
                return
            if not data:
                return
            reader.feed(data)
            for req in reader:
                conn.requests.append(req)
                self.requests.append(req)
                try:
                    self.handler(req, conn)
                except BaseException as exc:
                    self.errors.append(exc)
                    conn.close()
                    return

    def stop(self) -> None:
        self._stopping = True
        cut(self._listener)  # no new connection, then close every one
        cut(*[conn.sock for conn in list(self.conns)])
        for t in self._threads:
            t.join(5)

    def __enter__(self) -> ScriptedPeer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


Rule = Callable[[Request, int], Any]


class FaultProxy(LoopbackProxy):
    def __init__(self, target: tuple[str, int], rule: Rule | None = None) -> None:
        super().__init__(target)
        self.rule: Rule = rule or (lambda req, n: "pass")
        self.seen = 0  # requests seen (the n passed to the rule)
        self.faults: list[tuple[str, int]] = []  # (action, opcode) applied

    def relay(self, client: socket.socket, upstream: socket.socket) -> None:
        lost: set[int] = set()
        self.spawn(self._upstream_loop, client, upstream, lost)
        self.spawn(self._downstream_loop, client, upstream, lost)

    def _upstream_loop(self, client: socket.socket, upstream: socket.socket,
                       lost: set[int]) -> None:
        reader = RequestReader()
        while True:
            try:
                data = client.recv(1 << 20)
            except OSError:
                return
            if not data:
                cut(upstream)
                return
            reader.feed(data)
            for req in reader:
                with self._lock:
                    n = self.seen
                    self.seen += 1
                action = self.rule(req, n)
                if action == "cut_before":
                    self.faults.append((action, req.opcode))
                    cut(client, upstream)
                    return
                if action == "lose_reply":
                    self.faults.append((action, req.opcode))
                    lost.add(req.id)
                elif isinstance(action, tuple) and action[0] == "delay":
                    self.faults.append(("delay", req.opcode))
                    time.sleep(action[1])
                try:
                    upstream.sendall(req.encode())
                except OSError:
                    cut(client)
                    return

    def _downstream_loop(self, client: socket.socket, upstream: socket.socket,
                         lost: set[int]) -> None:
        reader = ResponseReader()
        while True:
            try:
                data = upstream.recv(1 << 20)
            except OSError:
                cut(client)
                return
            if not data:
                cut(client)
                return
            reader.feed(data)
            for rsp in reader:
                if rsp.id in lost:
                    cut(client, upstream)
                    return
                try:
                    client.sendall(rsp.encode())
                except OSError:
                    cut(upstream)
                    return
