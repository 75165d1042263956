"""The gateway's data path on the event loop: object I/O relayed to a node.

How it works: the wire engine (sheepdog_backend.engine) hands every complete
client request to ``Relay.on_request`` on its loop thread.  Object I/O (the
``FAST_OPS``, all safe to repeat) goes out at once on an upstream connection
(upstream.py) paired with the client connection while it has requests in
flight there: the header and payload as received, no id rewritten, no
thread hand-off.  ``answer`` checks the node's answer in place and sends it
straight back, from the loop's receive buffer when it fits there.  So an
object read or write costs two receives and two sends, each a system call,
and copies nothing the kernel does not.

What the snapshot guard and the recovery replay need is looked at only when
they may act: a data write asks whether its VDI was just snapshotted (no
lock until a snapshot was seen), an inode slot write carries a ticket; a
write is kept by the replay only while a recovery window is open.

Everything else takes the blocking path (``slow``: the gateway's ``handle``
on a worker thread; engine.workers): VDI and cluster ops, in arrival order on
the serial worker; data creates (the snapshot guard may hold them, and
coherence.py checks first that they replace no object); writes while a
replay runs; and, on the pool, any relayed request that needs the
Forwarder's judgment: its connection failed (every fast op is safe to
repeat, on another node), the node answered a node-state refusal or a
transient result, or NO_OBJ while the cluster may be recovering.  An
answered inode slot write is answered from the pool once it is re-applied
(if it landed on a frozen VDI) and the inode stamped (views.py); a read by
the LU of a VDI two hosts export is checked there first (views.py); the
lookups and locks of VDIs tell views.py which VDI a connection's LU reads.

Once a pair is quiet after a data read or write, the compiled lane (lane.py)
relays its steady-state I/O in a thread of its own and hands back to
``answer`` (and the rest of this module) what needs judgment.

The node the fast path uses, and whether through its unix socket, is
nodes.py's: the healthiest of the client's Cluster once its identity was
checked; a node that fails is marked in the Cluster and the next healthiest
is taken.  Which upstream a client uses is pairing.py's; when all
``max_upstreams`` are busy, requests wait in order for one.  The sweep
unpairs clients quiet for a while and fails upstreams that do not connect
within ``connect_timeout`` or answer within ``request_timeout``.

Runs on the loop thread, apart from what the workers run; the guard, the
replay, the stats and the Cluster have their own locks.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping

from sheepdog_backend.client.cluster import Cluster
from sheepdog_backend.client.transport import Address
from sheepdog_backend.engine.conn import Downstream, Frame
from sheepdog_backend.engine.loop import EventLoop
from sheepdog_backend.engine.workers import IO_OPS, Workers
from sheepdog_backend.exception import (
    TransportError,
    error_for_code,
    registered_codes,
)
from sheepdog_backend.gateway.forward import NODE_STATE_RESULTS, RECOVERY_NO_OBJ_OPS, Forwarder
from sheepdog_backend.gateway.lane import LaneLink
from sheepdog_backend.gateway.nodes import NodeChoice
from sheepdog_backend.gateway.pairing import PAIR_IDLE, Pairs
from sheepdog_backend.gateway.replay import RecoveryReplay
from sheepdog_backend.gateway.snapshots import SnapshotGuard, Ticket, slot_values_at
from sheepdog_backend.gateway.stats import IoStats, RequestTrace, TraceEntry
from sheepdog_backend.gateway.upstream import Pending, Upstream
from sheepdog_backend.gateway.views import RELOAD, LuViews
from sheepdog_backend.protocol.constants import SD_INODE_INDEX_OFFSET, Opcode, Result
from sheepdog_backend.protocol.header import (
    Request,
    Response,
    VdiResponse,
    decode_response_header,
)
from sheepdog_backend.protocol.oid import is_data_obj, is_vdi_obj, oid_to_vid
from sheepdog_backend.protocol.peek import object_target, result_header

LOG = logging.getLogger(__name__)
_READ, _WRITE, _CREATE = (int(Opcode.READ_OBJ), int(Opcode.WRITE_OBJ),
                          int(Opcode.CREATE_AND_WRITE_OBJ))
FAST_OPS = frozenset({_READ, _WRITE, _CREATE, int(Opcode.EXIST), int(Opcode.FLUSH_VDI)})
# Answers the Forwarder retries (on another node, or after a pause).
RETRY_RESULTS = frozenset({int(code) for code in NODE_STATE_RESULTS} | {
    code for code, cls in registered_codes().items() if cls.transient})
_NO_OBJ = int(Result.NO_OBJ)
_READONLY = int(Result.READONLY)
_RECOVERY_OPS = frozenset(int(op) for op in RECOVERY_NO_OBJ_OPS)
_NODE_STATE = frozenset(int(code) for code in NODE_STATE_RESULTS)
_LOOKUPS = frozenset({int(Opcode.LOCK_VDI), int(Opcode.GET_VDI_INFO)})
DEFAULT_MAX_UPSTREAMS = 2048
POLL = 1.0  # seconds between looks at whether the LUs' VDIs are shared
STREAM_FROM = 128 << 10  # read answers from this size on are passed on as they arrive
_INVALIDATED = int(Result.INODE_INVALIDATED)
TICK = 0.5


def _unused() -> Request:  # settle_lazily's builder when nothing is kept
    raise AssertionError("a write that failed is never kept")


def _inode_load(oid: int, offset: int, frame: Frame) -> bool:
    """Whether a READ_OBJ is a LU loading an inode (its whole header, at least)."""
    return is_vdi_obj(oid) and offset == 0 and frame.data_length >= SD_INODE_INDEX_OFFSET


class Relay:
    loop: EventLoop  # the engine's, from attach()

    def __init__(self, *, cluster: Cluster, forwarder: Forwarder, guard: SnapshotGuard,
                 replay: RecoveryReplay, io: IoStats, trace: RequestTrace | None,
                 handle: Callable[[Request], Response], views: LuViews,
                 after_slots: Callable[[Ticket, Request, Response], Response],
                 check_read: Callable[[int, Request], Response], connect_timeout: float,
                 request_timeout: float, max_payload: int,
                 max_upstreams: int = DEFAULT_MAX_UPSTREAMS,
                 node_sockets: Mapping[Address, str] | None = None,
                 lane_budget: int = 0) -> None:
        self.cluster = cluster
        self.forwarder = forwarder
        self.guard = guard
        self.replay = replay
        self.io = io
        self.trace = trace
        self.handle = handle
        self.views = views
        self.after_slots = after_slots  # the guard's after, then the stamp (blocking)
        self.check_read = check_read  # a read of a shared VDI's LU, checked (blocking)
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.max_payload = max_payload
        self.workers: Workers | None = None
        self.nodes = NodeChoice(cluster, connect_timeout=connect_timeout,
                                node_sockets=node_sockets)  # nodes.py: where I/O goes
        self.pairs = Pairs(max_upstreams)  # pairing.py: which upstream each client uses
        # Requests waiting for an upstream while max_upstreams are in use.
        self._queued: deque[tuple[Downstream, Frame]] = deque()
        self._epoch = 0  # the highest epoch the Forwarder was told of
        self.fast = 0  # requests relayed on the loop
        self.slow_count = 0  # requests that took the blocking path
        self.streamed = 0  # answers passed on as they arrived
        # lane.py: the compiled lane relays quiet pairs' data I/O (not while a
        # trace is kept: the lane records no single request)
        self.lane: LaneLink | None = None
        if lane_budget and trace is None:
            self.lane = LaneLink(self, io, replay, guard, views, max_payload=max_payload,
                                 budget=lane_budget, request_timeout=request_timeout)

    # -- wiring (the gateway's start and stop) --------------------------------------

    def attach(self, loop: EventLoop, workers: Workers) -> None:
        self.loop = loop
        self.workers = workers
        self.nodes.attach(loop, workers)
        loop.every(TICK, self._sweep)
        loop.every(POLL, self._poll)
        if self.lane is not None:
            self.lane.attach(loop, TICK)

    def stop_lane(self) -> None:
        """Stop the lane's thread (loop thread; before the connections close)."""
        lane, self.lane = self.lane, None
        if lane is not None:
            lane.close()

    def choose_node(self) -> None:
        """Take the healthiest node and check it (now, blocking: before the
        engine serves); InvalidInput for a node socket of another cluster."""
        self.nodes.choose()

    def close(self) -> None:
        """Close every upstream (loop thread)."""
        self.stop_lane()
        self.pairs.close()

    def stats(self) -> dict[str, int]:
        lane = self.lane
        counts = lane.counts() if lane is not None else {}  # the lane's requests moved in
        return {"fast_requests": self.fast + (lane.relayed if lane is not None else 0),
                "slow_requests": self.slow_count,
                "streamed_answers": self.streamed,
                "socket_upstreams": sum(1 for up in self.pairs if up.path),
                **self.pairs.stats(), **counts}

    # -- requests (loop thread) ------------------------------------------------------------

    def on_request(self, conn: Downstream, frame: Frame) -> None:
        nodes = self.nodes
        node = nodes.fast_node
        if frame.opcode not in FAST_OPS or node is None:
            if nodes.node is not None and frame.opcode in FAST_OPS:
                nodes.verify_soon(nodes.node)
            self.slow(conn, frame)
            return
        up = conn.peer
        if up is not None and up.address is not node and up.address != node \
                and not conn.peer_inflight:
            self._give_back(conn)  # the node changed: pair with one of the new node
            up = None
        if up is None and (self._queued or not self.pairs.can_lend(node)):
            self._queued.append((conn, frame))  # an upstream frees up soon
            if self.lane is not None:
                self.lane.recall()  # the lane's quiet pairs give theirs back
            return
        self._relay(conn, frame, node)

    def _relay(self, conn: Downstream, frame: Frame, node: Address) -> None:
        op = frame.opcode
        ticket: Ticket | None = None
        kept = False
        oid, _cow, offset = object_target(frame.header)
        if op == _WRITE or op == _CREATE:
            if is_data_obj(oid):
                if op == _CREATE:  # coherent creates (coherence.py): a worker checks
                    self.slow(conn, frame)
                    return
                if self.guard.readonly_now(oid_to_vid(oid)):
                    self.guard.count_refused()
                    self._local(conn, frame, _READONLY, oid_to_vid(oid))
                    return
            else:
                slots = slot_values_at(oid, offset, frame.payload)
                if slots is not None:
                    ticket = Ticket("slots", oid_to_vid(oid), first=slots[0], values=slots[1])
            if self.replay.budget:
                if not self.replay.admit_nowait():
                    self.slow(conn, frame)
                    return
                kept = True
        elif op == _READ and self.views.shared and not _inode_load(oid, offset, frame):
            plan = self.views.plan(conn, oid_to_vid(oid))  # views.py: coherent reads
            if plan is not None:
                kind, lu = plan
                if kind == RELOAD:
                    self._local(conn, frame, _INVALIDATED, oid_to_vid(oid))
                else:
                    self._workers().submit(conn, frame, lambda r: self.check_read(lu, r), False)
                return
        up = conn.peer
        if up is None:
            try:
                up = self.pairs.lend(conn, node, self._connect)
            except OSError as exc:
                self.cluster.mark_failed(node, TransportError(f"cannot connect: {exc}"))
                self.nodes.pick()
            if up is None:
                self._unkeep(kept)
                self.slow(conn, frame)
                return
        self.pairs.busy(conn)
        if not up.send(Pending(conn, frame, ticket, kept, self.loop.now, oid, offset)):
            conn.peer_inflight -= 1  # the client reused an id still in flight
            if not conn.peer_inflight and conn.peer is up:
                self.pairs.quiet(conn)
            self._unkeep(kept)
            self.slow(conn, frame)
            return
        self.fast += 1

    def _unkeep(self, kept: bool) -> None:
        if kept:
            self.replay.settle_lazily(_unused, False)

    def _workers(self) -> Workers:
        assert self.workers is not None, "the relay is not attached"
        return self.workers

    def _local(self, conn: Downstream, frame: Frame, result: int, vid: int) -> None:
        """Answer without the cluster (the guard's READONLY, a LU's reload)."""
        self.io.count_op(vid, frame.opcode, False, True, 0, len(frame.payload), 0.0)
        conn.send(result_header(frame.opcode, frame.id, result), b"", frame.cost)

    def slow(self, conn: Downstream, frame: Frame) -> None:
        """The blocking path: the gateway's ``handle`` on a worker (a VDI
        lookup or lock there also tells which VDI the connection's LU reads)."""
        self.slow_count += 1
        serial = frame.opcode not in IO_OPS
        handle = self.handle
        if frame.opcode in _LOOKUPS:
            def handle(request: Request) -> Response:
                response = self.handle(request)
                if response.ok and isinstance(response.body, VdiResponse):
                    self.views.locked(conn, response.body.vdi_id)
                return response
        self._workers().submit(conn, frame, handle, serial)

    # -- upstream connections ----------------------------------------------------------------

    def _dequeue(self) -> None:
        """Requests that waited for an upstream, now that one is free."""
        queued = self._queued
        nodes = self.nodes
        while queued and (nodes.fast_node is None or self.pairs.can_lend(nodes.fast_node)):
            conn, frame = queued.popleft()
            if conn.closed:
                conn.send(b"", b"", frame.cost)  # gives its cost back
            elif nodes.fast_node is None:
                self.slow(conn, frame)
            else:
                self._relay(conn, frame, nodes.fast_node)

    def _connect(self, node: Address) -> Upstream:
        return Upstream(self, node, time.monotonic(), self.nodes.socket_for(node))

    def _give_back(self, conn: Downstream) -> None:
        self.pairs.give_back(conn, self.nodes.node)
        if self._queued:
            self._dequeue()

    def on_close(self, conn: Downstream) -> None:
        if conn.peer is not None and not conn.peer_inflight:
            self._give_back(conn)
        self.views.closed(conn)

    # -- answers and failures (loop thread, from upstream.py) -----------------------------------

    def _answered(self, up: Upstream, conn: Downstream, epoch: int) -> None:
        """A request of ``conn`` on ``up`` is answered (whole)."""
        conn.peer_inflight -= 1
        if not conn.peer_inflight and conn.peer is up:
            if self._queued or conn.closed:
                self._give_back(conn)  # others wait for an upstream (or its client left)
            else:
                self.pairs.quiet(conn)
        self._note_epoch(epoch)

    def _note_epoch(self, epoch: int) -> None:
        if epoch > self._epoch:
            self._epoch = epoch
            self.forwarder.note_epoch(epoch)
            if self.lane is not None:
                self.lane.set_epoch(epoch)

    # -- the lane's pairs (lane.py) ---------------------------------------------------------

    def _lend(self, up: Upstream, conn: Downstream, pending: Pending) -> None:
        """After a data read or write was answered: the pair to the lane, if quiet."""
        lane = self.lane
        op = pending.frame.opcode
        if lane is not None and (op == _READ or op == _WRITE) and is_data_obj(pending.oid) \
                and not self.views.shared and not self._queued and lane.can_take(conn, up):
            self.pairs.busy(conn)  # in flight for the sweep and the pairing while lent
            lane.take(conn, up)

    def returned(self, conn: Downstream) -> None:
        """``conn``'s pair is back from the lane with nothing in flight."""
        if self._queued or conn.closed:
            self._give_back(conn)
        else:
            self.pairs.quiet(conn)

    def answer(self, up: Upstream, pending: Pending, header: memoryview, payload: memoryview,
               result: int, epoch: int, owned: bool) -> None:
        conn, frame = pending.conn, pending.frame
        op = frame.opcode
        if result and (result in RETRY_RESULTS or (
                result == _NO_OBJ and op in _RECOVERY_OPS
                and self.forwarder.may_be_recovering())):
            self._answered(up, conn, epoch)
            if result == _NO_OBJ:
                self.forwarder.count_recovery_retry()
            elif result in _NODE_STATE:
                self.cluster.mark_failed(up.address, error_for_code(result))
                if up.address == self.nodes.node:
                    self.nodes.pick()
            self._unkeep(pending.kept)
            self.slow(conn, frame)
            return
        ok = not result
        ticket = pending.ticket
        if ticket is not None:
            if ok and ticket.kind == "slots":  # re-applied if need be, then stamped
                self._answered(up, conn, epoch)
                self._after_slots_then_send(pending, bytes(header), bytes(payload))
                return
            self.guard.after_answer(ticket, ok)
        elif ok and op == _READ and _inode_load(pending.oid, pending.offset, frame):
            self.views.loaded(conn, oid_to_vid(pending.oid), payload[:SD_INODE_INDEX_OFFSET])
        # The answer goes out first: the bookkeeping below is not the client's
        # wait (single thread: nothing of this client runs in between).
        read = len(payload)
        sent = conn.send(header, payload, frame.cost, owned)
        if owned and sent:
            self.loop.buffers.put(payload)  # the answer's, lent by the upstream
        self._answered(up, conn, epoch)
        if pending.kept:
            self.replay.settle_lazily(frame.request, ok)
        self._account(pending, result, read, self.loop.now)
        frame.give_back(self.loop)  # the request's payload is not needed any more
        if ok:
            self._lend(up, conn, pending)

    # -- answers passed on as they arrive (large reads) ---------------------------------------

    def stream_begin(self, up: Upstream, pending: Pending, header: memoryview,
                     chunk: memoryview, length: int, epoch: int) -> bool:
        """Pass a successful read's answer on as it arrives, when it is large
        and its client has nothing else on its way out; False: buffer it."""
        conn, frame = pending.conn, pending.frame
        if frame.opcode != _READ or length < STREAM_FROM or conn.closed or conn.out \
                or conn.streaming:
            return False
        if _inode_load(pending.oid, pending.offset, frame):
            if len(chunk) < SD_INODE_INDEX_OFFSET:
                return False
            self.views.loaded(conn, oid_to_vid(pending.oid), chunk[:SD_INODE_INDEX_OFFSET])
        self._note_epoch(epoch)
        self.streamed += 1
        conn.stream_start(header, chunk)
        return True

    def stream_more(self, up: Upstream, pending: Pending, chunk: memoryview,
                    done: bool) -> None:
        conn = pending.conn
        conn.stream_more(chunk)
        if done:
            self._account(pending, 0, pending.frame.data_length, self.loop.now)
            conn.stream_end(pending.frame.cost)
            self._answered(up, conn, 0)
            self._lend(up, conn, pending)

    def stream_broken(self, pending: Pending) -> None:
        """The node failed while its answer was streaming: the client has part
        of a frame, so its connection goes (tgt reconnects and asks again)."""
        pending.conn.close()
        pending.conn.stream_end(pending.frame.cost)  # closed: gives the cost back

    def _account(self, pending: Pending, result: int, read: int, end: float) -> None:
        frame, oid, start = pending.frame, pending.oid, pending.start
        self.io.count_op(oid_to_vid(oid), frame.opcode, not result, is_data_obj(oid), read,
                         len(frame.payload), end - start)
        if self.trace is not None:
            self.trace.add(TraceEntry(start, end, frame.opcode, oid, pending.offset,
                                      frame.data_length, result, 0.0))

    def _after_slots_then_send(self, pending: Pending, header: bytes, payload: bytes) -> None:
        """An answered slot write: re-apply it if it landed on a frozen VDI,
        stamp the inode (views.py) on a worker, then answer (the writer holds
        its inode lock until then)."""
        conn, frame, ticket = pending.conn, pending.frame, pending.ticket
        workers = self._workers()

        def job() -> None:
            request = frame.request()
            response = decode_response_header(header).with_payload(payload)
            try:
                self.after_slots(ticket, request, response)
            finally:
                if pending.kept:
                    self.replay.settle_lazily(lambda: request, response.ok)
            self._account(pending, response.result, len(payload), time.monotonic())
            workers.replier.reply(conn, header, payload, frame.cost)
        workers.run(job)

    def failed(self, up: Upstream, reason: str, pendings: list[Pending], sent: bool) -> None:
        self.pairs.forget(up)
        if pendings or not up.connected:  # the node may be gone
            LOG.warning("gateway: connection to %s failed (%s); %d request(s) go to the "
                        "failover path", up.address, reason, len(pendings))
            self.cluster.mark_failed(up.address, TransportError(reason))
            if up.address == self.nodes.node:
                self.nodes.pick()
        if sent:
            self.forwarder.note_change()  # a node failed under our requests
        for pending in pendings:
            self._unkeep(pending.kept)
            self.slow(pending.conn, pending.frame)
        if self._queued:
            self._dequeue()

    def _poll(self) -> None:
        if self.workers is not None:  # whether the LUs' VDIs are shared now (views.py)
            self.views.poll(self.forwarder.forward, self.workers.run)

    def _sweep(self) -> None:
        now = time.monotonic()
        for up in self.pairs:
            owner = up.owner
            if owner is not None and owner.peer is up and not owner.peer_inflight \
                    and now - owner.last_recv >= PAIR_IDLE:
                self._give_back(owner)  # a client that went quiet keeps no upstream
            if not up.connected:
                if now - up.started > self.connect_timeout:
                    up.fail(f"no connection within {self.connect_timeout:g} s")
            elif up.waiting and now - up.oldest() > self.request_timeout:
                up.fail(f"no answer within {self.request_timeout:g} s")
