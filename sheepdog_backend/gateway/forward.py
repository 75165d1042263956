"""Forward one Sheepdog request to the cluster and bring back its answer.

How it works: ``Forwarder.forward(request)`` sends the request, as it came,
through the client's ``Cluster`` (healthiest gateway first; a gateway that
refuses the connection is skipped at once) and returns the cluster's response
under the request's own id.  What happens when a node fails depends on what
the request does:

* nothing was sent (connect refused, no gateway yet): always tried on the
  next node;
* the node answered a node-state refusal (SHUTDOWN, KILLED, STARTUP, ...):
  the node did nothing, so the request goes to another node;
* the request was sent and the connection broke (outcome unknown): repeated
  on another node only for ``SAFE_OPS``, whose repetition gives the same
  result.  Reads, EXIST and the lookups are safe; WRITE_OBJ writes the same
  bytes at the same offset again; CREATE_AND_WRITE_OBJ is safe too, because
  a sheep create replaces the whole object (sheepdog-protocol.md §10.2), so a
  repeated create leaves the object exactly as one create would.  The one
  writer of a LU (tgt holds its inode lock across a create and its slot
  write) cannot have written that object in between.  Creating, deleting and
  locking VDIs, REMOVE/DISCARD and cluster changes are not repeated: the
  client gets NETWORK_ERROR and decides (dog and our client look first);
* transient results (NODE_IN_RECOVERY, AGAIN, ...) of safe ops are retried;
* NO_OBJ for a READ_OBJ, WRITE_OBJ or CREATE_AND_WRITE_OBJ while the cluster
  may be recovering: a real sheep 1.0 answers NO_OBJ for a write to an object
  that exists right after a node died (its copies move to new nodes), and tgt
  turns NO_OBJ into a SCSI medium error the guest sees.  "May be recovering"
  means: within ``recovery_window`` seconds of a node failing under a request
  of ours, or of a response carrying a higher cluster epoch than seen before,
  and, when ``recovering`` is told (the replay's window, replay.py), until
  every node reports the recovery from it done.  Out of that NO_OBJ is a real
  answer and is returned at once (dog and tgt read inodes that may be gone,
  and a create's existence read, coherence.py, asks about objects not made
  yet: retried, each stalled a guest's write for the whole retry deadline
  after a node failure); inside it the retry deadline still ends the wait
  with the cluster's NO_OBJ.

Each change (a node failed under a request, or the epoch rose) is told to
``on_change`` with the highest epoch seen before it: the gateway's
RecoveryReplay (replay.py) keeps the writes acknowledged from then on until the
cluster has recovered.

Retries follow the client's RetryPolicy (backoff, total deadline).  Shared
state: the Cluster (thread-safe) and the recovery clues (highest epoch seen,
when it last rose or a node failed) under ``_lock``; any number of requests
may be forwarded in parallel.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

from sheepdog_backend.client.cluster import Cluster
from sheepdog_backend.client.retry import RetryPolicy
from sheepdog_backend.client.transport import Connection, request_was_sent
from sheepdog_backend.exception import (
    NoObject,
    RetryExhausted,
    ServerError,
    SheepdogError,
    TransportError,
    error_for_code,
)
from sheepdog_backend.protocol.constants import Opcode, Result
from sheepdog_backend.protocol.header import Request, Response, result_response

LOG = logging.getLogger(__name__)

SAFE_OPS = frozenset({
    Opcode.READ_OBJ, Opcode.WRITE_OBJ, Opcode.CREATE_AND_WRITE_OBJ, Opcode.EXIST,
    Opcode.GET_VDI_INFO, Opcode.READ_VDIS, Opcode.FLUSH_VDI, Opcode.GET_NODE_LIST,
    Opcode.STAT_SHEEP, Opcode.STAT_CLUSTER, Opcode.CLUSTER_INFO, Opcode.GET_CLUSTER_DEFAULT,
    Opcode.READ_DEL_VDIS, Opcode.GET_VDI_COPIES, Opcode.STAT, Opcode.GET_STORE_LIST,
    Opcode.RELEASE_VDI,  # a repeated release answers VDI_NOT_LOCKED, which tgt accepts
})
# Object ops whose NO_OBJ may be a recovering cluster's answer (EXIST is not:
# its NO_OBJ is the answer "absent").
RECOVERY_NO_OBJ_OPS = frozenset({
    Opcode.READ_OBJ, Opcode.WRITE_OBJ, Opcode.CREATE_AND_WRITE_OBJ,
})
DEFAULT_RECOVERY_WINDOW = 60.0
# The node refused before doing anything: any request may go to another node.
NODE_STATE_RESULTS = frozenset({
    Result.SHUTDOWN, Result.KILLED, Result.STARTUP, Result.WAIT_FOR_JOIN, Result.HALT,
})


class _OutcomeUnknown(SheepdogError):
    """A request that must not be repeated was sent and its connection broke."""


class _RecoveringNoObject(NoObject):
    """NO_OBJ while the cluster may be recovering: worth another try."""

    transient = True


class Forwarder:
    def __init__(self, cluster: Cluster, retry: RetryPolicy, *,
                 recovery_window: float = DEFAULT_RECOVERY_WINDOW,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cluster = cluster
        self.retry = retry
        self.recovery_window = recovery_window
        self._clock = clock
        self._lock = threading.Lock()
        self._epoch: int | None = None  # highest cluster epoch seen
        self._changed = float("-inf")  # when a node failed or the epoch rose
        self.recovery_retries = 0  # NO_OBJ answers retried as recovery
        # Told of each change with the highest epoch seen before it (replay.py).
        self.on_change: Callable[[int | None], None] | None = None
        # Whether the cluster still recovers from the last change (None: not
        # known, the window alone decides).
        self.recovering: Callable[[], bool] | None = None

    def note_change(self) -> None:
        with self._lock:
            self._changed = self._clock()
            before = self._epoch
        if self.on_change is not None:
            self.on_change(before)

    def note_epoch(self, epoch: int) -> None:
        if not epoch:
            return
        rose = False
        with self._lock:
            before = self._epoch
            if self._epoch is not None and epoch > self._epoch:
                self._changed = self._clock()
                rose = True
            if self._epoch is None or epoch > self._epoch:
                self._epoch = epoch
        if rose and self.on_change is not None:
            self.on_change(before)

    @property
    def epoch(self) -> int:
        """The highest cluster epoch seen (0: none yet)."""
        with self._lock:
            return self._epoch or 0

    def count_recovery_retry(self) -> None:
        with self._lock:
            self.recovery_retries += 1

    def may_be_recovering(self) -> bool:
        """Whether a node failed, or the epoch rose, within the window, and
        the cluster has not said it recovered from that since."""
        with self._lock:
            within = self._clock() - self._changed <= self.recovery_window
        return within and (self.recovering is None or self.recovering())

    def _call(self, conn: Connection, request: Request, safe: bool) -> Response:
        response = conn.call(request)
        self.note_epoch(response.epoch)
        if response.result in NODE_STATE_RESULTS or (
                safe and not response.ok and error_for_code(response.result).transient):
            raise error_for_code(response.result, f"{conn.address} answered "
                                 f"{response.result:#x} to opcode {request.opcode:#x}")
        if response.result == Result.NO_OBJ and request.opcode in RECOVERY_NO_OBJ_OPS \
                and self.may_be_recovering():
            self.count_recovery_retry()
            raise _RecoveringNoObject(f"{conn.address} answered NO_OBJ to opcode "
                                      f"{request.opcode:#x} while the cluster may be "
                                      "recovering")
        return response

    def _attempt(self, request: Request, safe: bool) -> Response:
        try:
            return self.cluster.run(lambda conn: self._call(conn, request, safe))
        except TransportError as exc:
            if request_was_sent(exc):
                self.note_change()  # a node failed under our request
            if safe or not request_was_sent(exc):
                raise
            raise _OutcomeUnknown(str(exc)) from exc

    def forward(self, request: Request) -> Response:
        """The cluster's answer to ``request`` (a failure result when no node
        could give one), under the request's id."""
        safe = request.opcode in SAFE_OPS
        try:
            response = self.retry.call(lambda: self._attempt(request, safe),
                                       what=f"opcode {request.opcode:#x}")
        except RetryExhausted as exc:
            last = exc.__cause__
            LOG.warning("gateway: %s", exc)
            if isinstance(last, ServerError):
                return result_response(request, int(last.code))
            return result_response(request, int(Result.NETWORK_ERROR))
        except _OutcomeUnknown as exc:
            LOG.warning("gateway: opcode %#x not repeated (outcome unknown): %s",
                        request.opcode, exc)
            return result_response(request, int(Result.NETWORK_ERROR))
        except ServerError as exc:  # a node-state refusal the policy gave up on
            return result_response(request, int(exc.code))
        except TransportError as exc:
            LOG.warning("gateway: opcode %#x: %s", request.opcode, exc)
            return result_response(request, int(Result.NETWORK_ERROR))
        return dataclasses.replace(response, id=request.id)
