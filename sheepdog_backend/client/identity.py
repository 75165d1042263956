"""Which Sheepdog cluster a gateway belongs to: refuse gateways of another one.

Every node of one cluster reports the same creation time (``ctime``, set by
``dog cluster format`` and kept in the epoch log); two clusters formatted
apart never share it.  A backend configured with gateways of two clusters
would otherwise fail over from one cluster into the other and create, read
or delete volumes there.

How it works: ``Cluster.run_on`` calls ``ClusterIdentity.verify(conn)`` on each
connection before its first request.  ``verify`` asks that gateway for the
newest epoch record (STAT_CLUSTER with no node slots: 48 bytes, the same
request dog's prelude sends) and compares its ctime with the one the first
formatted gateway reported; the first one seen becomes the identity.  A
gateway of another cluster raises ``ForeignCluster`` (a ConfigError: the
configuration is wrong, retrying cannot help) and its connection is never
marked verified, so every later use of it is refused too.  A gateway that is
not formatted (ctime 0, or it refuses the request) is not judged: its own
answers (WAIT_FOR_FORMAT ...) tell the caller what is wrong.

Shared state: the expected ctime, which gateway it came from, and the set of
verified connections (weak references, so closed connections drop out); one
lock guards them.  Any number of threads may verify at once; the request
itself runs outside the lock, on the caller's connection.

A new process whose first gateway is down learns the identity from whichever
gateway answers first; ``sheepdog_cluster_id`` (the ctime in hex, printed by
``sheepdog-backend stats``) pins it so that even then a gateway of another
cluster is refused (``pin``).  ``check_all`` verifies every reachable gateway
at set-up.  A client of a single gateway (and no pin) sends no extra request:
there is no other cluster it could fail over to.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import TYPE_CHECKING

from sheepdog_backend.client import requests as rq
from sheepdog_backend.exception import ForeignCluster, InvalidInput, ProtocolError, TransportError
from sheepdog_backend.protocol.constants import Result
from sheepdog_backend.protocol.header import Response
from sheepdog_backend.protocol.structs import EpochLog

LOG = logging.getLogger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    from sheepdog_backend.client.cluster import Cluster
    from sheepdog_backend.client.transport import Connection


def parse_cluster_id(text: str) -> int:
    """``sheepdog_cluster_id`` (hex, as our messages and stats print it) -> ctime."""
    try:
        value = int(text.strip(), 16)
    except ValueError:
        raise InvalidInput(f"cluster id {text!r} is not a hex number such as "
                           "0x1871c9fa12345678") from None
    if not 0 < value < 1 << 64:
        raise InvalidInput(f"cluster id {text!r} is out of range")
    return value


def cluster_id_text(ctime: int | None) -> str | None:
    return None if not ctime else f"{ctime:#x}"


def _ctime_text(ctime: int) -> str:
    import datetime

    moment = datetime.datetime.fromtimestamp(ctime >> 32, tz=datetime.timezone.utc)
    return f"{ctime:#x} (formatted {moment:%Y-%m-%d %H:%M:%S}Z)"


class ClusterIdentity:
    """The cluster (by ctime) that every gateway of one client must belong to."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ctime: int | None = None
        self._source = ""
        self._verified: weakref.WeakSet[Connection] = weakref.WeakSet()
        self._pinned = False

    def pin(self, ctime: int) -> None:
        """Expect this cluster (``sheepdog_cluster_id``), whichever gateway answers."""
        with self._lock:
            if self._ctime is not None and self._ctime != ctime:
                raise ForeignCluster(
                    f"gateway {self._source} belongs to cluster {_ctime_text(self._ctime)}, "
                    f"not the configured sheepdog_cluster_id {_ctime_text(ctime)}")
            self._ctime, self._source = ctime, "sheepdog_cluster_id"
            self._pinned = True

    @property
    def ctime(self) -> int | None:
        with self._lock:
            return self._ctime

    def verify(self, conn: Connection, *, several: bool = True) -> None:
        """Raise ForeignCluster if ``conn``'s gateway belongs to another cluster.
        With a single gateway (``several`` False) and no pinned id there is no
        other cluster to confuse it with: no request is sent."""
        with self._lock:
            if conn in self._verified or (not several and not self._pinned):
                return
        ctime = fetch_ctime(conn)
        if not ctime:
            return  # not formatted (or cannot say): its own replies will tell
        where = str(conn.address)
        with self._lock:
            if self._ctime is None:
                self._ctime, self._source = ctime, where
            elif ctime != self._ctime:
                raise ForeignCluster(
                    f"gateway {where} belongs to another Sheepdog cluster (creation time "
                    f"{_ctime_text(ctime)}) than gateway {self._source} "
                    f"({_ctime_text(self._ctime)}): every gateway of a backend must be a "
                    "node of the same cluster; fix sheepdog_gateways")
            self._verified.add(conn)

    def check_all(self, cluster: Cluster) -> list[str]:
        """Verify every gateway that accepts a connection (at set-up, so a
        gateway of another cluster is refused before it is ever failed over to);
        returns the gateways that could not be reached and so were not checked."""
        unreached = []
        for address in cluster.addresses:
            try:
                cluster.run_on(address, lambda conn: None)
            except TransportError:
                unreached.append(str(address))
        return unreached


def fetch_ctime(conn: Connection) -> int:
    """The creation time of the cluster of ``conn``'s node (0: not formatted,
    or it cannot say)."""
    return ctime_of(conn.call(rq.stat_cluster_flags()))


def ctime_of(rsp: Response) -> int:
    """The cluster creation time in a STAT_CLUSTER answer (0: not formatted,
    or the node cannot say)."""
    if rsp.result not in (Result.SUCCESS, Result.WAIT_FOR_JOIN) or not rsp.payload:
        return 0
    try:
        return int(EpochLog.decode(rsp.payload, 0).ctime)
    except (ProtocolError, ValueError):
        return 0


def check_gateways(cluster: Cluster, cluster_id: str | None = None) -> list[str]:
    """Set-up check: pin ``cluster_id`` when given, then verify every reachable
    gateway (ForeignCluster for one of another cluster).  Returns the gateways
    that did not answer and so could not be checked."""
    if cluster_id:
        cluster.identity.pin(parse_cluster_id(cluster_id))
    unreached = cluster.identity.check_all(cluster)
    if unreached:
        LOG.warning("gateways %s did not answer: not checked to belong to the same "
                    "cluster", ", ".join(unreached))
    return unreached
