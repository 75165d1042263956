"""A TCP proxy in front of a gateway that injects faults at random (seeded):
drop (cut before forwarding a request), delay, reset (cut after forwarding,
the reply is lost), truncate (forward part of a reply, then cut) and corrupt
(flip bytes of a reply).  Counts every fault it applies.  Loopback only; the
owner stops it (``stop`` closes the listener and every connection)."""

from __future__ import annotations

import random
import socket
import time
from collections import Counter

from sheepdog_backend.exception import ProtocolError
from sheepdog_backend.protocol.framing import RequestReader, ResponseReader
from tests.proxybase import LoopbackProxy, cut


class RandomFaultProxy(LoopbackProxy):
    def __init__(self, target: tuple[str, int], *, seed: int, rates: dict[str, float],
                 max_delay: float = 0.3) -> None:
        super().__init__(target, backlog=64)
        self.rates = dict(rates)
        self.max_delay = max_delay
        self.rng = random.Random(seed)
        self.faults: Counter[str] = Counter()
        self.enabled = True

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

    def relay(self, client: socket.socket, upstream: socket.socket) -> None:
        self.spawn(self._up, client, upstream)
        self.spawn(self._down, client, upstream)

    def _up(self, client: socket.socket, upstream: socket.socket) -> None:
        reader = RequestReader()
        try:
            while True:
                data = client.recv(1 << 20)
                if not data:
                    cut(upstream)
                    return
                reader.feed(data)
                for request in reader:
                    action = self._roll("drop", "delay")
                    if action == "drop":
                        cut(client, upstream)
                        return
                    if action == "delay":
                        time.sleep(self.rng.random() * self.max_delay)
                    upstream.sendall(request.encode())
        except (OSError, ProtocolError):
            cut(client, upstream)

    def _down(self, client: socket.socket, upstream: socket.socket) -> None:
        reader = ResponseReader()
        try:
            while True:
                data = upstream.recv(1 << 20)
                if not data:
                    cut(client)
                    return
                reader.feed(data)
                for response in reader:
                    raw = bytearray(response.encode())
                    action = self._roll("reset", "truncate", "corrupt")
                    if action == "reset":
                        cut(client, upstream)
                        return
                    if action == "truncate":
                        client.sendall(raw[:self.rng.randrange(len(raw))])
                        cut(client, upstream)
                        return
                    if action == "corrupt":
                        for _ in range(self.rng.randint(1, 4)):
                            pos = self.rng.randrange(len(raw))
                            raw[pos] = self.rng.randrange(256)
                    client.sendall(raw)
        except (OSError, ProtocolError):
            cut(client, upstream)
