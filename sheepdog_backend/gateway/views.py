"""Coherent reads: a LU reloads its inode once another host changed it.

Why: tgt caches a VDI's inode when its LU opens and reads from it which
object holds each block.  While two hosts export one volume (a live
migration, multiattach), the LU on one host does not see what the other
host's writes allocated or copied since: a block the other host wrote into a
new object reads as zeros, a block it copied from a parent snapshot reads
the parent's old bytes, and after a snapshot the old objects are read.
Debian's tgt (1.0.85) reloads its inode when a request is answered
INODE_INVALIDATED (Sheepdog's own coherence protocol, which tracks sheep
nodes, not LUs, and only with cluster locking on), and it asks before it
reads an area its inode says is unwritten (a one-byte read of the inode).

How it works: every inode slot write a gateway forwards is followed by a
new ``stamp`` in the inode (protocol.inode.OFFSET_STAMP), written before the
writer is answered.  The export layer writes in the same place how many
hosts export the VDI (``hosts``).  This gateway remembers, per VDI whose
inode a LU loaded through it, the stamp it loaded (``seen``) and whether the
VDI is shared (hosts >= 2, read with every load and refreshed by ``poll``).
While a VDI is shared, every read of its LU is checked first (``plan``: a
worker reads snap_ctime and the stamp, one small read): when the inode was
snapshotted or stamped since the load, the read is answered
INODE_INVALIDATED, tgt reloads, and the load records the new stamp.  Once
the other host is gone, reads stay checked until one check finds the inode
current (the other host's last writes may have come after the last reload).  A LU
is one VDI's: its connections are matched to the VDI by what they send (a
lock, an inode read, an object of the VDI itself); a connection not matched
yet that reads another VDI's object (a parent snapshot's) while a VDI is
shared is answered INODE_INVALIDATED once, and tgt's reload (a lock on the
same connection) matches it.  Unshared VDIs cost nothing but the stamp
write after each slot write (one per newly allocated object).  One LU per
VDI per gateway is assumed (one target per volume per host).

Shared: the views and the connection map, under ``_lock``; the loop asks
``plan`` and records loads, workers record locks, stamps and polls.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from sheepdog_backend.client import requests as rq
from sheepdog_backend.protocol.constants import SD_INODE_INDEX_OFFSET
from sheepdog_backend.protocol.header import Request, Response
from sheepdog_backend.protocol.inode import (
    HOSTS_VALUE,
    OFFSET_EXPORT_HOSTS,
    OFFSET_FRESHNESS,
    OFFSET_STAMP,
    stamp_fields,
)
from sheepdog_backend.protocol.oid import vid_to_vdi_oid

DEFAULT_FORGET = 600.0  # a VDI no LU touched for this long is forgotten
_STAMP_AT = OFFSET_STAMP - OFFSET_FRESHNESS  # in a freshness read
CHECK = "check"  # plan: a worker compares the inode with the view, then reads
RELOAD = "reload"  # plan: answer INODE_INVALIDATED (match the connection)


@dataclass
class View:
    seen: int  # the stamp of the inode the LU loaded
    shared: bool  # exported by two hosts or more
    used: float  # when a LU last touched it
    # Shared since the LU loaded its inode, and not found current since: its
    # reads stay checked after the other host left (the other host's last
    # writes may have come after the LU's last reload).
    doubt: bool = False

    @property
    def checked(self) -> bool:
        return self.shared or self.doubt


def new_stamp() -> int:
    """A stamp nobody else writes (time and randomness)."""
    return (time.time_ns() & 0xFFFFFFFF_00000000) | int.from_bytes(os.urandom(4), "little")


class LuViews:
    def __init__(self, *, forget: float = DEFAULT_FORGET,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._views: dict[int, View] = {}
        self._conns: dict[Hashable, int] = {}  # connection -> the VDI its LU reads
        self._forget = forget
        self._clock = clock
        self.shared = 0  # how many views have their reads checked (read without the lock)
        self.reloads = 0  # reads answered INODE_INVALIDATED
        self._polling = False  # a poll runs on a worker (set on the loop, cleared by the job)
        self.on_shared: Callable[[], None] | None = None  # told as a view's reads get checked

    # -- what the LUs show ---------------------------------------------------------

    def loaded(self, conn: Hashable, vid: int, header: bytes | memoryview) -> None:
        """A LU loaded ``vid``'s inode through ``conn`` (``header``: at least
        the first SD_INODE_INDEX_OFFSET bytes)."""
        stamp, hosts = stamp_fields(header, OFFSET_STAMP)
        with self._lock:
            self._set(vid, stamp, hosts >= 2)
            self._conns[conn] = vid

    def locked(self, conn: Hashable, vid: int) -> None:
        """``conn`` locked (or looked up) ``vid``: it is that VDI's LU."""
        with self._lock:
            self._conns[conn] = vid

    def closed(self, conn: Hashable) -> None:
        if self._conns:
            with self._lock:
                self._conns.pop(conn, None)

    def stamped(self, vid: int, stamp: int) -> None:
        """This gateway stamped ``vid`` after its LU's slot write.  Unshared,
        the LU knows what it wrote; shared, another host may have written
        since the LU loaded, so the next check reloads it once."""
        with self._lock:
            view = self._views.get(vid)
            if view is not None and not view.checked:
                view.seen = stamp

    def _set(self, vid: int, stamp: int, shared: bool) -> None:
        view = self._views.get(vid)
        if view is None:
            view = self._views[vid] = View(stamp, shared, self._clock(), doubt=shared)
            self.shared += shared
            return
        view.seen, view.used = stamp, self._clock()
        self._share(view, shared, current=True)  # the LU has just loaded it

    def _share(self, view: View, shared: bool, current: bool = False) -> None:
        """Record whether ``view``'s VDI is shared; ``current``: the LU's inode
        is known to be current now (else a view that was shared stays in doubt)."""
        before = view.checked
        if shared:
            view.doubt = True
        elif current:
            view.doubt = False
        view.shared = shared
        if view.checked != before:
            self.shared += 1 if view.checked else -1
            if view.checked and self.on_shared is not None:
                self.on_shared()

    # -- reads -------------------------------------------------------------------------

    def plan(self, conn: Hashable, vid: int) -> tuple[str, int] | None:
        """What a read through ``conn`` of an object of ``vid`` needs while
        some view is shared: None (read it), (CHECK, lu_vid) or (RELOAD, 0)."""
        with self._lock:
            lu = self._conns.get(conn)
            if lu is None:
                if vid in self._views:
                    lu = self._conns[conn] = vid
                else:
                    self.reloads += 1
                    return RELOAD, 0  # another VDI's object: whose LU? tgt's reload says
            view = self._views.get(lu)
            if view is None or not view.checked:
                return None
            view.used = self._clock()
            return CHECK, lu

    def fresh(self, vid: int, freshness: bytes | memoryview) -> bool:
        """Whether the LU's inode of ``vid`` is current, from a read of
        OFFSET_FRESHNESS (snap_ctime ... stamp); False counts a reload."""
        snap_ctime = int.from_bytes(freshness[:8], "little")
        stamp, hosts = stamp_fields(freshness, _STAMP_AT)
        with self._lock:
            view = self._views.get(vid)
            if view is None:
                return True
            current = not snap_ctime and stamp == view.seen
            self._share(view, hosts >= 2, current)
            if not current:
                self.reloads += 1
            return current

    # -- the poll --------------------------------------------------------------------------

    def watched(self) -> list[int]:
        """The VDIs to poll for sharing; forgets those no LU touched lately."""
        now = self._clock()
        with self._lock:
            for vid in [v for v, view in self._views.items() if now - view.used > self._forget]:
                view = self._views.pop(vid)
                self._share(view, False, current=True)
                for conn in [c for c, v in self._conns.items() if v == vid]:
                    del self._conns[conn]
            return list(self._views)

    def poll(self, forward: Callable[[Request], Response],
             run: Callable[[Callable[[], None]], None]) -> None:
        """Whether the watched VDIs are shared now: one small read of each
        inode's export hosts by ``forward``, in a job for ``run`` (a worker;
        not the guests' I/O); at most one poll at a time."""
        watched = self.watched()
        if not watched or self._polling:
            return
        self._polling = True

        def job() -> None:
            try:
                for vid in watched:
                    answer = forward(rq.read_obj(vid_to_vdi_oid(vid), OFFSET_EXPORT_HOSTS,
                                                 HOSTS_VALUE.size))
                    if answer.ok and len(answer.payload) == HOSTS_VALUE.size:
                        self.polled(vid, HOSTS_VALUE.unpack(answer.payload)[0])
            finally:
                self._polling = False
        run(job)

    def polled(self, vid: int, hosts: int) -> None:
        with self._lock:
            view = self._views.get(vid)
            if view is not None:
                self._share(view, hosts >= 2)


assert OFFSET_STAMP + 16 == SD_INODE_INDEX_OFFSET
