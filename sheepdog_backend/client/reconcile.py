"""Attempts of the state-changing client operations, safe to run again.

How it works: each function here takes an operation's validated arguments and
returns its *attempt* - a function of one connection that ``SheepdogClient``
runs under its ``RetryPolicy`` - together with a small per-call state
(``Attempt``) the attempts share.  Operations that are not idempotent on the
wire (format, create, snapshot, clone, resize, delete, rollback, exclusive
set_attr) remember when their decisive request was sent without a definite
answer; the next attempt then starts by *reconciling*: looking at what
exists and either accepting it as done, raising ReconcileConflict when it
differs from what was asked, or carrying on because it did not happen.  A
decisive request is never sent twice unless the reconciliation showed it had
no effect, so a lost reply never produces a second snapshot or VDI.
"""

from __future__ import annotations

from collections.abc import Callable

from sheepdog_backend.client import requests as rq
from sheepdog_backend.client import vdi as ops
from sheepdog_backend.client import write as dwr
from sheepdog_backend.client.models import VdiInfo
from sheepdog_backend.client.transport import Connection, request_was_sent
from sheepdog_backend.exception import (
    InvalidInput,
    NodeInRecovery,
    NoObject,
    NoTag,
    NoVdi,
    ReconcileConflict,
    ServerError,
    SnapshotInDoubt,
    TransportError,
    VdiExists,
    VdiLocked,
    error_for_code,
)
from sheepdog_backend.protocol.constants import (
    SD_MAX_VDI_SIZE,
    SD_MIN_BLOCK_SIZE_SHIFT,
    flat_max_vdi_size,
)
from sheepdog_backend.protocol.header import Request
from sheepdog_backend.protocol.inode import OFFSET_TAG, InodeHeader
from sheepdog_backend.protocol.oid import vid_to_vdi_oid
from sheepdog_backend.protocol.structs import ClusterInfo

_MIN_FLAT_LIMIT = flat_max_vdi_size(SD_MIN_BLOCK_SIZE_SHIFT)


class Attempt:
    """Per-call memory of what earlier attempts may have done."""

    def __init__(self) -> None:
        self.maybe_applied = False
        self.stage = ""
        self.value: object = None


def check_flat(size: int, shift: int) -> None:
    limit = flat_max_vdi_size(shift)
    if size > limit:
        raise InvalidInput(f"size {size} exceeds the flat-VDI limit {limit} "
                           f"(2^20 objects of {1 << shift} bytes)")


def find(conn: Connection, name: bytes, tag: bytes = b"", snapid: int = 0
         ) -> InodeHeader | None:
    try:
        return ops.resolve(conn, name, tag, snapid)
    except (NoVdi, NoTag):
        return None


def first_known(state: Attempt, known: InodeHeader | None) -> InodeHeader | None:
    """``known`` (a header the caller read just before) on an attempt's first
    run only: any retry looks again."""
    if state.stage or state.maybe_applied:
        return None
    state.stage = "started"
    return known


def decisive(state: Attempt, conn: Connection, request: Request) -> int:
    """Send the request that changes state; remember if its fate is unknown."""
    state.maybe_applied = True
    try:
        return ops.new_vdi(conn, request)
    except ServerError:
        state.maybe_applied = False  # a definite 'no'
        raise


# -- cluster -----------------------------------------------------------------


def format_cluster(ctime: int, *, copies: int, copy_policy: int, block_size_shift: int,
                   flags: int, store: str) -> Callable[[Connection], None]:
    state = Attempt()

    def attempt(conn: Connection) -> None:
        if state.maybe_applied:
            info = ClusterInfo.decode(ops.check(conn.call(rq.cluster_info())).payload)
            if info.ctime == ctime:
                return
        state.maybe_applied = True
        rsp = conn.call(rq.make_fs(ctime=ctime, copies=copies, copy_policy=copy_policy,
                                   flags=flags, block_size_shift=block_size_shift,
                                   store=store))
        if not rsp.ok:
            state.maybe_applied = False
        ops.check(rsp)
    return attempt


# -- create / snapshot -------------------------------------------------------


def create(raw: bytes, name: str, size: int, *, copies: int, copy_policy: int,
           block_size_shift: int, prealloc: bool, window: int, hyper: bool = False
           ) -> Callable[[Connection], VdiInfo]:
    state = Attempt()

    def matches(hdr: InodeHeader) -> bool:
        return (hdr.vdi_size == size and hdr.parent_vdi_id == 0
                and (not copies or hdr.nr_copies == copies)
                and (not copy_policy or hdr.copy_policy == copy_policy)
                and (not block_size_shift or hdr.block_size_shift == block_size_shift)
                and hdr.store_policy == int(hyper))

    def attempt(conn: Connection) -> VdiInfo:
        hdr: InodeHeader | None = None
        if state.maybe_applied:
            hdr = find(conn, raw)
            if hdr is not None and not matches(hdr):
                raise ReconcileConflict(
                    f"create {name!r} lost its reply and a VDI of that name exists with "
                    f"other attributes (size {hdr.vdi_size}, parent {hdr.parent_vdi_id:#x})")
        if hdr is None:
            if size > _MIN_FLAT_LIMIT and not block_size_shift and not hyper:
                check_flat(size, ops.cluster_default_shift(conn))
            vid = decisive(state, conn, rq.new_vdi(
                raw, size, copies=copies, copy_policy=copy_policy,
                block_size_shift=block_size_shift, store_policy=int(hyper)))
            hdr = ops.read_header(conn, vid)
        if prealloc:
            dwr.preallocate(conn, hdr, window)
        return VdiInfo.from_header(hdr)
    return attempt


def clear_stray_tag(conn: Connection, hdr: InodeHeader, rawtag: bytes) -> bool:
    """Clear ``rawtag`` from the working inode ``hdr`` when it carries it (a
    snapshot that stopped between tagging it and NEW_VDI); True when it did."""
    if not rawtag or hdr.tag != rawtag or hdr.is_snapshot:
        return False
    ops.check(conn.call(rq.write_obj(vid_to_vdi_oid(hdr.vdi_id), OFFSET_TAG, bytes(256),
                                     copies=hdr.nr_copies, copy_policy=hdr.copy_policy)))
    return True


class Snapshot:
    """The snapshot attempt: tag the working inode, NEW_VDI(snapshot), then
    make sure the inode *this* request froze carries the caller's tag.

    dog writes the tag onto the working inode W and sends NEW_VDI; two
    snapshots of one VDI at once then freeze each other's tag (or none).  We
    send the same requests (within one client ``coord`` serialises snapshots
    of a name, so they cannot interleave), then read the new working inode N
    the NEW_VDI answered: this request froze the snapshot whose snap_id is
    N.snap_id - 1 - normally W - and if that inode's tag is not ours we write
    ours onto it by vid.  The attempt returns that frozen inode, so a caller
    can recognise (and delete by vid) exactly the snapshot it made.

    If another process snapshotted between our read of W and our NEW_VDI, the
    server took our request for a *rebase* (base W is no longer current): it
    froze the current inode C and built N from the stale W.  We then repair
    at once: NEW_VDI(snapshot, base=C) builds the working VDI from C again and
    the spurious frozen N is deleted.

    Between the tag write and NEW_VDI the tag sits on the working inode; a
    definite failure removes it at once, and ``stray_tag_vid`` names the inode
    that may still carry it when the retries ran out (``remove_stray_tag``)."""

    def __init__(self, raw: bytes, rawtag: bytes, name: str, tag: str,
                 window: int = 16, known: InodeHeader | None = None) -> None:
        self.raw, self.rawtag, self.name, self.tag = raw, rawtag, name, tag
        self.window = window
        self.state = Attempt()
        self.known = known  # the working inode, when the caller just read it

    def _restore_tag(self, conn: Connection, vid: int) -> None:
        clear_stray_tag(conn, ops.read_header(conn, vid), self.rawtag)

    def _claim(self, conn: Connection, hdr: InodeHeader) -> VdiInfo:
        """Make the frozen ``hdr`` carry our tag; return it."""
        if hdr.tag != self.rawtag:
            ops.write_tag(conn, hdr, self.rawtag)
            hdr = ops.read_header(conn, hdr.vdi_id)
            if hdr.tag != self.rawtag:
                raise ReconcileConflict(f"the tag of snapshot {hdr.vdi_id:#x} of "
                                        f"{self.name!r} changed under us")
        return VdiInfo.from_header(hdr)

    def _frozen_by_us(self, conn: Connection, base: InodeHeader, new_vid: int
                      ) -> InodeHeader:
        new = ops.read_header(conn, new_vid)
        if new.snap_id == base.snap_id + 1:
            return ops.read_header(conn, base.vdi_id)
        # rebase: our NEW_VDI froze the then-current inode, not ``base``
        frozen = [v for v in ops.list_family(conn, self.raw, self.window)
                  if v.is_snapshot and v.snap_id == new.snap_id - 1]
        if len(frozen) != 1:
            raise ReconcileConflict(f"cannot tell which snapshot of {self.name!r} the "
                                    f"snapshot request froze (working {new_vid:#x})")
        cur = ops.read_header(conn, frozen[0].vid)
        # the working VDI was built from the stale base: rebuild it from cur
        ops.new_vdi(conn, rq.new_vdi_from(self.raw, cur.vdi_size, cur, snapshot=True))
        spurious = ops.read_header(conn, new_vid)
        if spurious.is_snapshot and not spurious.tag:
            ops.clear_slots(conn, spurious, self.window)
            ops.del_vdi(conn, self.raw, b"", spurious.snap_id)
        return cur

    def _reconcile(self, conn: Connection, base_vid: int) -> VdiInfo | None:
        """After a lost reply: find the snapshot an earlier attempt made."""
        done = find(conn, self.raw, self.rawtag)
        working = find(conn, self.raw)
        if done is not None and done.is_snapshot:
            if working is None:
                raise self._in_doubt(done)
            return VdiInfo.from_header(done)
        if working is None:
            base = ops.read_header(conn, base_vid)
            if base.is_snapshot:
                raise self._in_doubt(base)
            return None  # NEW_VDI did not happen (the volume went another way)
        if working.vdi_id == base_vid:
            return None  # NEW_VDI did not happen
        base = ops.read_header(conn, base_vid)
        if base.is_snapshot and base.tag in (self.rawtag, b""):
            return self._claim(conn, base)
        later = sorted((v for v in ops.list_family(conn, self.raw, self.window)
                        if v.is_snapshot and not v.tag and v.snap_id > base.snap_id),
                       key=lambda v: v.snap_id)
        if later:
            return self._claim(conn, ops.read_header(conn, later[0].vid))
        return None

    def _working(self, conn: Connection) -> InodeHeader:
        """The working inode to snapshot; VdiExists when the tag is taken."""
        raw = self.raw
        by_tag, working = ops.pipeline(conn, [rq.get_vdi_info(raw, self.rawtag),
                                              rq.get_vdi_info(raw)], 2, raise_errors=False)
        if by_tag.ok:
            raise VdiExists(f"VDI {self.name!r} already has a snapshot tagged {self.tag!r}")
        if not isinstance(error_for_code(by_tag.result), (NoTag, NoVdi)):
            ops.check(by_tag)
        return ops.read_header(conn, ops.vdi_body(ops.check(working)).vdi_id)

    def _in_doubt(self, snap: InodeHeader) -> SnapshotInDoubt:
        return SnapshotInDoubt(
            f"snapshot {self.tag!r} of {self.name!r} was made (snapshot {snap.vdi_id:#x}), "
            f"but {self.name!r} has no working VDI visible: the node that answered "
            "most likely died while making it, and it reappears when that node "
            "rejoins; do not recreate the volume (wait for the node, or revert it "
            "to the snapshot)")

    def __call__(self, conn: Connection) -> VdiInfo:
        state, raw, rawtag = self.state, self.raw, self.rawtag
        if state.maybe_applied:
            if isinstance(state.value, int):
                try:
                    found = self._reconcile(conn, state.value)
                    if found is not None:
                        return found
                    self._restore_tag(conn, state.value)
                except NoObject:
                    # The inode existed a moment ago: right after a node died, a
                    # real sheep answers NO_OBJ for it until recovery moved a copy
                    # to its new place.  Transient: the retry asks again.
                    raise NodeInRecovery(f"the inode {state.value:#x} of {self.name!r} "
                                         "reads as missing while the cluster recovers "
                                         "from a node failure") from None
            state.maybe_applied = False
        hdr = first_known(state, self.known) or self._working(conn)
        vid = hdr.vdi_id
        if hdr.store_policy != 0:
            raise InvalidInput("snapshots of hyper volumes are not supported")
        state.value = vid
        state.maybe_applied = True  # from here the tag is on the working inode
        ops.write_tag(conn, hdr, rawtag)
        try:
            new_vid = ops.new_vdi(conn, rq.new_vdi_from(raw, hdr.vdi_size, hdr,
                                                        snapshot=True))
        except ServerError:
            self._restore_tag(conn, vid)  # definite failure: leave no stray tag behind
            state.maybe_applied = False
            raise
        return self._claim(conn, self._frozen_by_us(conn, hdr, new_vid))

    @property
    def stray_tag_vid(self) -> int | None:
        value = self.state.value
        return value if self.state.maybe_applied and isinstance(value, int) else None

    def remove_stray_tag(self, conn: Connection, vid: int) -> None:
        if find(conn, self.raw, self.rawtag) is None:
            self._restore_tag(conn, vid)


# -- clone / resize / rollback -----------------------------------------------


def clone(src: bytes, tag: bytes, dst: bytes, size: int | None, *, src_name: str,
          src_tag: str, dst_name: str, snapid: int = 0, known: InodeHeader | None = None
          ) -> Callable[[Connection], VdiInfo]:
    state = Attempt()

    def attempt(conn: Connection) -> VdiInfo:
        base = first_known(state, known) or ops.resolve(conn, src, tag, snapid)
        if not base.is_snapshot:
            raise InvalidInput(f"{src_name!r} tag {src_tag!r} is a working VDI; only "
                               "snapshots can be cloned")
        want = base.vdi_size if size is None else size
        if want < base.vdi_size:
            raise InvalidInput(f"a clone cannot be smaller than its source "
                               f"({want} < {base.vdi_size})")
        check_flat(want, base.block_size_shift)
        if state.maybe_applied:
            hdr = find(conn, dst)
            if hdr is not None:
                if hdr.parent_vdi_id == base.vdi_id and hdr.vdi_size == want:
                    return VdiInfo.from_header(hdr)
                raise ReconcileConflict(
                    f"clone {dst_name!r} lost its reply and a different VDI of that "
                    "name exists")
        vid = decisive(state, conn, rq.new_vdi_from(dst, want, base))
        return VdiInfo.from_header(ops.read_header(conn, vid))
    return attempt


def resize(raw: bytes, name: str, new_size: int, known: InodeHeader | None = None
           ) -> Callable[[Connection], VdiInfo]:
    state = Attempt()

    def attempt(conn: Connection) -> VdiInfo:
        hdr = first_known(state, known) or ops.resolve(conn, raw)
        if hdr.vdi_size == new_size:
            return VdiInfo.from_header(hdr)
        if hdr.vdi_size > new_size:
            if state.maybe_applied:
                raise ReconcileConflict(f"{name!r} is now {hdr.vdi_size} bytes, larger "
                                        f"than the {new_size} asked for")
            raise InvalidInput(f"shrinking is not supported ({hdr.vdi_size} -> "
                               f"{new_size})")
        if hdr.store_policy != 0:
            if new_size > SD_MAX_VDI_SIZE:
                raise InvalidInput(f"a hyper volume holds at most 16 PiB ({SD_MAX_VDI_SIZE} "
                                   f"bytes), not {new_size}")
        else:
            check_flat(new_size, hdr.block_size_shift)
        state.maybe_applied = True
        ops.write_size(conn, hdr, new_size)
        return VdiInfo.from_header(hdr.evolve(vdi_size=new_size))
    return attempt


def rollback(raw: bytes, rawtag: bytes, name: str, tag: str, window: int,
             size: int | None = None) -> Callable[[Connection], VdiInfo]:
    state = Attempt()

    def attempt(conn: Connection) -> VdiInfo:
        snap = ops.resolve(conn, raw, rawtag)
        if not snap.is_snapshot:
            raise InvalidInput(f"{name!r} tag {tag!r} is not a snapshot")
        working = find(conn, raw)
        if state.stage == "new":
            # the old working VDI is gone; did our NEW_VDI land before its reply was lost?
            if working is not None:
                if working.parent_vdi_id == snap.vdi_id and working.vdi_id != state.value:
                    return VdiInfo.from_header(working)
                raise ReconcileConflict(f"rollback of {name!r} lost its reply and a "
                                        "different working VDI of that name exists")
        elif working is not None:
            state.value = working.vdi_id
            ops.clear_slots(conn, working, window)
            ops.del_vdi(conn, raw)
        state.stage = "new"
        want = snap.vdi_size if size is None else max(size, snap.vdi_size)
        check_flat(want, snap.block_size_shift)
        vid = ops.new_vdi(conn, rq.new_vdi_from(raw, want, snap))
        return VdiInfo.from_header(ops.read_header(conn, vid))
    return attempt


# -- delete ------------------------------------------------------------------


def delete(raw: bytes, rawtag: bytes, window: int, snapid: int = 0,
           known: InodeHeader | None = None) -> Callable[[Connection], bool]:
    state = Attempt()

    def attempt(conn: Connection) -> bool:
        hdr = first_known(state, known) or find(conn, raw, rawtag, snapid)
        if hdr is None:
            return state.maybe_applied  # gone: by our earlier attempt, or never there
        ops.clear_slots(conn, hdr, window)
        state.maybe_applied = True
        try:
            ops.del_vdi(conn, raw, rawtag, snapid)
        except (NoVdi, NoTag):
            return False
        return True
    return attempt


def delete_vid(vid: int, window: int) -> Callable[[Connection], bool]:
    """Delete the VDI (working or snapshot) whose inode is ``vid``, found by
    name + snap_id, so a snapshot whose tag was lost can still be deleted."""
    state = Attempt()

    def attempt(conn: Connection) -> bool:
        try:
            hdr = ops.read_header(conn, vid)
        except NoObject:
            return state.maybe_applied
        if hdr.is_deleted:
            return state.maybe_applied
        snapid = hdr.snap_id if hdr.is_snapshot else 0
        try:
            found = ops.lookup(conn, hdr.name, b"", snapid).vdi_id
        except (NoVdi, NoTag):
            return state.maybe_applied
        if found != vid:
            raise ReconcileConflict(f"VDI {vid:#x} is not what {hdr.name!r} snapshot "
                                    f"{snapid} names ({found:#x})")
        ops.clear_slots(conn, hdr, window)
        state.maybe_applied = True
        try:
            ops.del_vdi(conn, hdr.name, b"", snapid)
        except (NoVdi, NoTag):
            return False
        return True
    return attempt


# -- attributes and locks ----------------------------------------------------


def set_attr(raw: bytes, rawkey: bytes, value: bytes, exclusive: bool, req: Request,
             snapid: int = 0) -> Callable[[Connection], None]:
    state = Attempt()

    def attempt(conn: Connection) -> None:
        try:
            ops.check(conn.call(req))
        except VdiExists:
            if exclusive and state.stage == "sent" and \
                    ops.get_attr(conn, raw, rawkey, snapid) == value:
                return  # our own earlier attempt created it
            raise
        finally:
            state.stage = "sent"
    return attempt


def delete_attr(req: Request) -> Callable[[Connection], bool]:
    state = Attempt()

    def attempt(conn: Connection) -> bool:
        sent_before = state.maybe_applied
        state.maybe_applied = True
        try:
            ops.check(conn.call(req))
        except NoObject:
            return sent_before
        return True
    return attempt


def lock(raw: bytes, rawtag: bytes, name: str) -> Callable[[Connection], VdiInfo]:
    """LOCK_VDI.  A lost reply cannot be reconciled (the lock owner is the
    sheep node, not the client), so VdiLocked after one says so."""
    state = Attempt()

    def attempt(conn: Connection) -> VdiInfo:
        try:
            body = ops.vdi_body(ops.check(conn.call(rq.lock_vdi(raw, rawtag))))
        except VdiLocked as exc:
            if state.stage == "sent":
                raise VdiLocked(f"{name!r} is locked; an earlier attempt of this call "
                                "lost its reply and may hold the lock") from exc
            raise
        except TransportError as exc:
            if request_was_sent(exc):
                state.stage = "sent"
            raise
        return VdiInfo.from_header(ops.read_header(conn, body.vdi_id))
    return attempt
