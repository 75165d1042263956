"""SheepdogClient: the public face of the native client.

How it works: every public method validates its input first (InvalidInput,
nothing sent), then runs an *attempt* function on a connection from the
healthiest gateway (``Cluster.run``) under the ``RetryPolicy``.  Reads,
lookups and lists simply run again.  Operations that change state and are not
idempotent on the wire (create, snapshot, clone, resize, delete, rollback,
format, exclusive set_attr) keep a small per-call state: once their decisive
request has been sent without a definite answer, the next attempt starts by
*reconciling* - looking at what exists and either accepting it as done,
raising ReconcileConflict when it differs from what was asked, or carrying on
because it did not happen.  A decisive request is never sent twice unless the
reconciliation showed it had no effect, so a lost reply never produces a
second snapshot or VDI.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import BinaryIO, TypeVar

from sheepdog_backend.client import io as dio
from sheepdog_backend.client import requests as rq
from sheepdog_backend.client import vdi as ops
from sheepdog_backend.client.cluster import Cluster
from sheepdog_backend.client.models import VdiInfo, encode_text
from sheepdog_backend.client.retry import RetryPolicy
from sheepdog_backend.client.transport import Address, Connection, request_was_sent
from sheepdog_backend.exception import (
    InvalidInput,
    NoObject,
    NoTag,
    NoVdi,
    ReconcileConflict,
    RetryExhausted,
    ServerError,
    TransportError,
    VdiExists,
    VdiLocked,
    error_for_code,
)
from sheepdog_backend.protocol.constants import (
    SD_MAX_BLOCK_SIZE_SHIFT,
    SD_MAX_COPIES,
    SD_MIN_BLOCK_SIZE_SHIFT,
    ClusterFlag,
    Flag,
    flat_max_vdi_size,
)
from sheepdog_backend.protocol.header import Request
from sheepdog_backend.protocol.inode import OFFSET_TAG, InodeHeader
from sheepdog_backend.protocol.naming import validate_name, validate_tag
from sheepdog_backend.protocol.oid import vid_to_vdi_oid
from sheepdog_backend.protocol.structs import (
    ClusterInfo,
    SdNode,
    decode_node_list,
    ec_decode,
    make_ctime,
)

T = TypeVar("T")
_MIN_FLAT_LIMIT = flat_max_vdi_size(SD_MIN_BLOCK_SIZE_SHIFT)
_SEGMENT = 64 << 20


class _Attempt:
    """Per-call memory of what earlier attempts may have done."""

    def __init__(self) -> None:
        self.maybe_applied = False
        self.stage = ""
        self.value: object = None


def _check_size(size: object, what: str = "size") -> int:
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise InvalidInput(f"{what} must be a positive number of bytes, got {size!r}")
    return size


def _check_flat(size: int, shift: int) -> None:
    limit = flat_max_vdi_size(shift)
    if size > limit:
        raise InvalidInput(f"size {size} exceeds the flat-VDI limit {limit} "
                           f"(2^20 objects of {1 << shift} bytes)")


class SheepdogClient:
    def __init__(self, gateways: Sequence[str], *, connect_timeout: float = 5.0,
                 request_timeout: float = 30.0, pool_size: int = 4,
                 retry: RetryPolicy | None = None, io_window: int = 16) -> None:
        if not isinstance(io_window, int) or io_window < 1:
            raise InvalidInput(f"io_window must be a positive integer, got {io_window!r}")
        self.cluster = Cluster(gateways, connect_timeout=connect_timeout,
                               request_timeout=request_timeout, pool_size=pool_size)
        self.retry = retry if retry is not None else RetryPolicy()
        self.io_window = io_window

    def close(self) -> None:
        self.cluster.close()

    def __enter__(self) -> SheepdogClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _run(self, fn: Callable[[Connection], T], *, what: str,
             wait_for_lock: bool = False) -> T:
        return self.retry.call(lambda: self.cluster.run(fn), what=what,
                               wait_for_lock=wait_for_lock)

    def _decisive(self, state: _Attempt, conn: Connection, request: Request) -> int:
        """Send the request that changes state; remember if its fate is unknown."""
        state.maybe_applied = True
        try:
            return ops.new_vdi(conn, request)
        except ServerError:
            state.maybe_applied = False  # a definite 'no'
            raise

    # -- cluster -------------------------------------------------------------

    def cluster_info(self) -> ClusterInfo:
        return self._run(lambda c: ClusterInfo.decode(ops.check(c.call(rq.cluster_info()))
                                                      .payload), what="cluster info")

    def format_cluster(self, copies: int = 1, *, copy_policy: int = 0,
                       block_size_shift: int = 22, flags: int = ClusterFlag.AUTO_VNODES,
                       store: str = "plain") -> None:
        if not 1 <= copies <= SD_MAX_COPIES:
            raise InvalidInput(f"copies must be 1..{SD_MAX_COPIES}, got {copies}")
        if not SD_MIN_BLOCK_SIZE_SHIFT <= block_size_shift <= SD_MAX_BLOCK_SIZE_SHIFT:
            raise InvalidInput(f"block_size_shift must be 20..31, got {block_size_shift}")
        if not store or not store.isascii() or not store.isalnum() or len(store) > 15:
            raise InvalidInput(f"invalid store driver name {store!r}")
        now = time.time()
        ctime = make_ctime(int(now), int((now % 1) * 1e6))
        state = _Attempt()

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
        self._run(attempt, what="format cluster")

    def node_list(self) -> list[SdNode]:
        def attempt(conn: Connection) -> list[SdNode]:
            rsp = ops.check(conn.call(rq.get_node_list()))
            body = rsp.body
            nr = getattr(body, "nr_nodes", 0)
            return decode_node_list(rsp.payload, nr)
        return self._run(attempt, what="node list")

    def discover_gateways(self) -> list[str]:
        """Add every node GET_NODE_LIST reports as a gateway; return the new ones."""
        nodes = self.node_list()
        added = self.cluster.add_gateways(Address(n.nid.addr, n.nid.port) for n in nodes)
        return [str(a) for a in added]

    def capacity(self) -> tuple[int, int]:
        """(total, free) bytes summed over the nodes (STAT_SHEEP on each node)."""
        total = free = 0
        for node in self.node_list():
            address = Address(node.nid.addr, node.nid.port)
            self.cluster.add_gateway(address)

            def stat(conn: Connection) -> tuple[int, int]:
                body = ops.check(conn.call(rq.stat_sheep())).body
                return getattr(body, "store_size", 0), getattr(body, "store_free", 0)
            size, avail = self._stat_node(address, stat)
            total += size
            free += avail
        return total, free

    def _stat_node(self, address: Address, stat: Callable[[Connection], tuple[int, int]]
                   ) -> tuple[int, int]:
        return self.retry.call(lambda: self.cluster.run_on(address, stat),
                               what=f"stat {address}")

    def gateways_by_health(self) -> list[tuple[str, int]]:
        return [(h.address.host, h.address.port) for h in self.cluster.ordered()]

    # -- lookups -------------------------------------------------------------

    def get_vdi(self, name: str, tag: str = "", snapid: int = 0) -> VdiInfo:
        raw, rawtag = validate_name(encode_text(name)), validate_tag(encode_text(tag))
        return self._run(lambda c: VdiInfo.from_header(ops.resolve(c, raw, rawtag, snapid)),
                         what=f"get VDI {name!r}")

    def find_vdi(self, name: str, tag: str = "", snapid: int = 0) -> VdiInfo | None:
        try:
            return self.get_vdi(name, tag, snapid)
        except (NoVdi, NoTag):
            return None

    def get_vdi_by_vid(self, vid: int) -> VdiInfo:
        """The inode header of VDI id ``vid`` (one READ_OBJ of its inode object).

        Deleted inodes are returned too: DEL_VDI clears the name and size but
        keeps tag, snap_id, parent and times (protocol §9.4), so a deleted one
        has ``name == ""`` and ``size == 0``.  NoVdi when no inode object exists
        for ``vid``; InvalidInput for a value that is not a 24-bit VDI id."""
        if isinstance(vid, bool) or not isinstance(vid, int) or not 0 < vid < 1 << 24:
            raise InvalidInput(f"{vid!r} is not a VDI id (1..0xffffff)")

        def attempt(conn: Connection) -> VdiInfo:
            try:
                return VdiInfo.from_header(ops.read_header(conn, vid))
            except NoObject:
                raise NoVdi(f"no inode object exists for VDI id {vid:#x}") from None
        return self._run(attempt, what=f"read inode {vid:#x}")

    def list_vdis(self, *, with_usage: bool = False) -> list[VdiInfo]:
        return self._run(lambda c: ops.list_vdis(c, self.io_window, with_usage=with_usage),
                         what="list VDIs")

    @staticmethod
    def _find(conn: Connection, name: bytes, tag: bytes = b"") -> InodeHeader | None:
        try:
            return ops.resolve(conn, name, tag)
        except (NoVdi, NoTag):
            return None

    # -- create --------------------------------------------------------------

    def create_vdi(self, name: str, size: int, *, copies: int = 0, copy_policy: int = 0,
                   block_size_shift: int = 0, prealloc: bool = False) -> VdiInfo:
        raw = validate_name(encode_text(name))
        _check_size(size)
        if not 0 <= copies <= SD_MAX_COPIES:
            raise InvalidInput(f"copies must be 0..{SD_MAX_COPIES}, got {copies}")
        if copy_policy:
            data, parity = ec_decode(copy_policy)
            if data not in (2, 4, 8, 16) or not 1 <= parity <= 15 or copy_policy > 0xFF:
                raise InvalidInput(f"copy_policy {copy_policy:#x} is not an erasure code")
            if copies not in (0, data + parity):
                raise InvalidInput(f"erasure code {data}:{parity} needs copies "
                                   f"{data + parity}, got {copies}")
            copies = data + parity
        if block_size_shift and not (
                SD_MIN_BLOCK_SIZE_SHIFT <= block_size_shift <= SD_MAX_BLOCK_SIZE_SHIFT):
            raise InvalidInput(f"block_size_shift must be 0 or 20..31, got {block_size_shift}")
        if block_size_shift:
            _check_flat(size, block_size_shift)
        elif size > flat_max_vdi_size(SD_MAX_BLOCK_SIZE_SHIFT):
            _check_flat(size, SD_MAX_BLOCK_SIZE_SHIFT)
        state = _Attempt()

        def matches(hdr: InodeHeader) -> bool:
            return (hdr.vdi_size == size and hdr.parent_vdi_id == 0
                    and (not copies or hdr.nr_copies == copies)
                    and (not copy_policy or hdr.copy_policy == copy_policy)
                    and (not block_size_shift or hdr.block_size_shift == block_size_shift))

        def attempt(conn: Connection) -> VdiInfo:
            hdr: InodeHeader | None = None
            if state.maybe_applied:
                hdr = self._find(conn, raw)
                if hdr is not None and not matches(hdr):
                    raise ReconcileConflict(
                        f"create {name!r} lost its reply and a VDI of that name exists with "
                        f"other attributes (size {hdr.vdi_size}, parent {hdr.parent_vdi_id:#x})")
            if hdr is None:
                if size > _MIN_FLAT_LIMIT and not block_size_shift:
                    _check_flat(size, ops.cluster_default_shift(conn))
                vid = self._decisive(state, conn, rq.new_vdi(
                    raw, size, copies=copies, copy_policy=copy_policy,
                    block_size_shift=block_size_shift))
                hdr = ops.read_header(conn, vid)
            if prealloc:
                dio.preallocate(conn, hdr, self.io_window)
            return VdiInfo.from_header(hdr)
        return self._run(attempt, what=f"create VDI {name!r}")

    # -- snapshot ------------------------------------------------------------

    def snapshot_vdi(self, name: str, tag: str) -> VdiInfo:
        raw, rawtag = validate_name(encode_text(name)), validate_tag(encode_text(tag))
        if not rawtag:
            raise InvalidInput("a snapshot needs a non-empty tag")
        state = _Attempt()

        def restore_tag(conn: Connection, vid: int) -> None:
            hdr = ops.read_header(conn, vid)
            if hdr.tag == rawtag and not hdr.is_snapshot:
                ops.check(conn.call(rq.write_obj(
                    vid_to_vdi_oid(vid), OFFSET_TAG, bytes(256), copies=hdr.nr_copies,
                    copy_policy=hdr.copy_policy)))

        def attempt(conn: Connection) -> VdiInfo:
            if state.maybe_applied:
                done = self._find(conn, raw, rawtag)
                if done is not None and done.is_snapshot:
                    return VdiInfo.from_header(done)
                if isinstance(state.value, int):
                    restore_tag(conn, state.value)
                state.maybe_applied = False
            by_tag, working = ops.pipeline(conn, [rq.get_vdi_info(raw, rawtag),
                                                  rq.get_vdi_info(raw)], 2, raise_errors=False)
            if by_tag.ok:
                raise VdiExists(f"VDI {name!r} already has a snapshot tagged {tag!r}")
            if not isinstance(error_for_code(by_tag.result), (NoTag, NoVdi)):
                ops.check(by_tag)
            vid = ops.vdi_body(ops.check(working)).vdi_id
            hdr = ops.read_header(conn, vid)
            if hdr.store_policy != 0:
                raise InvalidInput("snapshots of hyper volumes are not supported")
            state.value = vid
            state.maybe_applied = True  # from here the tag is on the working inode
            ops.write_tag(conn, hdr, rawtag)
            try:
                ops.new_vdi(conn, rq.new_vdi(
                    raw, hdr.vdi_size, base_vid=vid, snapshot=True, copies=hdr.nr_copies,
                    copy_policy=hdr.copy_policy, store_policy=hdr.store_policy,
                    block_size_shift=hdr.block_size_shift))
            except ServerError:
                restore_tag(conn, vid)  # definite failure: leave no stray tag behind
                state.maybe_applied = False
                raise
            return VdiInfo.from_header(ops.read_header(conn, vid))

        try:
            return self._run(attempt, what=f"snapshot {name!r}")
        except RetryExhausted:
            if state.maybe_applied and isinstance(state.value, int):
                self._best_effort_restore(raw, rawtag, state.value, restore_tag)
            raise

    def _best_effort_restore(self, raw: bytes, rawtag: bytes, vid: int,
                             restore: Callable[[Connection, int], None]) -> None:
        def fix(conn: Connection) -> None:
            if self._find(conn, raw, rawtag) is None:
                restore(conn, vid)
        try:
            self.cluster.run(fix)
        except Exception:
            pass

    # -- clone / resize / rollback -------------------------------------------

    def clone_vdi(self, src_name: str, src_tag: str, dst_name: str, *,
                  size: int | None = None) -> VdiInfo:
        src, tag = validate_name(encode_text(src_name)), validate_tag(encode_text(src_tag))
        dst = validate_name(encode_text(dst_name))
        if not tag:
            raise InvalidInput(f"only snapshots can be cloned: give the tag of a snapshot of "
                               f"{src_name!r}")
        if size is not None:
            _check_size(size)
        state = _Attempt()

        def attempt(conn: Connection) -> VdiInfo:
            base = ops.resolve(conn, src, tag)
            if not base.is_snapshot:
                raise InvalidInput(f"{src_name!r} tag {src_tag!r} is a working VDI; only "
                                   "snapshots can be cloned")
            want = base.vdi_size if size is None else size
            if want < base.vdi_size:
                raise InvalidInput(f"a clone cannot be smaller than its source "
                                   f"({want} < {base.vdi_size})")
            _check_flat(want, base.block_size_shift)
            if state.maybe_applied:
                hdr = self._find(conn, dst)
                if hdr is not None:
                    if hdr.parent_vdi_id == base.vdi_id and hdr.vdi_size == want:
                        return VdiInfo.from_header(hdr)
                    raise ReconcileConflict(
                        f"clone {dst_name!r} lost its reply and a different VDI of that "
                        "name exists")
            vid = self._decisive(state, conn, rq.new_vdi(
                dst, want, base_vid=base.vdi_id, copies=base.nr_copies,
                copy_policy=base.copy_policy, store_policy=base.store_policy,
                block_size_shift=base.block_size_shift))
            return VdiInfo.from_header(ops.read_header(conn, vid))
        return self._run(attempt, what=f"clone {src_name!r}@{src_tag!r} to {dst_name!r}")

    def resize_vdi(self, name: str, new_size: int) -> VdiInfo:
        raw = validate_name(encode_text(name))
        _check_size(new_size, "new size")
        state = _Attempt()

        def attempt(conn: Connection) -> VdiInfo:
            hdr = ops.resolve(conn, raw)
            if hdr.vdi_size == new_size:
                return VdiInfo.from_header(hdr)
            if hdr.vdi_size > new_size:
                if state.maybe_applied:
                    raise ReconcileConflict(f"{name!r} is now {hdr.vdi_size} bytes, larger "
                                            f"than the {new_size} asked for")
                raise InvalidInput(f"shrinking is not supported ({hdr.vdi_size} -> "
                                   f"{new_size})")
            if hdr.store_policy != 0:
                raise InvalidInput("resizing hyper volumes is not supported")
            _check_flat(new_size, hdr.block_size_shift)
            state.maybe_applied = True
            ops.write_size(conn, hdr, new_size)
            return VdiInfo.from_header(hdr.evolve(vdi_size=new_size))
        return self._run(attempt, what=f"resize {name!r}")

    def rollback_vdi(self, name: str, tag: str) -> VdiInfo:
        raw, rawtag = validate_name(encode_text(name)), validate_tag(encode_text(tag))
        if not rawtag:
            raise InvalidInput("rollback needs the tag of a snapshot")
        state = _Attempt()

        def attempt(conn: Connection) -> VdiInfo:
            snap = ops.resolve(conn, raw, rawtag)
            if not snap.is_snapshot:
                raise InvalidInput(f"{name!r} tag {tag!r} is not a snapshot")
            working = self._find(conn, raw)
            if state.stage == "new":
                # the old working VDI is gone; did our NEW_VDI land before its reply was lost?
                if working is not None:
                    if working.parent_vdi_id == snap.vdi_id and working.vdi_id != state.value:
                        return VdiInfo.from_header(working)
                    raise ReconcileConflict(f"rollback of {name!r} lost its reply and a "
                                            "different working VDI of that name exists")
            elif working is not None:
                state.value = working.vdi_id
                ops.clear_slots(conn, working, self.io_window)
                ops.del_vdi(conn, raw)
            state.stage = "new"
            vid = ops.new_vdi(conn, rq.new_vdi(
                raw, snap.vdi_size, base_vid=snap.vdi_id, copies=snap.nr_copies,
                copy_policy=snap.copy_policy, store_policy=snap.store_policy,
                block_size_shift=snap.block_size_shift))
            return VdiInfo.from_header(ops.read_header(conn, vid))
        return self._run(attempt, what=f"rollback {name!r} to {tag!r}")

    # -- delete --------------------------------------------------------------

    def delete_vdi(self, name: str, tag: str = "") -> bool:
        raw, rawtag = validate_name(encode_text(name)), validate_tag(encode_text(tag))
        state = _Attempt()

        def attempt(conn: Connection) -> bool:
            hdr = self._find(conn, raw, rawtag)
            if hdr is None:
                return state.maybe_applied  # gone: by our earlier attempt, or never there
            ops.clear_slots(conn, hdr, self.io_window)
            state.maybe_applied = True
            try:
                ops.del_vdi(conn, raw, rawtag)
            except (NoVdi, NoTag):
                return False
            return True
        return self._run(attempt, what=f"delete {name!r}")

    # -- attributes and locks ------------------------------------------------

    def set_attr(self, name: str, key: str, value: bytes, *, exclusive: bool = False
                 ) -> None:
        raw, rawkey = validate_name(encode_text(name)), encode_text(key)
        value = bytes(value)
        flags = Flag.CREAT | (Flag.EXCL if exclusive else 0)
        req = ops.attr_request(raw, rawkey, value, flags=flags)
        state = _Attempt()

        def attempt(conn: Connection) -> None:
            try:
                state.maybe_applied = True
                ops.check(conn.call(req))
            except VdiExists:
                if exclusive and state.stage == "sent" and \
                        ops.get_attr(conn, raw, rawkey) == value:
                    return  # our own earlier attempt created it
                raise
            finally:
                state.stage = "sent"
        self._run(attempt, what=f"set attribute {key!r} of {name!r}")

    def get_attr(self, name: str, key: str) -> bytes | None:
        raw, rawkey = validate_name(encode_text(name)), encode_text(key)
        ops.attr_request(raw, rawkey)  # validates the key
        return self._run(lambda c: ops.get_attr(c, raw, rawkey),
                         what=f"get attribute {key!r} of {name!r}")

    def delete_attr(self, name: str, key: str) -> bool:
        raw, rawkey = validate_name(encode_text(name)), encode_text(key)
        req = ops.attr_request(raw, rawkey, flags=Flag.DEL)
        state = _Attempt()

        def attempt(conn: Connection) -> bool:
            sent_before = state.maybe_applied
            state.maybe_applied = True
            try:
                ops.check(conn.call(req))
            except NoObject:
                return sent_before
            return True
        return self._run(attempt, what=f"delete attribute {key!r} of {name!r}")

    def lock_vdi(self, name: str, tag: str = "", *, wait: bool = False) -> VdiInfo:
        """LOCK_VDI.  A lost reply cannot be reconciled (the lock owner is the
        sheep node, not the client), so VdiLocked after one says so."""
        raw, rawtag = validate_name(encode_text(name)), validate_tag(encode_text(tag))
        state = _Attempt()

        def attempt(conn: Connection) -> VdiInfo:
            try:
                state.maybe_applied = True
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
        return self._run(attempt, what=f"lock {name!r}", wait_for_lock=wait)

    def release_vdi(self, vid: int) -> None:
        if not isinstance(vid, int) or not 0 < vid < 1 << 24:
            raise InvalidInput(f"{vid!r} is not a VDI id")
        def attempt(conn: Connection) -> None:
            ops.check(conn.call(rq.release_vdi(vid)))
        self._run(attempt, what=f"release {vid:#x}")

    # -- data ----------------------------------------------------------------

    def read(self, name: str, offset: int, length: int, *, tag: str = "") -> bytes:
        raw, rawtag = validate_name(encode_text(name)), validate_tag(encode_text(tag))
        dio._check_range(offset, length)

        def attempt(conn: Connection) -> bytes:
            layout = dio.open_layout(conn, raw, rawtag, offset, length, self.io_window)
            return dio.read_bytes(conn, layout, offset, length, self.io_window)
        return self._run(attempt, what=f"read {name!r}")

    def read_to_file(self, name: str, fileobj: BinaryIO, *, tag: str = "",
                     length: int | None = None) -> int:
        raw, rawtag = validate_name(encode_text(name)), validate_tag(encode_text(tag))
        if length is not None:
            dio._check_range(0, length)
        start = fileobj.tell() if fileobj.seekable() else None
        tries = [0]

        def attempt(conn: Connection) -> int:
            if tries[0]:
                if start is None:
                    raise InvalidInput("transfer failed and the target cannot be rewound")
                fileobj.seek(start)
            tries[0] += 1
            hdr = ops.resolve(conn, raw, rawtag)
            n = hdr.vdi_size if length is None else length
            layout = dio.open_layout(conn, raw, rawtag, 0, n, self.io_window)
            return dio.read_stream(conn, layout, 0, n, self.io_window, fileobj.write)
        return self._run(attempt, what=f"read {name!r} to a file")

    def write(self, name: str, offset: int, data: bytes) -> None:
        raw = validate_name(encode_text(name))
        dio._check_range(offset, len(data))
        if not data:
            return
        source = dio.bytes_source(data)
        self._run(lambda c: dio.write_with_redo(c, raw, offset, len(data), source,
                                                self.io_window), what=f"write {name!r}")

    def write_from_file(self, name: str, fileobj: BinaryIO, *, offset: int = 0) -> int:
        raw = validate_name(encode_text(name))
        dio._check_range(offset, 0)
        length = dio.remaining_length(fileobj)
        if length is not None:
            if length == 0:
                return 0
            source = dio.file_source(fileobj)
            return self._run(lambda c: dio.write_with_redo(c, raw, offset, length, source,
                                                           self.io_window),
                             what=f"write {name!r} from a file")
        done = 0
        while True:  # unknown length (a pipe): buffered segments
            segment = fileobj.read(_SEGMENT)
            if not segment:
                return done
            self.write(name, offset + done, segment)
            done += len(segment)
