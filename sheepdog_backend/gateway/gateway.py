"""The local Sheepdog-protocol gateway on an export host.

How it works: the gateway listens on a unix socket and/or a TCP port <= 9999
on loopback (tgt's Sheepdog store keeps only 4 digits of a port) and answers
every request with the cluster's answer.  It runs on the shared wire engine
(sheepdog_backend.engine: one event loop over every connection, requests
framed in place, admission within a memory budget, connections bounded by
file descriptors).  Object I/O is relayed on that loop (relay.py: a request
goes out to a node as soon as it is parsed, on an upstream connection paired
with the client's, and its answer comes back as soon as it arrives); once a
pair is quiet, its steady-state reads and writes are relayed by the compiled
lane's thread (lane.py, _lane.c) until something needs judgment.  What
needs judgment or may wait runs ``handle`` on worker threads (engine.workers:
VDI and cluster ops one at a time in arrival order, the rest on a pool):
``handle`` runs the SnapshotGuard's ``before``, turns a data create whose
object exists into a write (coherence.py: a LU's stale inode must not
replace another LU's object), forwards through the
Forwarder (the client's Cluster: failover between the cluster's nodes, a
pool per node, the retry policy), runs ``after`` and counts the request in
IoStats.  Writes pass the RecoveryReplay (replay.py), which sends again, once
the cluster has recovered from a node's failure, the writes acknowledged
during its recovery; its watcher thread runs from ``start`` to ``stop``.
The cluster's nodes are the configured ones plus those GET_NODE_LIST reports
at start; a node on this host may be reached through its unix socket
(``node_sockets``, nodesock.py).

Shared state: the guard, the replay and the stats (each with its own lock)
and the client's Cluster (thread-safe); ``start``/``stop`` are for one owner
thread.  Threads: the loop, the lane's, the replay's watcher, and at most
``workers`` pool threads plus one serial worker, however many clients connect.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import stat
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from sheepdog_backend.client import RetryPolicy, SheepdogClient
from sheepdog_backend.client import requests as rq
from sheepdog_backend.engine import engine as wire
from sheepdog_backend.engine.engine import Engine
from sheepdog_backend.engine.workers import Workers
from sheepdog_backend.exception import InvalidInput, SheepdogError
from sheepdog_backend.gateway.coherence import CoherentCreates
from sheepdog_backend.gateway.forward import Forwarder
from sheepdog_backend.gateway.lane import pipe_fds
from sheepdog_backend.gateway.nodesock import parse_node_sockets
from sheepdog_backend.gateway.relay import DEFAULT_MAX_UPSTREAMS, Relay
from sheepdog_backend.gateway.replay import (
    DEFAULT_BUDGET,
    DEFAULT_SETTLE_TIMEOUT,
    RecoveryReplay,
    ReplayWatcher,
    probe_cluster,
)
from sheepdog_backend.gateway.snapshots import SnapshotGuard, Ticket, snapshot_base
from sheepdog_backend.gateway.stats import IoStats, RequestTrace
from sheepdog_backend.gateway.views import LuViews, new_stamp
from sheepdog_backend.protocol.constants import Opcode, Result
from sheepdog_backend.protocol.framing import DEFAULT_MAX_PAYLOAD
from sheepdog_backend.protocol.header import ObjRequest, Request, Response, result_response
from sheepdog_backend.protocol.inode import (
    FRESHNESS_LENGTH,
    OFFSET_FRESHNESS,
    OFFSET_STAMP,
    STAMP_VALUE,
)
from sheepdog_backend.protocol.oid import is_data_obj, vid_to_vdi_oid

LOG = logging.getLogger(__name__)
MAX_TGT_PORT = 9999  # tgt's Sheepdog store reads 4 digits of the port
DEFAULT_WORKERS = 48  # threads for the blocking path (failover, snapshot gates, VDI ops)


def check_listen(unix_path: str | None, port: int | None) -> None:
    if not unix_path and not port:
        raise InvalidInput("the gateway needs a unix socket path or a TCP port to listen on")
    if port is not None and port and not 1 <= port <= MAX_TGT_PORT:
        raise InvalidInput(f"gateway port {port} is outside 1-{MAX_TGT_PORT}: tgt's Sheepdog "
                           "store keeps only 4 digits of a port")
    if unix_path and len(os.fsencode(unix_path)) >= 108:
        raise InvalidInput(f"unix socket path {unix_path!r} is longer than 107 bytes")


def _clear_stale_socket(path: str) -> None:
    """Remove a socket file nobody listens on; InvalidInput for anything else."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise InvalidInput(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise InvalidInput(f"another gateway already listens on {path}")


LANE_SHARE = 4  # the lane holds at most 1/LANE_SHARE of the memory budget

class Gateway:
    def __init__(self, cluster: Sequence[str], *, unix_path: str | None = None,
                 port: int | None = None, host: str = "127.0.0.1",
                 workers: int = DEFAULT_WORKERS, drain_timeout: float = 5.0,
                 gate_timeout: float = 30.0, connect_timeout: float = 2.0,
                 request_timeout: float = 30.0, retry: RetryPolicy | None = None,
                 discover: bool = True, trace: int = 0,
                 replay_budget: int = DEFAULT_BUDGET,
                 settle_timeout: float = DEFAULT_SETTLE_TIMEOUT,
                 max_connections: int = wire.DEFAULT_MAX_CONNECTIONS,
                 memory_budget: int = wire.DEFAULT_MEMORY_BUDGET,
                 max_upstreams: int = DEFAULT_MAX_UPSTREAMS,
                 node_sockets: Sequence[str] = (), lane: bool = True) -> None:
        check_listen(unix_path, port)
        self.node_sockets = parse_node_sockets(node_sockets)
        if min(workers, max_connections, memory_budget, max_upstreams) < 1:
            raise InvalidInput("workers, max_connections, memory_budget and max_upstreams "
                               "must be positive")
        if not cluster:
            raise InvalidInput("the gateway needs at least one cluster node address")
        self.cluster_gateways = list(cluster)
        self.unix_path = os.path.abspath(unix_path) if unix_path else None
        self.port = port or None
        self.host = host
        self.workers = workers
        self.discover = discover
        self.client = SheepdogClient(self.cluster_gateways, connect_timeout=connect_timeout,
                                     request_timeout=request_timeout, pool_size=workers,
                                     retry=retry or RetryPolicy(
                                         attempts=30, base_backoff=0.05, max_backoff=1.0,
                                         deadline=max(request_timeout, 30.0)))
        self.forwarder = Forwarder(self.client.cluster, self.client.retry)
        self.guard = SnapshotGuard(self.forwarder.forward, drain_timeout=drain_timeout,
                                   gate_timeout=gate_timeout)
        self.replay = RecoveryReplay(self.forwarder.forward,
                                     lambda: probe_cluster(self.client.cluster),
                                     budget=replay_budget, settle_timeout=settle_timeout)
        self.forwarder.on_change = self.replay.open
        if self.replay.budget:  # its window ends when every node recovered
            self.forwarder.recovering = lambda: self.replay.window_open
        self.coherence = CoherentCreates(self.forwarder.forward, wait_timeout=gate_timeout)
        self.views = LuViews()
        self._watcher = ReplayWatcher(self.replay)
        self.io = IoStats()
        self.trace = RequestTrace(trace) if trace else None  # the last ``trace`` requests
        self.max_payload = DEFAULT_MAX_PAYLOAD
        self.max_connections = max_connections
        self.memory_budget = memory_budget
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.max_upstreams = max_upstreams
        # lane.py: a quarter of the memory budget is the compiled lane's
        self.lane_budget = memory_budget // LANE_SHARE if lane else 0
        self._engine: Engine | None = None
        self._workers: Workers | None = None
        self._relay: Relay | None = None

    # -- requests that need judgment (on the workers) -----------------------

    def handle(self, request: Request) -> Response:
        start = time.monotonic()
        ticket: Ticket | None = self.guard.before(request)
        local = self.guard.local_answer(ticket, request) if ticket is not None else None
        if local is not None:
            response = local
        else:
            sent, creating = request, None
            if request.opcode == Opcode.CREATE_AND_WRITE_OBJ and \
                    isinstance(request.body, ObjRequest) and is_data_obj(request.body.oid):
                sent, creating = self.coherence.prepare(request)
            kept = self.replay.admit(sent)
            answer: Response | None = None
            try:
                response = answer = self.forwarder.forward(sent)
            finally:
                if creating is not None:
                    self.coherence.finish(creating, answer is not None and answer.ok)
                if kept:
                    self.replay.settle(sent, answer)
            if sent is not request:  # a create written as a write: answer the create
                response = dataclasses.replace(response, opcode=request.opcode)
        if ticket is not None:
            response = self.after_forward(ticket, request, response)
        base = snapshot_base(request)
        end, waited = time.monotonic(), ticket.waited if ticket is not None else 0.0
        self.io.count(request, response, end - start, waited=waited, vid=base)
        if self.trace is not None:
            self.trace.record(request, response, start, end, waited)
        return response

    def after_forward(self, ticket: Ticket, request: Request, response: Response) -> Response:
        """The guard's ``after``; an answered slot write also stamps the inode
        (views.py), once re-applied, before the writer hears of it."""
        response = self.guard.after(ticket, request, response)
        if ticket.kind == "slots" and response.ok:
            self.stamp(ticket.vid)
            working = self.guard.working(ticket.vid)
            if working != ticket.vid:
                self.stamp(working)
        return response

    def stamp(self, vid: int) -> None:
        """A new coherence stamp in ``vid``'s inode: LUs of other hosts reload."""
        stamp = new_stamp()
        answer = self.forwarder.forward(rq.write_obj(vid_to_vdi_oid(vid), OFFSET_STAMP,
                                                     STAMP_VALUE.pack(stamp)))
        if answer.ok:
            self.views.stamped(vid, stamp)
        elif answer.result != Result.READONLY:  # READONLY: snapshotted, frozen
            LOG.warning("gateway: cannot stamp the inode of vdi %x (result %#x): a LU on "
                        "another host may read from a stale inode", vid, answer.result)

    def check_read(self, lu: int, request: Request) -> Response:
        """A read by the LU of shared VDI ``lu``: INODE_INVALIDATED when the
        inode changed since the LU loaded it (tgt reloads and reads again),
        else the read."""
        fresh = self.forwarder.forward(rq.read_obj(vid_to_vdi_oid(lu), OFFSET_FRESHNESS,
                                                   FRESHNESS_LENGTH))
        if fresh.ok and len(fresh.payload) == FRESHNESS_LENGTH \
                and not self.views.fresh(lu, fresh.payload):
            return result_response(request, int(Result.INODE_INVALIDATED))
        return self.handle(request)

    # -- service ----------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._engine is not None

    @property
    def address(self) -> str:
        """Where tgt connects: ``unix:PATH`` (preferred) or ``HOST:PORT``."""
        if self.unix_path:
            return f"unix:{self.unix_path}"
        return f"{self.host}:{self.port}"

    def start(self) -> Gateway:
        if self._engine is not None:
            raise RuntimeError("the gateway is already running")
        if self.discover:
            try:
                added = self.client.discover_gateways()
                if added:
                    LOG.info("gateway: cluster nodes found: %s", " ".join(added))
            except SheepdogError as exc:
                LOG.warning("gateway: could not list the cluster's nodes (%s); using %s",
                            exc, " ".join(self.cluster_gateways))
        if self.unix_path:
            _clear_stale_socket(self.unix_path)
        known = self.client.cluster.addresses
        for node in self.node_sockets:
            if node not in known:
                raise InvalidInput(f"--node-socket names {node}, which is not a node of the "
                                   f"cluster ({' '.join(str(a) for a in known)})")
        relay = Relay(cluster=self.client.cluster, forwarder=self.forwarder, guard=self.guard,
                      replay=self.replay, io=self.io, trace=self.trace, handle=self.handle,
                      views=self.views, after_slots=self.after_forward,
                      check_read=self.check_read,
                      connect_timeout=self.connect_timeout,
                      request_timeout=self.request_timeout, max_payload=self.max_payload,
                      max_upstreams=self.max_upstreams, node_sockets=self.node_sockets,
                      lane_budget=self.lane_budget)
        engine = Engine(relay, host=self.host, ports=[self.port] if self.port else [],
                        unix_paths=[self.unix_path] if self.unix_path else [],
                        max_connections=self.max_connections,
                        memory_budget=self.memory_budget - self.lane_budget,
                        max_payload=self.max_payload,
                        extra_fds=self.max_upstreams + self.workers
                        + pipe_fds(self.lane_budget), name="gateway")
        workers = Workers(engine, self.workers, name="gateway",
                          epoch=lambda: self.forwarder.epoch)
        relay.attach(engine.loop, workers)
        try:
            relay.choose_node()  # InvalidInput: a node socket of another cluster
            engine.start()
        except BaseException:
            workers.shutdown()
            raise
        self._engine, self._workers, self._relay = engine, workers, relay
        self._watcher.start()
        LOG.info("gateway: listening on %s for %s", self.address,
                 " ".join(str(a) for a in self.client.cluster.addresses))
        return self

    def stop(self) -> None:
        engine, workers, relay = self._engine, self._workers, self._relay
        self._engine = self._workers = self._relay = None
        if engine is not None and workers is not None and relay is not None:
            engine.loop.run_in_loop(relay.stop_lane)  # its thread uses the sockets
            engine.close_all()
            workers.shutdown()
            engine.loop.run_in_loop(relay.close)
            engine.stop()
            self._watcher.stop()
            if self.unix_path:  # ours only once we listened on it
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.unix_path)
        self.client.close()

    def stats(self) -> dict[str, Any]:
        """Per-volume I/O, the snapshots seen and the cluster nodes' health."""
        events = list(self.guard.events)
        nodes = []
        for address in self.client.cluster.addresses:
            h = self.client.cluster.health(address)
            nodes.append({"address": str(address), "failures": h.failures,
                          "successes": h.successes, "last_error": h.last_error})
        engine, relay = self._engine, self._relay
        wire_stats: dict[str, int] = {}
        if engine is not None and relay is not None:
            wire_stats = {**engine.stats(), **relay.stats()}
        return {"listen": self.address, "vdis": self.io.snapshot(), "nodes": nodes,
                "wire": wire_stats,
                "snapshots": len(events), "reapplied_slots": self.guard.reapplied,
                "refused_writes": self.guard.refused,
                "recovery_retries": self.forwarder.recovery_retries,
                "create_probes": self.coherence.probes,
                "lu_reloads": self.views.reloads,
                "shared_vdis": self.views.shared,
                "creates_as_writes": self.coherence.as_writes,
                "recovery_replays": self.replay.replays,
                "replayed_writes": self.replay.replayed,
                "replay_failures": self.replay.replay_failures,
                "max_snapshot_drain": max((e.drain_wait for e in events), default=0.0),
                "max_snapshot_call": max((e.duration for e in events), default=0.0),
                "undrained_snapshots": sum(1 for e in events if not e.drained)}

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
