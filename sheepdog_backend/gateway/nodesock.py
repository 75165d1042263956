"""Cluster nodes on the gateway's own host, reached through their unix sockets.

A sheep listens on its TCP port and on ``STORE_DIR/sock``.  On an export host
that runs a node of the cluster, the gateway's relayed object I/O can go to
that node through the socket: each request and answer skips the TCP stack on
the way (measured with tgt and a real sheep: benchmarks/bench_gateway.py).

How it works: ``--node-socket HOST:PORT=PATH`` says that the node the gateway
knows as HOST:PORT (one of ``--cluster``, or found by discovery) also listens
on PATH.  ``parse_node_sockets`` checks the text (InvalidInput naming what is
wrong).  Before the relay uses a socket, ``check_node_socket`` asks what
listens there for its cluster's creation time (the STAT_CLUSTER request
client/identity.py compares) and refuses it unless it is the same as the
node's over TCP: a socket of another cluster would otherwise receive the
guests' writes.  The node's health, failover and everything on the blocking
path stay with HOST:PORT (the client's Cluster); when the socket refuses a
connection the node counts as failed, as when its port refuses.  Nothing here
can tell two nodes of one cluster apart: a socket of another node of the same
cluster serves the same objects (every sheep forwards to the right one), only
less directly.

Stateless: functions only.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from sheepdog_backend.client import requests as rq
from sheepdog_backend.client.identity import ctime_of
from sheepdog_backend.client.transport import Address, call_unix, parse_address
from sheepdog_backend.exception import InvalidInput, TransportError

MAX_PATH = 107  # sun_path holds 108 bytes with the terminating NUL


def parse_node_sockets(entries: Iterable[str]) -> dict[Address, str]:
    """``HOST:PORT=PATH`` entries -> {node address: absolute socket path};
    InvalidInput for a malformed entry, a path too long for a unix socket, or
    one node named twice."""
    sockets: dict[Address, str] = {}
    for entry in entries:
        node, sep, path = str(entry).partition("=")
        if not sep or not node or not path:
            raise InvalidInput(f"node socket {entry!r} is not HOST:PORT=PATH")
        address = parse_address(node.strip())
        path = os.path.abspath(path.strip())
        if len(os.fsencode(path)) > MAX_PATH:
            raise InvalidInput(f"node socket path {path!r} is longer than {MAX_PATH} bytes")
        if address in sockets:
            raise InvalidInput(f"node {address} has two sockets: {sockets[address]!r} and "
                               f"{path!r}")
        sockets[address] = path
    return sockets


def socket_ctime(path: str, timeout: float) -> int:
    """The creation time of the cluster of what listens on ``path`` (0: not
    formatted, or it cannot say); InvalidInput when ``path`` is not a socket,
    TransportError when nothing answers there."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise TransportError(f"node socket {path} does not exist (is the sheep "
                             "running? it listens on STORE_DIR/sock)") from None
    if not stat.S_ISSOCK(mode):
        raise InvalidInput(f"node socket {path} is not a unix socket")
    try:
        response = call_unix(path, rq.stat_cluster_flags(), timeout)
    except TransportError as exc:
        raise TransportError(f"node socket {path} does not answer: {exc}") from exc
    return ctime_of(response)


def check_node_socket(node: Address, path: str, expected: int, timeout: float) -> None:
    """InvalidInput unless ``path`` answers for the cluster whose creation
    time is ``expected`` (``node``'s own, asked over TCP); TransportError when
    nothing answers there, or ``expected`` is 0 (not formatted: no telling)."""
    if not expected:
        raise TransportError(f"node {node} cannot say which cluster it belongs to yet (not "
                             f"formatted?): its socket {path} is checked later")
    ctime = socket_ctime(path, timeout)
    if ctime != expected:
        raise InvalidInput(
            f"node socket {path} does not belong to the cluster of node {node} (creation "
            f"time {ctime:#x} there, {expected:#x} on {node}): --node-socket must name "
            "that node's own STORE_DIR/sock")
