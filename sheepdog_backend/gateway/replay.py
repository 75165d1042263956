"""Re-send, once the cluster has recovered, the writes acknowledged while it recovered.

Why (seen on a real sheep 1.0, three nodes, two copies, a node killed under
tgt's writes): a node that must take over a copy of an object can recover it
*twice* at once (the recovery list's worker and the worker a waiting write
asked for first).  The first recovery finishes, the waiting writes are applied
to the new copy and acknowledged, then the second recovery renames the copy it
read earlier over it.  The write is on the other copy only; whoever reads this
copy (a re-opened LU, ``dog vdi read``, our client) gets the old bytes.  Both
data blocks and inode slots were lost this way (3 runs in 60).

How it works: the Forwarder tells ``open(epoch)`` when the cluster may have
changed (a node failed under a request, or an answer carried a higher epoch),
with the highest epoch seen before.  From then on every WRITE_OBJ and
CREATE_AND_WRITE_OBJ the gateway forwards and the cluster acknowledges is kept
(``admit`` before forwarding, ``settle`` after; the latest bytes per object
range, in order).  ``poll`` (the gateway's watcher thread) asks every node for
its recovery state (STAT_RECOVERY): once every node that answers reports an
epoch above the one before the change and no recovery running, nothing can
overwrite a copy any more, and the kept writes are sent again as plain
WRITE_OBJs (the same bytes at the same offsets: a create is replayed as a write
of what it wrote, never as a create, which would zero the rest of an object
written since).  While a replay runs, new writes wait, and it starts only when
no write is in flight, so a replay never lands on a newer write.  When no node
reports a higher epoch within ``settle_timeout`` the change was a connection's,
not the cluster's: nothing recovered, and the writes kept are dropped.  The
writes kept are bounded by ``budget`` bytes: past it, writes wait until the
replay (correctness over latency, see README); ``budget=0`` turns this off.

Shared state: the window (``_base``, ``_opened``), the kept writes, the count
of writes in flight and the ``_replaying`` flag, all under ``_cond``.  Any
number of writes may be admitted and settled at once; ``poll`` runs in one
thread (the watcher) and forwards outside the lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sheepdog_backend.client import requests as rq
from sheepdog_backend.client.cluster import Cluster
from sheepdog_backend.client.transport import Connection
from sheepdog_backend.exception import SheepdogError
from sheepdog_backend.protocol.constants import Opcode, Result
from sheepdog_backend.protocol.header import ObjRequest, Request, Response
from sheepdog_backend.protocol.structs import RECOVERY_STATE, RecoveryState

LOG = logging.getLogger(__name__)
WRITE_OPS = frozenset({Opcode.WRITE_OBJ, Opcode.CREATE_AND_WRITE_OBJ})
DEFAULT_BUDGET = 256 << 20
DEFAULT_SETTLE_TIMEOUT = 10.0


@dataclass(frozen=True)
class NodeRecovery:
    """One node's answer to STAT_RECOVERY: its epoch and whether it recovers."""

    epoch: int
    in_recovery: bool


def _write_key(request: Request) -> tuple[int, int, int] | None:
    body = request.body
    if request.opcode not in WRITE_OPS or not isinstance(body, ObjRequest) \
            or not request.payload:
        return None
    return body.oid, body.offset, len(request.payload)


class RecoveryReplay:
    def __init__(self, forward: Callable[[Request], Response],
                 probe: Callable[[], Sequence[NodeRecovery]], *,
                 budget: int = DEFAULT_BUDGET,
                 settle_timeout: float = DEFAULT_SETTLE_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if budget < 0:
            raise ValueError("the replay budget cannot be negative")
        self._forward = forward
        self._probe = probe
        self.budget = budget
        self.settle_timeout = settle_timeout
        self._clock = clock
        self._cond = threading.Condition()
        self._base: int | None = None  # highest epoch before the change
        self._open = False
        self._opened = 0.0
        self._kept: OrderedDict[tuple[int, int, int], Request] = OrderedDict()
        self._kept_bytes = 0
        self._in_flight = 0
        self._admitting = 0  # writes waiting in ``admit``
        # Writes relayed elsewhere (the gateway's lane): told when a window
        # opens (so that they come here), and counted before a replay starts.
        self.on_open: Callable[[], None] | None = None
        self.outside_writes: Callable[[], int] = lambda: 0
        self._replaying = False
        self.replays = 0  # windows whose writes were sent again
        self.replayed = 0  # writes sent again
        self.replay_failures = 0  # writes the cluster refused to take again
        self.dropped_windows = 0  # changes that turned out not to be the cluster's

    @property
    def kept_writes(self) -> int:
        """Writes kept now, to be sent again once the cluster has recovered."""
        with self._cond:
            return len(self._kept)

    @property
    def window_open(self) -> bool:
        with self._cond:
            return self._open

    def open(self, epoch_before: int | None) -> None:
        """The cluster may be changing; ``epoch_before`` is the highest epoch
        seen before (None: none seen yet)."""
        if not self.budget:
            return
        if self.on_open is not None:
            self.on_open()
        with self._cond:
            if self._open:
                if epoch_before is not None and (self._base is None
                                                 or epoch_before < self._base):
                    self._base = epoch_before
                return
            self._open, self._base, self._opened = True, epoch_before, self._clock()
            self._cond.notify_all()

    # -- around each forwarded write -------------------------------------------

    def admit(self, request: Request) -> bool:
        """Before forwarding: wait while a replay runs (or the budget is full);
        True when ``request`` is a write whose ``settle`` must follow."""
        if not self.budget or _write_key(request) is None:
            return False
        with self._cond:
            self._admitting += 1
            try:
                while self._replaying or (self._open and self._kept_bytes >= self.budget):
                    self._cond.wait(1.0)
            finally:
                self._admitting -= 1
            self._in_flight += 1
        return True

    def admit_nowait(self) -> bool:
        """``admit`` for a write without waiting: False when it would wait (a
        replay runs, or the kept writes fill the budget); the caller then takes
        the blocking path.  True: ``settle_lazily`` must follow."""
        with self._cond:
            if self._replaying or (self._open and self._kept_bytes >= self.budget):
                return False
            self._in_flight += 1
            return True

    def settle_lazily(self, request: Callable[[], Request], ok: bool) -> None:
        """``settle`` for a write ``admit_nowait`` took: ``request()`` builds
        it only when it is kept (the window is open and the write succeeded);
        ``ok=False`` also takes back an admission whose write is not sent."""
        with self._cond:
            self._in_flight -= 1
            if self._open and ok:
                self._keep(request())
            self._wake_waiters()

    def _keep(self, request: Request) -> None:
        key = _write_key(request)
        if key is None:
            return
        old = self._kept.pop(key, None)
        if old is not None:
            self._kept_bytes -= len(old.payload)
        self._kept[key] = request
        self._kept_bytes += len(request.payload)

    def settle(self, request: Request, response: Response | None) -> None:
        """After forwarding a write ``admit`` took: keep it if the window is open."""
        with self._cond:
            self._in_flight -= 1
            if self._open and response is not None and response.ok:
                self._keep(request)
            self._wake_waiters()

    def _wake_waiters(self) -> None:
        """After a write settled (lock held): wake whoever waits for it - a
        replay for the writes in flight, writes for room - and nobody else (the
        watcher waits on the same condition for a window, and waking it on
        every write would cost a thread switch per write)."""
        if self._replaying or self._admitting:
            self._cond.notify_all()

    # -- the watcher -------------------------------------------------------------

    def wake(self) -> None:
        """End a ``wait_for_window`` early (the watcher is stopping)."""
        with self._cond:
            self._cond.notify_all()

    def wait_for_window(self, timeout: float) -> bool:
        with self._cond:
            if not self._open:
                self._cond.wait(timeout)
            return self._open

    def poll(self) -> bool:
        """One look at the cluster; replays (and returns True) once it has
        recovered from the change."""
        with self._cond:
            if not self._open:
                return False
            base, opened = self._base, self._opened
        answers = list(self._probe())
        if base is None and answers:
            with self._cond:
                base = self._base = min(a.epoch for a in answers)
        if not answers or base is None:
            return False
        newer = [a for a in answers if a.epoch > base]
        if not newer:
            if self._clock() - opened > self.settle_timeout:
                self._drop()
            return False
        if any(a.in_recovery for a in answers) or len({a.epoch for a in answers}) != 1:
            return False  # some node still recovers, or has not seen the change yet
        self._replay()
        return True

    def _drop(self) -> None:
        with self._cond:
            self._open, self._base = False, None
            self._kept.clear()
            self._kept_bytes = 0
            self.dropped_windows += 1
            self._cond.notify_all()

    def _replay(self) -> None:
        with self._cond:
            self._replaying = True
            while self._in_flight or self.outside_writes():
                self._cond.wait(1.0 if self._in_flight else 0.01)
            kept = list(self._kept.values())
            self._kept.clear()
            self._kept_bytes = 0
            self._open, self._base = False, None
        failed = 0
        try:
            for request in kept:
                body = request.body
                assert isinstance(body, ObjRequest)
                response = self._forward(rq.write_obj(body.oid, body.offset, request.payload))
                if response.ok or response.result == Result.READONLY:
                    continue  # READONLY: snapshotted since; its copy is the snapshot's
                failed += 1
                LOG.error("gateway: re-sending a write to object %x at %d after the "
                          "cluster's recovery failed (result %#x)", body.oid, body.offset,
                          response.result)
        finally:
            with self._cond:
                self._replaying = False
                self.replays += 1
                self.replayed += len(kept) - failed
                self.replay_failures += failed
                self._cond.notify_all()
        LOG.info("gateway: the cluster recovered; %d write(s) acknowledged during its "
                 "recovery sent again", len(kept) - failed)


def probe_cluster(cluster: Cluster, timeout: float = 2.0) -> list[NodeRecovery]:
    """Every node's STAT_RECOVERY answer; a node that does not answer is left out
    (a dead node recovers nothing)."""
    def ask(conn: Connection) -> Response:
        return conn.call(Request(Opcode.STAT_RECOVERY, data_length=RECOVERY_STATE.size))

    answers = []
    for address in cluster.addresses:
        try:
            response = cluster.run_on(address, ask, deadline=time.monotonic() + timeout)
            state = RecoveryState.decode(response.payload)
        except SheepdogError as exc:
            LOG.debug("gateway: no recovery state from %s: %s", address, exc)
            continue
        if response.ok:
            answers.append(NodeRecovery(response.epoch, bool(state.in_recovery)))
    return answers


class ReplayWatcher:
    """The thread that polls the cluster while a replay window is open."""

    def __init__(self, replay: RecoveryReplay, interval: float = 0.2) -> None:
        self.replay = replay
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="gateway-replay", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.replay.wake()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.replay.wait_for_window(1.0):
                continue
            try:
                self.replay.poll()
            except Exception:  # never let the watcher die: the next poll retries
                LOG.exception("gateway: checking the cluster's recovery failed")
            self._stop.wait(self.interval)
