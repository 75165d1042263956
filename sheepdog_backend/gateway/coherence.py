"""Coherent creates: a LU's stale inode must not replace another LU's object.

Why (seen on a real sheep 1.0 with two tgt LUs of one VDI, straight to the
node and through a gateway each): tgt caches the inode when a LU opens and
decides from it whether a write creates its object.  LU A writes objects
that were unallocated when LU B opened; B, whose inode still says
unallocated, then sends CREATE_AND_WRITE_OBJ for the same objects, and a
sheep create replaces the whole object: every write A had acknowledged
there is gone.  The same happens to copy-on-write objects after a snapshot
when B reloaded its inode before A's copy.  (Sheepdog 1.0's own answer,
shared VDI locks and SD_OP_INODE_COHERENCE in sheep/vdi.c, tracks sheep
*nodes* as participants and invalidates the others when one writes an inode
slot; it needs every tgt on its own node, a tgt that sends SD_FLAG_CMD_TGT
and handles INODE_INVALIDATED, and it still lets a create in between
another's create and slot write replace that object.)

How it works: the gateway sees every CREATE_AND_WRITE_OBJ of a data object
and, before forwarding it, asks whether the object already exists: it does
if a create of it through this gateway was answered (remembered, bounded;
vids are never reused short of a cluster format, so the answer stays true),
else a one-byte READ_OBJ of the object tells.  An object that exists is
written instead (WRITE_OBJ of the same bytes at the same offset, copy-on-
write dropped: the object already holds the copy), so no object is ever
replaced; the writer's slot write that follows sets the value it already
has.  A second create of an object whose create is still in flight through
this gateway waits for that answer first.  An object that exists only as
the leftover of a create whose slot write never came (a writer that died
between the two) is written too: its other bytes are those of a write the
guest never had acknowledged, which a failed write leaves undefined anyway.

Cost: one read per create (creates are rare next to writes: one per object
per VDI), counted in ``probes``; ``as_writes`` counts the creates turned
into writes.  Shared: ``_known`` and ``_inflight`` under ``_cond``; any
number of creates may be checked at once, the reads run outside the lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from sheepdog_backend.client import requests as rq
from sheepdog_backend.protocol.constants import Flag, Opcode, Result
from sheepdog_backend.protocol.header import ObjRequest, Request, Response

LOG = logging.getLogger(__name__)
DEFAULT_KNOWN = 1 << 16  # data objects remembered as created through this gateway


class CoherentCreates:
    def __init__(self, forward: Callable[[Request], Response], *,
                 known: int = DEFAULT_KNOWN, wait_timeout: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._forward = forward
        self._max_known = known
        self.wait_timeout = wait_timeout
        self._clock = clock
        self._known: OrderedDict[int, None] = OrderedDict()
        self._inflight: set[int] = set()
        self._cond = threading.Condition()
        self.probes = 0  # existence reads sent
        self.as_writes = 0  # creates turned into writes

    def prepare(self, request: Request) -> tuple[Request, int | None]:
        """The request to forward for a data create: the create itself, or a
        write when its object exists.  A returned oid must be handed to
        ``finish`` with the outcome."""
        body = request.body
        assert isinstance(body, ObjRequest)
        oid = body.oid
        deadline = self._clock() + self.wait_timeout
        with self._cond:
            while oid in self._inflight:  # another create of it: wait for its answer
                left = deadline - self._clock()
                if left <= 0:
                    LOG.warning("gateway: a create of object %x waited %.0f s for another "
                                "create of it; checking the object now", oid,
                                self.wait_timeout)
                    break
                self._cond.wait(left)
            if oid in self._known:
                self._known.move_to_end(oid)
                self.as_writes += 1
                return as_write(request), None
            self._inflight.add(oid)
            self.probes += 1
        exists = False
        try:
            exists = self._exists(oid)
        except BaseException:
            self.finish(oid, False)
            raise
        if exists:
            self.finish(oid, True)
            with self._cond:
                self.as_writes += 1
            return as_write(request), None
        return request, oid

    def _exists(self, oid: int) -> bool:
        answer = self._forward(rq.read_obj(oid, 0, 1))
        if answer.ok:
            return True
        if answer.result != Result.NO_OBJ:
            LOG.info("gateway: cannot tell whether object %x exists (result %#x); "
                     "creating it", oid, answer.result)
        return False

    def finish(self, oid: int, ok: bool) -> None:
        """A create of ``oid`` was answered (``ok``: the object exists now)."""
        with self._cond:
            self._inflight.discard(oid)
            if ok:
                self._known[oid] = None
                self._known.move_to_end(oid)
                while len(self._known) > self._max_known:
                    self._known.popitem(last=False)
            self._cond.notify_all()


def as_write(request: Request) -> Request:
    """A create turned into a write of the same bytes at the same offset."""
    body = request.body
    assert isinstance(body, ObjRequest)
    return Request(Opcode.WRITE_OBJ,
                   ObjRequest(oid=body.oid, copies=body.copies, copy_policy=body.copy_policy,
                              ec_index=body.ec_index, offset=body.offset),
                   flags=request.flags & ~int(Flag.COW), id=request.id,
                   data_length=request.data_length, epoch=request.epoch,
                   proto_ver=request.proto_ver, payload=request.payload)
