"""The set of gateways a client may talk to, with per-gateway health.

How it works: any sheep node serves any request, so every gateway is as good
as another while it is healthy.  Each gateway has a pool and a health record
(consecutive failures, ``dead_until``).  ``run(fn)`` tries gateways healthiest
first: healthy ones by fewest failures (then configuration order), then the
ones marked dead, soonest-to-recover first, so an outage of every gateway is
still retried instead of refused.  A gateway that cannot be connected to is
marked dead and the next one is tried at once (nothing was sent, so this is
always safe).  A failure after the request was sent (outcome unknown), a
protocol error, or a node-state refusal (SHUTDOWN, KILLED, STARTUP) marks the
gateway and is raised to the retry layer, which knows whether the operation
may be repeated.  ``add_gateways()`` takes the addresses GET_NODE_LIST reports
(``SheepdogClient.discover_gateways``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sheepdog_backend.client.identity import ClusterIdentity
from sheepdog_backend.client.pool import ConnectionPool
from sheepdog_backend.client.transport import (
    Address,
    Connection,
    mark,
    parse_address,
    request_was_sent,
)
from sheepdog_backend.exception import (
    InvalidInput,
    Killed,
    NoGatewayAvailable,
    ProtocolError,
    Shutdown,
    Startup,
    TransportError,
)

T = TypeVar("T")
_NODE_STATE_ERRORS = (Shutdown, Killed, Startup)


@dataclass
class GatewayHealth:
    address: Address
    order: int
    failures: int = 0
    dead_until: float = 0.0
    successes: int = 0
    last_error: str = ""


class Cluster:
    def __init__(self, gateways: Sequence[str | Address], *, connect_timeout: float = 5.0,
                 request_timeout: float = 30.0, pool_size: int = 4,
                 dead_base: float = 1.0, dead_max: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if isinstance(gateways, str):
            gateways = [gateways]
        if not gateways:
            raise InvalidInput("at least one gateway address is needed")
        if connect_timeout <= 0 or request_timeout <= 0:
            raise InvalidInput("timeouts must be positive")
        if pool_size < 1:
            raise InvalidInput(f"pool_size must be at least 1, got {pool_size}")
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.pool_size = pool_size
        self.dead_base = dead_base
        self.dead_max = dead_max
        self._clock = clock
        self._lock = threading.Lock()
        self._health: dict[Address, GatewayHealth] = {}
        self._pools: dict[Address, ConnectionPool] = {}
        self.identity = ClusterIdentity()  # client/identity.py
        parsed = [g if isinstance(g, Address) else parse_address(g) for g in gateways]
        for address in parsed:
            self.add_gateway(address)

    # -- membership ----------------------------------------------------------

    def add_gateway(self, address: Address | str) -> bool:
        addr = address if isinstance(address, Address) else parse_address(address)
        with self._lock:
            if addr in self._health:
                return False
            self._health[addr] = GatewayHealth(addr, len(self._health))
            self._pools[addr] = ConnectionPool(
                addr, connect_timeout=self.connect_timeout,
                request_timeout=self.request_timeout, max_idle=self.pool_size)
            return True

    def add_gateways(self, addresses: Iterable[Address | str]) -> list[Address]:
        added = []
        for address in addresses:
            addr = address if isinstance(address, Address) else parse_address(address)
            if self.add_gateway(addr):
                added.append(addr)
        return added

    @property
    def addresses(self) -> list[Address]:
        with self._lock:
            return list(self._health)

    def pool(self, address: Address) -> ConnectionPool:
        with self._lock:
            return self._pools[address]

    # -- health ----------------------------------------------------------------

    def ordered(self) -> list[GatewayHealth]:
        """Gateways, healthiest first."""
        now = self._clock()
        with self._lock:
            records = [GatewayHealth(**vars(h)) for h in self._health.values()]
        alive = sorted((h for h in records if h.dead_until <= now),
                       key=lambda h: (h.failures, h.order))
        dead = sorted((h for h in records if h.dead_until > now),
                      key=lambda h: (h.dead_until, h.order))
        return alive + dead

    def mark_failed(self, address: Address, error: BaseException) -> None:
        with self._lock:
            h = self._health.get(address)
            if h is None:
                return
            h.failures += 1
            backoff = min(self.dead_max, self.dead_base * 2 ** (h.failures - 1))
            h.dead_until = self._clock() + backoff
            h.last_error = f"{type(error).__name__}: {error}"

    def mark_ok(self, address: Address) -> None:
        with self._lock:
            h = self._health.get(address)
            if h is not None:
                h.failures = 0
                h.dead_until = 0.0
                h.successes += 1

    def health(self, address: Address) -> GatewayHealth:
        with self._lock:
            return GatewayHealth(**vars(self._health[address]))

    # -- running requests ----------------------------------------------------

    def run_on(self, address: Address, fn: Callable[[Connection], T], *,
               deadline: float | None = None) -> T:
        """Run ``fn`` on a connection to one gateway, recording the outcome.
        ``deadline`` (monotonic) bounds every send and wait of ``fn``."""
        pool = self.pool(address)
        try:
            with pool.connection() as conn:
                self.identity.verify(conn, several=len(self._health) > 1)  # identity.py
                conn.call_deadline = deadline
                try:
                    result = fn(conn)
                finally:
                    conn.call_deadline = None
        except (TransportError, ProtocolError, *_NODE_STATE_ERRORS) as exc:
            self.mark_failed(address, exc)
            raise
        self.mark_ok(address)
        return result

    def run(self, fn: Callable[[Connection], T], *, deadline: float | None = None) -> T:
        """Run ``fn`` on the healthiest gateway that accepts a connection."""
        errors: list[str] = []
        for h in self.ordered():
            try:
                return self.run_on(h.address, fn, deadline=deadline)
            except TransportError as exc:
                if request_was_sent(exc):
                    raise
                errors.append(f"{h.address}: {exc}")
        raise mark(NoGatewayAvailable("no gateway accepted a connection: "
                                      + "; ".join(errors)), False)

    def close(self) -> None:
        with self._lock:
            pools = list(self._pools.values())
        for pool in pools:
            pool.close()
