"""Snapshots that are safe for a writer behind the gateway (tgt, QEMU).

The race (seen on a real sheep 1.0): a writer creates data object (V, idx),
gets the answer, then writes slot ``idx`` of V's inode.  A snapshot of V that
runs in between copies V's slots to the new working inode W without ``idx``
and rewrites V's inode whole, so the slot write is overwritten or lands on
the frozen V only: W, the live volume, never references the object and the
acknowledged write is lost.

How it works: the gateway sees every request of the VDIs behind it and calls
``before`` / ``after`` around forwarding one.

* A CREATE_AND_WRITE_OBJ of a data object of V counts as *pending* for
  (V, idx) from its arrival until a slot write of V's inode covering idx has
  been answered (or it failed, or it is older than ``gate_timeout``: an
  abandoned request).
* A snapshot of V (NEW_VDI with a snapid, base V) waits until V has no
  pending create (at most ``drain_timeout``), then *gates* V: new creates of
  V wait (at most ``gate_timeout``) until the snapshot was answered.  A
  writer in the middle of a request that still needs a create is not waited
  for (its create is held by the gate, so the drain cannot deadlock on it).
  After the snapshot the writer's creates of V are refused READONLY by the
  cluster and it reloads its inode (tgt and QEMU both do).
* Once a snapshot of V was answered, the cluster refuses every create or
  write of a data object of V with READONLY (sheep 1.0: a snapshot's data
  objects are read-only, and a vid is never reused short of a cluster
  format), and the writer reloads its inode and tries again on W.  For
  ``readonly_window`` seconds after the snapshot the gateway gives that
  answer itself: the creates its gate held, and the writer's next try, then
  do not cross to the cluster and back before the reload (the guest's write
  is waiting on them).  After the window they are forwarded again.
* V -> W is remembered; a slot write that still lands on a frozen V (the
  drain timed out, or the snapshot did not come through the gateway and a
  later one did) is re-applied to W: every slot the writer set to V whose
  W slot is not W's own object is set to V too, before the writer is answered
  (the writer holds its inode lock until then, so nobody else writes W's
  slot in between).

Shared state: ``_pending``, ``_gated``, ``_frozen`` and ``_frozen_at``, guarded by
``_cond`` (a Condition; waits are bounded).  Any number of requests may be in
``before``/``after`` at once; the re-apply runs outside the lock.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from sheepdog_backend.client import requests as rq
from sheepdog_backend.protocol.constants import (
    SD_INODE_GREF_OFFSET,
    SD_INODE_INDEX_OFFSET,
    Opcode,
    Result,
)
from sheepdog_backend.protocol.header import (
    ObjRequest,
    Request,
    Response,
    VdiRequest,
    VdiResponse,
    result_response,
)
from sheepdog_backend.protocol.oid import (
    is_data_obj,
    is_vdi_obj,
    oid_to_index,
    oid_to_vid,
    vid_to_vdi_oid,
)

LOG = logging.getLogger(__name__)
_SLOT = 4
_MAX_FROZEN = 4096


@dataclass
class Ticket:
    """What ``before`` saw of a request, handed back to ``after``."""

    kind: str  # "create", "slots", "snapshot", "readonly" (answered by the guard)
    vid: int
    first: int = 0  # create: idx; slots: first idx written
    values: tuple[int, ...] = ()  # slots: the values written
    waited: float = 0.0  # seconds held by a gate or a drain
    admitted: float = 0.0  # when ``before`` let it go (the guard's clock)


@dataclass
class SnapshotEvent:
    vid: int
    new_vid: int
    drain_wait: float
    drained: bool
    duration: float = 0.0  # the cluster's NEW_VDI, drain excluded


@dataclass
class _Pending:
    since: dict[int, float] = field(default_factory=dict)  # idx -> arrival time


def slot_values(request: Request) -> tuple[int, tuple[int, ...]] | None:
    """(first idx, values) when ``request`` writes data_vdi_id slots of an inode."""
    body = request.body
    if request.opcode != Opcode.WRITE_OBJ or not isinstance(body, ObjRequest):
        return None
    return slot_values_at(body.oid, body.offset, request.payload)


def slot_values_at(oid: int, offset: int, payload: bytes | memoryview
                   ) -> tuple[int, tuple[int, ...]] | None:
    """(first idx, values) when a WRITE_OBJ of ``payload`` at ``offset`` of
    object ``oid`` writes data_vdi_id slots of an inode."""
    if not is_vdi_obj(oid):
        return None
    start, end = offset, offset + len(payload)
    lo, hi = max(start, SD_INODE_INDEX_OFFSET), min(end, SD_INODE_GREF_OFFSET)
    first = (lo - SD_INODE_INDEX_OFFSET + _SLOT - 1) // _SLOT
    last = (hi - SD_INODE_INDEX_OFFSET) // _SLOT  # exclusive
    if last <= first:
        return None
    skip = SD_INODE_INDEX_OFFSET + first * _SLOT - start
    return first, struct.unpack_from(f"<{last - first}I", payload, skip)


def snapshot_base(request: Request) -> int | None:
    body = request.body
    if request.opcode == Opcode.NEW_VDI and isinstance(body, VdiRequest) \
            and body.snapid and body.base_vdi_id:
        return body.base_vdi_id
    return None


class SnapshotGuard:
    def __init__(self, forward: Callable[[Request], Response], *,
                 drain_timeout: float = 5.0, gate_timeout: float = 30.0,
                 readonly_window: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._forward = forward
        self.drain_timeout = drain_timeout
        self.gate_timeout = gate_timeout
        self.readonly_window = readonly_window
        self._clock = clock
        self._cond = threading.Condition()
        self._pending: dict[int, _Pending] = {}
        self._gated: set[int] = set()
        self._frozen: OrderedDict[int, int] = OrderedDict()
        self._frozen_at: dict[int, float] = {}  # vid -> when its snapshot was answered
        self.events: list[SnapshotEvent] = []  # the last snapshots seen (bounded)
        self.reapplied = 0  # slots re-applied to a working inode
        self.refused = 0  # data writes answered READONLY by the guard itself
        self.draining = 0  # snapshots waiting now for answered creates' slot writes
        self.on_snapshot: Callable[[], None] | None = None  # told as a snapshot starts

    # -- before forwarding ---------------------------------------------------

    def before(self, request: Request) -> Ticket | None:
        body = request.body
        if request.opcode == Opcode.CREATE_AND_WRITE_OBJ and isinstance(body, ObjRequest) \
                and is_data_obj(body.oid):
            return self._admit_create(oid_to_vid(body.oid), oid_to_index(body.oid))
        if request.opcode == Opcode.WRITE_OBJ and isinstance(body, ObjRequest) \
                and is_data_obj(body.oid):
            vid = oid_to_vid(body.oid)
            with self._cond:
                frozen = self._just_frozen(vid)
            return Ticket("readonly", vid) if frozen else None
        slots = slot_values(request)
        if slots is not None:
            return Ticket("slots", oid_to_vid(request.body.oid),  # type: ignore[union-attr]
                          first=slots[0], values=slots[1])
        base = snapshot_base(request)
        if base is not None:
            return self._start_snapshot(base)
        return None

    def _admit_create(self, vid: int, idx: int) -> Ticket:
        start = self._clock()
        deadline = start + self.gate_timeout
        with self._cond:
            while vid in self._gated:
                left = deadline - self._clock()
                if left <= 0:
                    LOG.warning("gateway: vdi %x stayed gated for %.1fs; letting a create "
                                "through", vid, self.gate_timeout)
                    break
                self._cond.wait(left)
            if self._just_frozen(vid):
                return Ticket("readonly", vid, first=idx, waited=self._clock() - start)
            self._pending.setdefault(vid, _Pending()).since[idx] = self._clock()
        return Ticket("create", vid, first=idx, waited=self._clock() - start)

    # -- without waiting (the gateway's event loop) ------------------------------

    def readonly_now(self, vid: int) -> bool:
        """Whether a data write of ``vid`` gets the guard's READONLY (a
        snapshot of it was answered within the window); no lock while no
        snapshot was ever seen."""
        if not self._frozen_at:
            return False
        with self._cond:
            return self._just_frozen(vid)

    def needs_reapply(self, ticket: Ticket) -> bool:
        """Whether an answered slot write must be re-applied to a newer working
        VDI (``after`` does it, forwarding: not on the event loop)."""
        return bool(self._frozen) and self.working(ticket.vid) != ticket.vid

    def after_answer(self, ticket: Ticket, ok: bool) -> None:
        """``after`` for a create or a slot write that needs no re-apply."""
        if ticket.kind == "create":
            if not ok:
                self._settle(ticket.vid, (ticket.first,))
        elif ticket.kind == "slots" and ok:
            self._settle(ticket.vid, range(ticket.first, ticket.first + len(ticket.values)))

    def count_refused(self) -> None:
        with self._cond:
            self.refused += 1

    def _just_frozen(self, vid: int) -> bool:
        """Whether a snapshot of ``vid`` was answered within the window (lock held)."""
        at = self._frozen_at.get(vid)
        return at is not None and self._clock() - at <= self.readonly_window

    def local_answer(self, ticket: Ticket, request: Request) -> Response | None:
        """The answer the guard gives without the cluster, if any: READONLY for
        a data write of a VDI just snapshotted (what the cluster would say)."""
        if ticket.kind != "readonly":
            return None
        self.count_refused()
        return result_response(request, int(Result.READONLY))

    def busy(self) -> bool:
        """Whether a snapshot runs, gates creates, or was answered within the window."""
        if not self.draining and not self._gated and not self._frozen_at:
            return False
        with self._cond:
            return bool(self.draining or self._gated
                        or any(self._just_frozen(vid) for vid in self._frozen_at))

    def _start_snapshot(self, vid: int) -> Ticket:
        if self.on_snapshot is not None:
            self.on_snapshot()
        start = self._clock()
        deadline = start + self.drain_timeout
        with self._cond:
            self.draining += 1
            try:
                drained = self._drain(vid, deadline)
            finally:
                self.draining -= 1
            self._gated.add(vid)
        now = self._clock()
        return Ticket("snapshot", vid, first=int(drained), waited=now - start, admitted=now)

    def _drain(self, vid: int, deadline: float) -> bool:
        """Wait (lock held) until ``vid`` has no pending create; False when
        ``deadline`` came first."""
        while True:
            pending = self._pending.get(vid)
            if pending is not None:
                stale = [i for i, t in pending.since.items()
                         if self._clock() - t > self.gate_timeout]
                for idx in stale:
                    del pending.since[idx]
            if pending is None or not pending.since:
                return True
            left = deadline - self._clock()
            if left <= 0:
                LOG.warning("gateway: snapshot of vdi %x goes ahead with %d create(s) "
                            "still waiting for their slot write (their slots will be "
                            "re-applied)", vid, len(pending.since))
                return False
            self._cond.wait(left)

    # -- after forwarding ----------------------------------------------------

    def after(self, ticket: Ticket, request: Request, response: Response) -> Response:
        if ticket.kind == "slots" and response.ok:
            target = self.working(ticket.vid)
            if target != ticket.vid:
                self._reapply(ticket, target)
        if ticket.kind in ("create", "slots"):
            self.after_answer(ticket, response.ok)
        elif ticket.kind == "snapshot":
            self._finish_snapshot(ticket, response)
        return response

    def _settle(self, vid: int, indexes: range | tuple[int, ...]) -> None:
        with self._cond:
            pending = self._pending.get(vid)
            if pending is None:
                return
            for idx in indexes:
                pending.since.pop(idx, None)
            if not pending.since:
                del self._pending[vid]
                self._cond.notify_all()

    def _finish_snapshot(self, ticket: Ticket, response: Response) -> None:
        new_vid = response.body.vdi_id if isinstance(response.body, VdiResponse) else 0
        with self._cond:
            self._gated.discard(ticket.vid)
            if response.ok and new_vid:
                self._frozen[ticket.vid] = new_vid
                self._frozen_at[ticket.vid] = self._clock()
                while len(self._frozen) > _MAX_FROZEN:
                    old, _ = self._frozen.popitem(last=False)
                    self._frozen_at.pop(old, None)
                self.events.append(SnapshotEvent(ticket.vid, new_vid, ticket.waited,
                                                 bool(ticket.first),
                                                 self._clock() - ticket.admitted))
                del self.events[:-1000]
            self._cond.notify_all()

    def working(self, vid: int) -> int:
        """The working vid that followed ``vid`` through the snapshots seen."""
        with self._cond:
            seen = {vid}
            while vid in self._frozen:
                vid = self._frozen[vid]
                if vid in seen:
                    break
                seen.add(vid)
            return vid

    def _reapply(self, ticket: Ticket, target: int) -> None:
        """Set on ``target``'s inode the slots the writer gave to its own
        (now frozen) vid, unless ``target`` already has its own object there."""
        first, values = ticket.first, ticket.values
        offset = SD_INODE_INDEX_OFFSET + first * _SLOT
        length = len(values) * _SLOT
        oid = vid_to_vdi_oid(target)
        read = self._forward(rq.read_obj(oid, offset, length))
        if not read.ok or len(read.payload) != length:
            LOG.error("gateway: cannot read slots of vdi %x to re-apply (result %#x)",
                      target, read.result)
            return
        current = list(struct.unpack(f"<{len(values)}I", read.payload))
        merged = list(current)
        for i, value in enumerate(values):
            if value == ticket.vid and current[i] != target and current[i] != value:
                merged[i] = value
        if merged == current:
            return
        payload = struct.pack(f"<{len(merged)}I", *merged)
        wrote = self._forward(rq.write_obj(oid, offset, payload))
        if wrote.ok:
            changed = sum(1 for a, b in zip(current, merged, strict=True) if a != b)
            self.reapplied += changed
            LOG.info("gateway: re-applied %d slot(s) of frozen vdi %x to vdi %x", changed,
                     ticket.vid, target)
        else:
            LOG.error("gateway: re-applying slots to vdi %x failed (result %#x)", target,
                      wrote.result)
