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
* transient results (NODE_IN_RECOVERY, AGAIN, ...) of safe ops are retried.

Retries follow the client's RetryPolicy (backoff, total deadline).  The
Forwarder holds no state of its own beyond the Cluster (thread-safe), so any
number of requests may be forwarded in parallel.
"""

from __future__ import annotations

import dataclasses
import logging

from sheepdog_backend.client.cluster import Cluster
from sheepdog_backend.client.retry import RetryPolicy
from sheepdog_backend.client.transport import Connection, request_was_sent
from sheepdog_backend.exception import (
    RetryExhausted,
    ServerError,
    SheepdogError,
    TransportError,
    error_for_code,
)
from sheepdog_backend.protocol.constants import Opcode, Result
from sheepdog_backend.protocol.header import Request, Response, response_body_class

LOG = logging.getLogger(__name__)

SAFE_OPS = frozenset({
    Opcode.READ_OBJ, Opcode.WRITE_OBJ, Opcode.CREATE_AND_WRITE_OBJ, Opcode.EXIST,
    Opcode.GET_VDI_INFO, Opcode.READ_VDIS, Opcode.FLUSH_VDI, Opcode.GET_NODE_LIST,
    Opcode.STAT_SHEEP, Opcode.STAT_CLUSTER, Opcode.CLUSTER_INFO, Opcode.GET_CLUSTER_DEFAULT,
    Opcode.READ_DEL_VDIS, Opcode.GET_VDI_COPIES, Opcode.STAT, Opcode.GET_STORE_LIST,
    Opcode.RELEASE_VDI,  # a repeated release answers VDI_NOT_LOCKED, which tgt accepts
})
# The node refused before doing anything: any request may go to another node.
NODE_STATE_RESULTS = frozenset({
    Result.SHUTDOWN, Result.KILLED, Result.STARTUP, Result.WAIT_FOR_JOIN, Result.HALT,
})


class _OutcomeUnknown(SheepdogError):
    """A request that must not be repeated was sent and its connection broke."""


def _failure(request: Request, result: int) -> Response:
    return Response(opcode=request.opcode, result=result,
                    body=response_body_class(request.opcode)(), id=request.id)


class Forwarder:
    def __init__(self, cluster: Cluster, retry: RetryPolicy) -> None:
        self.cluster = cluster
        self.retry = retry

    def _call(self, conn: Connection, request: Request, safe: bool) -> Response:
        response = conn.call(request)
        if response.result in NODE_STATE_RESULTS or (
                safe and not response.ok and error_for_code(response.result).transient):
            raise error_for_code(response.result, f"{conn.address} answered "
                                 f"{response.result:#x} to opcode {request.opcode:#x}")
        return response

    def _attempt(self, request: Request, safe: bool) -> Response:
        try:
            return self.cluster.run(lambda conn: self._call(conn, request, safe))
        except TransportError as exc:
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
                return _failure(request, int(last.code))
            return _failure(request, int(Result.NETWORK_ERROR))
        except _OutcomeUnknown as exc:
            LOG.warning("gateway: opcode %#x not repeated (outcome unknown): %s",
                        request.opcode, exc)
            return _failure(request, int(Result.NETWORK_ERROR))
        except ServerError as exc:  # a node-state refusal the policy gave up on
            return _failure(request, int(exc.code))
        except TransportError as exc:
            LOG.warning("gateway: opcode %#x: %s", request.opcode, exc)
            return _failure(request, int(Result.NETWORK_ERROR))
        return dataclasses.replace(response, id=request.id)
