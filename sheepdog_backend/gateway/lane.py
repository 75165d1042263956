"""The compiled lane's Python side: which pairs it takes, and what comes back.

How it works: after an object read or write of a data object was answered on
the loop, the relay offers the pair (the client connection and its upstream)
to the lane (``offer``).  A pair is lent only when nothing of it is in
flight or buffered on either side and nothing needs the gateway's judgment:
the lane runs, no request trace is kept, and ``_lane.c``'s thread relays the
pair's requests from then on without Python, one at a time, until something
needs judgment.  Both connections then leave the lane's epoll and come back
here (``on_event``, woken by the lane's eventfd on the loop): they are
registered on the loop again and what the lane hands back takes the usual
path, exactly as if the loop had received it:

* bytes of the client not framed yet are framed (``Downstream.feed``);
* an answer that needs judgment (a result, a new epoch, a write while the
  lane is paused) goes to ``Relay.answer`` with its request;
* a request in flight on a node connection that failed goes to
  ``Upstream.fail`` (the Forwarder sends it again, on another node), unless
  part of its answer already reached the client: that client's connection
  closes, as on the loop;
* an answer the client stopped reading is queued on its connection (the
  engine's sweep ends a client that reads nothing).

What must see every request pauses the lane (``pause``: no new request;
every pair comes back at its next boundary, and a write answered meanwhile
comes back with its answer): a recovery window of the replay (replay.py's
``on_open``, which also waits for the lane's writes in flight before a
replay), a snapshot (snapshots.py's ``on_snapshot``), and a VDI found
exported by two hosts, whose reads are checked (views.py's ``on_shared``).
``tick`` resumes the lane once none of them holds, and moves the lane's
per-VDI counters into IoStats.

Loop thread only, apart from ``pause`` (any thread: the lane's flag is an
atomic) and ``counts``; the lane's own state is guarded in C (_lane.c).
"""

from __future__ import annotations

import itertools
import logging
from typing import Protocol

from sheepdog_backend.engine.conn import Downstream, Frame
from sheepdog_backend.engine.loop import IN, EventLoop
from sheepdog_backend.gateway import _lane
from sheepdog_backend.gateway.pairing import PAIR_IDLE
from sheepdog_backend.gateway.replay import RecoveryReplay
from sheepdog_backend.gateway.snapshots import SnapshotGuard
from sheepdog_backend.gateway.stats import IoStats
from sheepdog_backend.gateway.upstream import Pending, Upstream
from sheepdog_backend.gateway.views import LuViews
from sheepdog_backend.protocol.constants import Opcode
from sheepdog_backend.protocol.peek import RESPONSE_HEAD, object_target

LOG = logging.getLogger(__name__)
STALL = 5.0  # seconds an answer may wait for its client in the lane before it comes back
_WRITE = int(Opcode.WRITE_OBJ)


def pipe_fds(budget: int) -> int:
    """Descriptors the lane's pipes may hold at once with ``budget``: a pipe
    per answer of STREAM_FROM bytes or more in flight (each is charged its
    length), and the pool's."""
    return 2 * (budget // _lane.STREAM_FROM + _lane.PIPE_POOL) if budget > 0 else 0


class Relaying(Protocol):
    """What the lane's Python side needs of the relay."""

    loop: EventLoop

    def answer(self, up: Upstream, pending: Pending, header: memoryview, payload: memoryview,
               result: int, epoch: int, owned: bool) -> None: ...

    def returned(self, conn: Downstream) -> None:
        """``conn``'s pair is back from the lane with nothing in flight."""
        ...


class LaneLink:
    def __init__(self, relay: Relaying, io: IoStats, replay: RecoveryReplay,
                 guard: SnapshotGuard, views: LuViews, *, max_payload: int, budget: int,
                 request_timeout: float) -> None:
        self.relay = relay
        self.io = io
        self.replay = replay
        self.guard = guard
        self.views = views
        self.lane = _lane.Lane(max_payload, budget, PAIR_IDLE, request_timeout, STALL)
        self._lent: dict[int, tuple[Downstream, Upstream]] = {}
        self._tokens = itertools.count(1)
        self._loop: EventLoop | None = None
        self.relayed = 0  # requests the lane relayed (moved in by ``tick``)

    def attach(self, loop: EventLoop, tick: float) -> None:
        """On ``loop``: the hand-backs, a ``tick`` every so often, and the
        replay's, the guard's and the views' calls that pause the lane."""
        self._loop = loop
        loop.add(self.lane.fileno(), IN, self)
        loop.every(tick, self.tick)
        self.replay.on_open = self.pause  # the replay must see every write
        self.replay.outside_writes = self.inflight_writes
        self.guard.on_snapshot = self.pause
        self.views.on_shared = self.pause  # a shared VDI's reads are checked

    def holds(self) -> bool:
        """Whether something must see every request now (the lane stays paused)."""
        return bool(self.views.shared) or self.replay.window_open or self.guard.busy()

    # -- lending -----------------------------------------------------------------

    def can_take(self, conn: Downstream, up: Upstream) -> bool:
        """Whether the pair may be lent now: the lane relays, both are quiet."""
        return not self.lane.paused and conn.quiet and up.quiet and conn.peer is up

    def take(self, conn: Downstream, up: Upstream) -> None:
        """Lend the pair (loop thread; ``can_take`` first, and the relay
        counts the pair in flight until it comes back)."""
        token = next(self._tokens)
        conn.lend()
        up.lend()
        self._lent[token] = (conn, up)
        self.lane.adopt(token, conn.fd, up.fd)

    def set_epoch(self, epoch: int) -> None:
        self.lane.set_epoch(epoch)

    def pause(self) -> None:
        """Any thread: relay nothing new; the pairs come back."""
        self.lane.pause()

    def recall(self) -> None:
        """The pairs waiting for their client's next request come back (their
        upstreams are wanted); the lane goes on relaying."""
        self.lane.recall()

    def inflight_writes(self) -> int:
        return self.lane.inflight_writes()

    # -- what comes back (loop thread) ---------------------------------------------

    def on_event(self, mask: int) -> None:
        for token, reason, request, answer, rest, broken, message in self.lane.handbacks():
            lent = self._lent.pop(token, None)
            if lent is None:  # cannot happen: every token handed back was lent
                LOG.error("gateway: the lane handed back an unknown pair %d", token)
                continue
            conn, up = lent
            conn.peer_inflight -= 1
            conn.take_back()
            if reason == _lane.UPSTREAM:
                self._upstream_failed(conn, up, request, broken, message)
                if rest and not conn.closed:
                    conn.feed(rest)
                continue
            up.take_back()
            if reason == _lane.CLOSED:
                conn.close()
                continue
            if rest:  # a client that sent on before its answer: framed as received
                conn.feed(rest)
            if reason == _lane.ANSWER:
                self._judge(conn, up, request, answer)
            elif reason == _lane.STALLED:
                frame = conn.admit_again(request)
                conn.send(answer, b"", frame.cost, False)
            if not conn.peer_inflight and conn.peer is up and not conn.closed:
                self.relay.returned(conn)

    def on_error(self, exc: BaseException) -> None:
        LOG.error("gateway: the lane's hand-back failed: %s", exc)

    def _pending(self, conn: Downstream, frame: Frame, kept: bool) -> Pending:
        """A request the lane relayed, in flight again for the relay."""
        oid, _cow, offset = object_target(frame.header)
        conn.peer_inflight += 1
        return Pending(conn, frame, None, kept, self.relay.loop.now, oid, offset)

    def _judge(self, conn: Downstream, up: Upstream, request: bytes, answer: bytes) -> None:
        """An answer the lane did not pass on: the relay's judgment, as on the loop."""
        frame = conn.admit_again(request)
        # a write answered while paused: the replay keeps it (settled by answer)
        kept = frame.opcode == _WRITE and bool(self.replay.budget) and self.replay.admit_nowait()
        pending = self._pending(conn, frame, kept)
        _, _, _, epoch, _, _, result = RESPONSE_HEAD.unpack_from(answer)
        view = memoryview(answer)
        self.relay.answer(up, pending, view[:48], view[48:], result, epoch, False)

    def _upstream_failed(self, conn: Downstream, up: Upstream, request: bytes, broken: bool,
                         message: str) -> None:
        if request:
            if broken:  # part of its answer reached the client: its connection goes
                conn.close()
            else:  # waiting on ``up``: its failure sends it to the failover path
                frame = conn.admit_again(request)
                up.waiting[frame.id] = self._pending(conn, frame, False)
        up.fail(message)

    # -- the loop's tick ---------------------------------------------------------------

    def tick(self) -> None:
        """Resume once nothing needs every write; counters into IoStats."""
        if self.lane.paused and not self.holds():
            self.lane.resume()
        self.drain_counters()

    def drain_counters(self) -> None:
        for vid, reads, writes, read_bytes, write_bytes, busy, longest in \
                self.lane.take_stats():
            self.io.count_relayed(vid, reads, writes, read_bytes, write_bytes, busy, longest)
            self.relayed += reads + writes

    def counts(self) -> dict[str, int]:
        """The lane's counters for the gateway's stats (its per-VDI counters
        are moved into IoStats first)."""
        self.drain_counters()
        counts = self.lane.counts()
        handed, pairs, relayed = counts["handed_back"], counts["pairs"], counts["relayed"]
        assert isinstance(handed, dict) and isinstance(pairs, int) and isinstance(relayed, int)
        return {"lane_pairs": pairs, "lane_requests": relayed,
                "lane_paused": int(self.lane.paused),
                **{f"lane_returns_{k}": v for k, v in handed.items()}}

    def close(self) -> None:
        """Stop the lane's thread (loop thread); lent connections stay lent and
        are closed by their owners."""
        if self._loop is not None:
            self._loop.remove(self.lane.fileno())
        self.replay.on_open = self.guard.on_snapshot = self.views.on_shared = None
        self.replay.outside_writes = lambda: 0
        self.lane.close()
        self._lent.clear()
