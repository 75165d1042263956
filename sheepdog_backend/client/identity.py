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
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING

from sheepdog_backend.client import requests as rq
from sheepdog_backend.exception import ForeignCluster, ProtocolError
from sheepdog_backend.protocol.constants import Result
from sheepdog_backend.protocol.structs import EpochLog

if TYPE_CHECKING:  # pragma: no cover
    from sheepdog_backend.client.transport import Connection


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

    @property
    def ctime(self) -> int | None:
        with self._lock:
            return self._ctime

    def verify(self, conn: Connection) -> None:
        """Raise ForeignCluster if ``conn``'s gateway belongs to another cluster."""
        with self._lock:
            if conn in self._verified:
                return
        ctime = self._fetch_ctime(conn)
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

    @staticmethod
    def _fetch_ctime(conn: Connection) -> int:
        rsp = conn.call(rq.stat_cluster_flags())
        if rsp.result not in (Result.SUCCESS, Result.WAIT_FOR_JOIN) or not rsp.payload:
            return 0
        try:
            return int(EpochLog.decode(rsp.payload, 0).ctime)
        except (ProtocolError, ValueError):
            return 0
