"""Which node the relay sends object I/O to, and how it reaches that node.

How it works: the node is the healthiest of the client's Cluster
(``pick``); the relay uses it for its fast path (``fast_node``) only once
the cluster's identity check passed on it (client/identity.py), run at
start (``choose``, blocking) or on a worker (``verify_soon``, once a second
at most), so a node of another cluster never receives relayed I/O.  A node
on this host given a unix socket (``node_sockets``, nodesock.py) is reached
through it once the socket, too, answered for the node's own cluster; a
socket found to belong to another cluster stops the start, or, found later,
is dropped and the node is reached over TCP.

Loop thread only, apart from ``_check``, which the workers run (it touches
only the thread-safe Cluster); its outcome comes back through
``call_soon``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from sheepdog_backend.client.cluster import Cluster
from sheepdog_backend.client.identity import fetch_ctime
from sheepdog_backend.client.transport import Address
from sheepdog_backend.engine.loop import EventLoop
from sheepdog_backend.engine.workers import Workers
from sheepdog_backend.exception import InvalidInput, SheepdogError
from sheepdog_backend.gateway.nodesock import check_node_socket

LOG = logging.getLogger(__name__)


class NodeChoice:
    def __init__(self, cluster: Cluster, *, connect_timeout: float,
                 node_sockets: Mapping[Address, str] | None = None) -> None:
        self.cluster = cluster
        self.connect_timeout = connect_timeout
        self.node: Address | None = None  # the healthiest node
        self.fast_node: Address | None = None  # the node, once its identity was checked
        self._verified: set[Address] = set()
        self._verifying: dict[Address, float] = {}  # address -> when the check began
        # Nodes on this host reached through their unix socket: configured,
        # and in use once checked with the node's identity.
        self.node_sockets = dict(node_sockets or {})
        self._sockets: dict[Address, str] = {}
        self.loop: EventLoop | None = None
        self.workers: Workers | None = None

    def attach(self, loop: EventLoop, workers: Workers) -> None:
        self.loop, self.workers = loop, workers

    def choose(self) -> None:
        """Take the healthiest node and check its identity (now, blocking:
        before the engine serves); InvalidInput for a socket of another
        cluster."""
        self.pick(verify=False)
        node = self.node
        if node is not None and self._check(node):
            self._verified_ok(node)

    def pick(self, verify: bool = True) -> None:
        """Take the healthiest node now (its check on a worker if need be)."""
        ordered = self.cluster.ordered()
        node = self.node = ordered[0].address if ordered else None
        self.fast_node = node if node in self._verified else None
        if verify and node is not None and self.fast_node is None:
            self.verify_soon(node)

    def socket_for(self, node: Address) -> str | None:
        """The unix socket to reach ``node`` through (None: its TCP port)."""
        return self._sockets.get(node)

    def verify_soon(self, address: Address) -> None:
        """Check ``address``'s identity on a worker (once a second at most)."""
        now = time.monotonic()
        loop, workers = self.loop, self.workers
        if now - self._verifying.get(address, -10.0) < 1.0 or loop is None or workers is None:
            return
        self._verifying[address] = now

        def job() -> None:
            try:
                ok = self._check(address)
            except InvalidInput as exc:  # a socket of another cluster: TCP it is
                LOG.error("gateway: %s; node %s is reached over TCP", exc, address)
                loop.call_soon(lambda: self._drop_socket(address))
                return
            if ok:
                loop.call_soon(lambda: self._verified_ok(address))
        workers.run(job)

    def _verified_ok(self, address: Address) -> None:
        self._verified.add(address)
        path = self.node_sockets.get(address)
        if path is not None:
            self._sockets[address] = path
        if address == self.node:
            self.fast_node = address

    def _check(self, address: Address) -> bool:
        """The node's identity (and its socket's, if it has one) checked;
        InvalidInput for a socket of another cluster."""
        try:
            path = self.node_sockets.get(address)
            if path is None:
                self.cluster.run_on(address, lambda conn: None)  # identity.verify runs there
            else:  # identity.verify runs there too, before the node's own ctime is read
                expected = self.cluster.run_on(address, fetch_ctime)
                check_node_socket(address, path, expected, self.connect_timeout)
            return True
        except InvalidInput:
            raise
        except SheepdogError as exc:
            LOG.warning("gateway: node %s not used for relaying yet: %s", address, exc)
            return False

    def _drop_socket(self, address: Address) -> None:
        """Reach ``address`` over TCP from now on (its socket was refused)."""
        self.node_sockets.pop(address, None)
        self._sockets.pop(address, None)
