"""Which upstream connection each client connection uses: the relay's pairs.

How it works: a client connection (tgt's, one request at a time) is paired
with an upstream connection to the node the relay uses while it keeps it
busy, so its request ids pass unchanged and no request waits for a free
connection.  ``lend`` gives it an idle upstream, a new one, or, once
``max_upstreams`` exist, the upstream of the client that has been quiet
longest (``quiet``: paired clients with nothing in flight, oldest first);
``give_back`` unpairs a client: its upstream goes idle (at most ``MAX_IDLE``
per node) or is closed.  The relay unpairs a client that went quiet for
``PAIR_IDLE`` s, one that closed, and any while requests wait for an
upstream.  ``forget`` drops an upstream that failed.

Loop thread only: no locks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from sheepdog_backend.client.transport import Address
from sheepdog_backend.engine.conn import Downstream
from sheepdog_backend.gateway.upstream import Upstream

MAX_IDLE = 256  # idle upstream connections kept per node
PAIR_IDLE = 2.0  # seconds a quiet client keeps its upstream


class Pairs:
    def __init__(self, max_upstreams: int) -> None:
        self.max_upstreams = max_upstreams
        self._idle: dict[Address, list[Upstream]] = {}
        self._all: set[Upstream] = set()
        # Clients paired with an upstream that has nothing of theirs in flight
        # (oldest first): where an upstream is taken from at max_upstreams.
        self._quiet: dict[Downstream, None] = {}

    def __iter__(self) -> Iterator[Upstream]:
        return iter(list(self._all))

    def stats(self) -> dict[str, int]:
        return {"upstreams": len(self._all),
                "idle_upstreams": sum(len(v) for v in self._idle.values())}

    def can_lend(self, node: Address) -> bool:
        return (len(self._all) < self.max_upstreams or bool(self._idle.get(node))
                or bool(self._quiet))

    def lend(self, conn: Downstream, node: Address,
             connect: Callable[[Address], Upstream]) -> Upstream | None:
        """Pair ``conn`` with an upstream to ``node`` (``connect`` makes a new
        one and may raise OSError); None when every upstream allowed is busy."""
        idle = self._idle.get(node)
        up = None
        while idle:
            candidate = idle.pop()
            if not candidate.closed:
                up = candidate
                break
        if up is None and len(self._all) >= self.max_upstreams and self._quiet:
            owner = next(iter(self._quiet))
            del self._quiet[owner]
            up, owner.peer = owner.peer, None
        if up is None:
            if len(self._all) >= self.max_upstreams:
                return None
            up = connect(node)
            self._all.add(up)
        up.owner = conn
        conn.peer = up
        return up

    def busy(self, conn: Downstream) -> None:
        """``conn`` sends a request on its upstream."""
        if not conn.peer_inflight:
            self._quiet.pop(conn, None)
        conn.peer_inflight += 1

    def quiet(self, conn: Downstream) -> None:
        """``conn``'s last request on its upstream was answered."""
        self._quiet[conn] = None

    def give_back(self, conn: Downstream, node: Address | None) -> None:
        """Unpair ``conn`` (nothing in flight): its upstream goes idle, or is
        closed when enough are idle or it leads elsewhere than ``node``."""
        up = conn.peer
        conn.peer = None
        self._quiet.pop(conn, None)
        if up is None or up.closed:
            return
        up.owner = None
        idle = self._idle.setdefault(up.address, [])
        if up.address != node or len(idle) >= MAX_IDLE or up.out or up.waiting:
            up.close()
            self._all.discard(up)
        else:
            idle.append(up)

    def forget(self, up: Upstream) -> None:
        """``up`` failed: its client (if any) keeps no pair."""
        self._all.discard(up)
        idle = self._idle.get(up.address)
        if idle and up in idle:
            idle.remove(up)
        owner = up.owner
        if owner is not None and owner.peer is up:
            owner.peer = None
            owner.peer_inflight = 0
            self._quiet.pop(owner, None)
        up.owner = None

    def close(self) -> None:
        for up in list(self._all):
            up.close()
        self._all.clear()
        self._idle.clear()
        self._quiet.clear()
