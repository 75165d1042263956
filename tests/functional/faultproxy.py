"""A TCP proxy in front of a gateway that injects faults at random (seeded):
drop (cut before forwarding a request), delay, reset (cut after forwarding,
the reply is lost), truncate (forward part of a reply, then cut) and corrupt
(flip bytes of a reply).  Counts every fault it applies.  Loopback only; the
owner stops it (``stop`` closes the listener and every connection)."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections import Counter
from typing import Any

from sheepdog_backend.exception import ProtocolError
from sheepdog_backend.protocol.framing import RequestReader, ResponseReader


def _cut(*socks: socket.socket) -> None:
    for sock in socks:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()


class RandomFaultProxy:
    def __init__(self, target: tuple[str, int], *, seed: int, rates: dict[str, float],
                 max_delay: float = 0.3) -> None:
        self.target = target
        self.rates = dict(rates)
        self.max_delay = max_delay
        self.rng = random.Random(seed)
        self.faults: Counter[str] = Counter()
        self.enabled = True
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.2)
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    def _roll(self, *kinds: str) -> str:
        if not self.enabled:
            return "pass"
        with self._lock:
            x = self.rng.random()
            for kind in kinds:
                x -= self.rates.get(kind, 0.0)
                if x < 0:
                    self.faults[kind] += 1
                    return kind
        return "pass"

    def start(self) -> RandomFaultProxy:
        self._spawn(self._accept_loop)
        return self

    def _spawn(self, fn: Any, *args: Any) -> None:
        thread = threading.Thread(target=fn, args=args, daemon=True)
        thread.start()
        with self._lock:
            self._threads.append(thread)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
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
            self._spawn(self._up, client, upstream)
            self._spawn(self._down, client, upstream)

    def _up(self, client: socket.socket, upstream: socket.socket) -> None:
        reader = RequestReader()
        try:
            while True:
                data = client.recv(1 << 20)
                if not data:
                    _cut(upstream)
                    return
                reader.feed(data)
                for request in reader:
                    action = self._roll("drop", "delay")
                    if action == "drop":
                        _cut(client, upstream)
                        return
                    if action == "delay":
                        time.sleep(self.rng.random() * self.max_delay)
                    upstream.sendall(request.encode())
        except (OSError, ProtocolError):
            _cut(client, upstream)

    def _down(self, client: socket.socket, upstream: socket.socket) -> None:
        reader = ResponseReader()
        try:
            while True:
                data = upstream.recv(1 << 20)
                if not data:
                    _cut(client)
                    return
                reader.feed(data)
                for response in reader:
                    raw = bytearray(response.encode())
                    action = self._roll("reset", "truncate", "corrupt")
                    if action == "reset":
                        _cut(client, upstream)
                        return
                    if action == "truncate":
                        client.sendall(raw[:self.rng.randrange(len(raw))])
                        _cut(client, upstream)
                        return
                    if action == "corrupt":
                        for _ in range(self.rng.randint(1, 4)):
                            pos = self.rng.randrange(len(raw))
                            raw[pos] = self.rng.randrange(256)
                    client.sendall(raw)
        except (OSError, ProtocolError):
            _cut(client, upstream)

    def stop(self) -> None:
        self._stopping.set()
        self._listener.close()
        with self._lock:
            socks, threads = list(self._socks), list(self._threads)
        for sock in socks:
            _cut(sock)
        for thread in threads:
            thread.join(5)

    def __enter__(self) -> RandomFaultProxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
