"""SheepdogClient: the public face of the native client.

How it works: every public method validates its input first (InvalidInput,
nothing sent), then runs an *attempt* function on a connection from the
healthiest gateway (``Cluster.run``) under the ``RetryPolicy``.  Reads,
lookups and lists simply run again.  Operations that change state and are not
idempotent on the wire get their attempt from ``reconcile``, which keeps a
small per-call state so that after a lost reply the next attempt reconciles
with what exists instead of sending the decisive request twice.

Every public call but a data transfer has one deadline, the retry policy's
``deadline`` from the moment it starts: each connection it uses refuses to
send or wait past it (``DeadlineExceeded``), so a gateway that answers
garbage cannot keep a call going.  Reads and writes last as long as their
size needs: each request is bounded by the request timeout and their number
by the range the caller gave.  A write held back by a snapshot of this client
waits at most the retry deadline for it; a snapshot waits for the writes in
flight however long they take.  Each attempt first runs the calling
thread's guards and types decoding errors (``guard.typed_attempt``): a
holder of a volume lease that ran out stops before its next request, and a
reply that does not decode becomes ``ProtocolError`` (its connection is
dropped), so a public call only ever raises ``SheepdogError`` subclasses.

Concurrency: a client is shared by threads.  ``self.coord`` (``coord.py``)
is the only shared mutable state besides the cluster's pools: writes share
the gate of their VDI name, snapshot and rollback hold it alone, and object
creation is serialised per object (see ``coord`` and ``write``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import BinaryIO, TypeVar

from sheepdog_backend.client import hyper
from sheepdog_backend.client import io as dio
from sheepdog_backend.client import reconcile as rc
from sheepdog_backend.client import requests as rq
from sheepdog_backend.client import survey as sv
from sheepdog_backend.client import vdi as ops
from sheepdog_backend.client import write as dwr
from sheepdog_backend.client.cluster import Cluster
from sheepdog_backend.client.coord import Coordinator
from sheepdog_backend.client.guard import typed_attempt
from sheepdog_backend.client.models import VdiInfo, encode_text
from sheepdog_backend.client.retry import RetryPolicy
from sheepdog_backend.client.transport import Address, Connection
from sheepdog_backend.exception import (
    InvalidInput,
    NoObject,
    NoTag,
    NoVdi,
    RetryExhausted,
)
from sheepdog_backend.protocol.constants import (
    SD_MAX_BLOCK_SIZE_SHIFT,
    SD_MAX_COPIES,
    SD_MAX_VDI_SIZE,
    SD_MIN_BLOCK_SIZE_SHIFT,
    ClusterFlag,
    Flag,
    flat_max_vdi_size,
)
from sheepdog_backend.protocol.inode import HOSTS_VALUE, OFFSET_EXPORT_HOSTS, InodeHeader
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
_SEGMENT = 64 << 20


def _check_size(size: object, what: str = "size") -> int:
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise InvalidInput(f"{what} must be a positive number of bytes, got {size!r}")
    return size


def _check_snapid(snapid: object) -> int:
    if isinstance(snapid, bool) or not isinstance(snapid, int) or not 0 <= snapid < 1 << 32:
        raise InvalidInput(f"snapid must be a snapshot id (0..2^32-1), got {snapid!r}")
    return snapid


def _known(known: VdiInfo | None, name: str, tag: str = "", snapid: int = 0
           ) -> InodeHeader | None:
    """The header of ``known``, the VdiInfo this client just read (``survey``,
    ``get_vdi``) of what the call names - the working VDI ``name``, its
    snapshot ``tag`` or ``snapid``: the call starts from it instead of looking
    the VDI up again.  A VdiInfo of anything else is a caller's mistake (it
    would act on the wrong inode)."""
    if known is None:
        return None
    snap = bool(tag or snapid)
    if not isinstance(known, VdiInfo) or known.name != name or known.is_snapshot != snap \
            or (tag and known.tag != tag) or (snapid and known.snap_id != snapid):
        what = f"snapshot {tag or snapid!r} of {name!r}" if snap else f"working VDI {name!r}"
        raise InvalidInput(f"known= must be the VdiInfo of the {what}, got {known!r}")
    return known.header


HYPER_BLOCK_SIZE_SHIFT = 22  # dog -y forces the default object size


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
        self.coord = Coordinator()

    def close(self) -> None:
        self.cluster.close()

    def __enter__(self) -> SheepdogClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _deadline(self) -> float:
        return time.monotonic() + self.retry.deadline

    def _run(self, fn: Callable[[Connection], T], *, what: str,
             wait_for_lock: bool = False, deadline: float | None = None,
             transfer: bool = False) -> T:
        """Run ``fn`` under the retry policy; every connection it uses stops at
        ``deadline`` (default: the retry deadline from now).  A data
        ``transfer`` has no total deadline: it lasts as long as its size needs
        (each request bounded by the request timeout, their number by the
        range), so the retry deadline does not cut a large image copy."""
        end = None if transfer else self._deadline() if deadline is None else deadline
        guarded = typed_attempt(fn, what)
        return self.retry.call(lambda: self.cluster.run(guarded, deadline=end), what=what,
                               wait_for_lock=wait_for_lock)

    def run(self, fn: Callable[[Connection], T], *, what: str) -> T:
        """``fn`` on a connection under the retry policy and deadline, as every
        call here runs (client/lease.py builds its requests on it)."""
        return self._run(fn, what=what)

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
        self._run(rc.format_cluster(ctime, copies=copies, copy_policy=copy_policy,
                                    block_size_shift=block_size_shift, flags=flags,
                                    store=store), what="format cluster")

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
        end = self._deadline()
        total = free = 0
        for node in self.node_list():
            address = Address(node.nid.addr, node.nid.port)
            self.cluster.add_gateway(address)

            def stat(conn: Connection) -> tuple[int, int]:
                body = ops.check(conn.call(rq.stat_sheep())).body
                return getattr(body, "store_size", 0), getattr(body, "store_free", 0)
            size, avail = self._stat_node(address, stat, end)
            total += size
            free += avail
        return total, free

    def _stat_node(self, address: Address, stat: Callable[[Connection], tuple[int, int]],
                   deadline: float) -> tuple[int, int]:
        guarded = typed_attempt(stat, f"stat {address}")
        return self.retry.call(lambda: self.cluster.run_on(address, guarded,
                                                           deadline=deadline),
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
        return self._run(lambda c: ops.list_vdis(c, self.io_window, with_usage=with_usage,
                                                 index_vids=hyper.index_vids),
                         what="list VDIs")

    def list_snapshots(self, name: str) -> list[VdiInfo]:
        """The snapshots of ``name``, oldest first (also when its working VDI is
        gone).  Reads only the headers on the name's probe chain, not every
        inode of the cluster (all of them on a RECYCLE_VID cluster)."""
        raw = validate_name(encode_text(name))
        return self._run(
            lambda c: sorted((v for v in ops.list_family(c, raw, self.io_window)
                              if v.is_snapshot), key=lambda v: v.snap_id),
            what=f"list snapshots of {name!r}")

    def survey(self, name: str, *, tag: str = "", keys: Sequence[str] = (),
               family: bool = False, look: bool = True) -> sv.Survey:
        """The working VDI of ``name`` (unless ``look`` is False), its snapshot
        ``tag`` (when given), the attributes ``keys`` of the name (tag "",
        snap_id 0; ``Survey.attrs`` keyed by key) and, with ``family``, every
        live VDI of the name: in two round trips where separate calls take one
        each (client/survey.py)."""
        return self.surveys([sv.Ask(name, tag, keys, family, look)])[0]

    def surveys(self, asks: Sequence[sv.Ask]) -> list[sv.Survey]:
        """``survey`` of each of ``asks``, all in the same two round trips."""
        raw = [a.encoded() for a in asks]
        names = ", ".join(repr(a.name) for a in asks)
        return self._run(lambda c: sv.survey_all(c, raw, window=self.io_window),
                         what=f"survey {names}")

    # -- create --------------------------------------------------------------

    def create_vdi(self, name: str, size: int, *, copies: int = 0, copy_policy: int = 0,
                   block_size_shift: int = 0, prealloc: bool = False,
                   hyper: bool = False) -> VdiInfo:
        """Create a VDI.  ``hyper``: a hyper volume (B-tree index, up to
        16 PiB, 4 MiB objects as dog -y makes it); Sheepdog 1.0 cannot
        snapshot, clone or resize it."""
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
        if hyper:
            if block_size_shift not in (0, HYPER_BLOCK_SIZE_SHIFT) or prealloc:
                raise InvalidInput("a hyper volume has 4 MiB objects (block_size_shift "
                                   "22) and cannot be preallocated")
            if size > SD_MAX_VDI_SIZE:
                raise InvalidInput(f"a hyper volume holds at most {SD_MAX_VDI_SIZE} bytes "
                                   f"(16 PiB), got {size}")
            return self._run(rc.create(raw, name, size, copies=copies,
                                       copy_policy=copy_policy,
                                       block_size_shift=HYPER_BLOCK_SIZE_SHIFT,
                                       prealloc=False, window=self.io_window, hyper=True),
                             what=f"create VDI {name!r}")
        if block_size_shift and not (
                SD_MIN_BLOCK_SIZE_SHIFT <= block_size_shift <= SD_MAX_BLOCK_SIZE_SHIFT):
            raise InvalidInput(f"block_size_shift must be 0 or 20..31, got {block_size_shift}")
        if block_size_shift:
            rc.check_flat(size, block_size_shift)
        elif size > flat_max_vdi_size(SD_MAX_BLOCK_SIZE_SHIFT):
            rc.check_flat(size, SD_MAX_BLOCK_SIZE_SHIFT)
        return self._run(rc.create(raw, name, size, copies=copies, copy_policy=copy_policy,
                                   block_size_shift=block_size_shift, prealloc=prealloc,
                                   window=self.io_window), what=f"create VDI {name!r}")

    # -- snapshot ------------------------------------------------------------

    def snapshot_vdi(self, name: str, tag: str, *, known: VdiInfo | None = None) -> VdiInfo:
        """Snapshot the working VDI ``name`` as ``tag``.  ``known``: its working
        VDI as the caller just read it, having checked no snapshot has the tag."""
        raw, rawtag = validate_name(encode_text(name)), validate_tag(encode_text(tag))
        if not rawtag:
            raise InvalidInput("a snapshot needs a non-empty tag")
        snap = rc.Snapshot(raw, rawtag, name, tag, self.io_window, _known(known, name))
        try:
            # no write of ours in flight: waits as long as those transfers take
            with self.coord.exclusive(raw):
                return self._run(snap, what=f"snapshot {name!r}")
        except RetryExhausted:
            vid = snap.stray_tag_vid
            if vid is not None:
                try:  # best effort: the caller gets RetryExhausted anyway
                    self.cluster.run(lambda conn: snap.remove_stray_tag(conn, vid))
                except Exception:
                    pass
            raise

    def remove_stray_tag(self, name: str, tag: str) -> bool:
        """Clear ``tag`` from the working VDI of ``name``, where a snapshot that
        died between tagging it and NEW_VDI left it; True when it was there."""
        raw, rawtag = validate_name(encode_text(name)), validate_tag(encode_text(tag))
        return self._run(lambda c: (hdr := rc.find(c, raw)) is not None
                         and rc.clear_stray_tag(c, hdr, rawtag),
                         what=f"remove a stray tag of {name!r}")

    # -- clone / resize / rollback -------------------------------------------

    def clone_vdi(self, src_name: str, src_tag: str, dst_name: str, *,
                  size: int | None = None, snapid: int = 0,
                  known: VdiInfo | None = None) -> VdiInfo:
        """Clone snapshot ``src_tag`` of ``src_name`` (or, with ``snapid`` and an
        empty tag, the snapshot with that id: tag-independent) into ``dst_name``."""
        src, tag = validate_name(encode_text(src_name)), validate_tag(encode_text(src_tag))
        dst = validate_name(encode_text(dst_name))
        snapid = _check_snapid(snapid)
        if not tag and not snapid:
            raise InvalidInput(f"only snapshots can be cloned: give the tag of a snapshot of "
                               f"{src_name!r}")
        if size is not None:
            _check_size(size)
        return self._run(rc.clone(src, tag, dst, size, src_name=src_name, src_tag=src_tag,
                                  dst_name=dst_name, snapid=snapid,
                                  known=_known(known, src_name, src_tag, snapid)),
                         what=f"clone {src_name!r}@{src_tag!r} to {dst_name!r}")

    def resize_vdi(self, name: str, new_size: int, *, known: VdiInfo | None = None
                   ) -> VdiInfo:
        raw = validate_name(encode_text(name))
        _check_size(new_size, "new size")
        return self._run(rc.resize(raw, name, new_size, _known(known, name)),
                         what=f"resize {name!r}")

    def rollback_vdi(self, name: str, tag: str, *, size: int | None = None) -> VdiInfo:
        """Replace the working VDI ``name`` by a new one made from snapshot
        ``tag``, of ``size`` bytes when given (never smaller than the snapshot)."""
        raw, rawtag = validate_name(encode_text(name)), validate_tag(encode_text(tag))
        if not rawtag:
            raise InvalidInput("rollback needs the tag of a snapshot")
        if size is not None:
            _check_size(size)
        with self.coord.exclusive(raw):
            return self._run(rc.rollback(raw, rawtag, name, tag, self.io_window, size),
                             what=f"rollback {name!r} to {tag!r}")

    # -- delete --------------------------------------------------------------

    def delete_vdi(self, name: str, tag: str = "", *, snapid: int = 0,
                   known: VdiInfo | None = None) -> bool:
        """Delete the working VDI ``name``, its snapshot ``tag``, or (with
        ``snapid``) its snapshot of that id whatever its tag.  ``known``: that
        VDI as the caller just read it."""
        raw, rawtag = validate_name(encode_text(name)), validate_tag(encode_text(tag))
        snapid = _check_snapid(snapid)
        return self._run(rc.delete(raw, rawtag, self.io_window, snapid,
                                   _known(known, name, tag, snapid)),
                         what=f"delete {name!r}")

    def delete_vdi_by_vid(self, vid: int) -> bool:
        """Delete the working VDI or snapshot whose inode is ``vid`` (the
        ``VdiInfo.vid`` that ``snapshot_vdi`` returned), found by name and
        snap_id, so an untagged snapshot can be deleted too.  False when it
        was already gone."""
        if isinstance(vid, bool) or not isinstance(vid, int) or not 0 < vid < 1 << 24:
            raise InvalidInput(f"{vid!r} is not a VDI id (1..0xffffff)")
        return self._run(rc.delete_vid(vid, self.io_window), what=f"delete VDI {vid:#x}")

    # -- attributes and locks ------------------------------------------------

    def set_attr(self, name: str, key: str, value: bytes, *, exclusive: bool = False,
                 snapid: int = 0) -> None:
        """Set attribute ``key`` of ``name``.  ``snapid`` (here and in get_attr /
        delete_attr) looks the VDI up through that snapshot of the name, so the
        name's attributes stay reachable while it has no working VDI."""
        raw, rawkey = validate_name(encode_text(name)), encode_text(key)
        value = bytes(value)
        snapid = _check_snapid(snapid)
        flags = Flag.CREAT | (Flag.EXCL if exclusive else 0)
        req = ops.attr_request(raw, rawkey, value, flags=flags, snapid=snapid)
        self._run(rc.set_attr(raw, rawkey, value, exclusive, req, snapid),
                  what=f"set attribute {key!r} of {name!r}")

    def get_attr(self, name: str, key: str, *, snapid: int = 0) -> bytes | None:
        raw, rawkey = validate_name(encode_text(name)), encode_text(key)
        snapid = _check_snapid(snapid)
        ops.attr_request(raw, rawkey)  # validates the key
        return self._run(lambda c: ops.get_attr(c, raw, rawkey, snapid),
                         what=f"get attribute {key!r} of {name!r}")

    def delete_attr(self, name: str, key: str, *, snapid: int = 0) -> bool:
        raw, rawkey = validate_name(encode_text(name)), encode_text(key)
        snapid = _check_snapid(snapid)
        req = ops.attr_request(raw, rawkey, flags=Flag.DEL, snapid=snapid)
        return self._run(rc.delete_attr(req), what=f"delete attribute {key!r} of {name!r}")

    def lock_vdi(self, name: str, tag: str = "", *, wait: bool = False) -> VdiInfo:
        """LOCK_VDI.  A lost reply cannot be reconciled (the lock owner is the
        sheep node, not the client), so VdiLocked after one says so."""
        raw, rawtag = validate_name(encode_text(name)), validate_tag(encode_text(tag))
        return self._run(rc.lock(raw, rawtag, name), what=f"lock {name!r}",
                         wait_for_lock=wait)

    def set_export_hosts(self, name: str, hosts: int) -> None:
        """Record in ``name``'s inode how many hosts export it at once
        (protocol.inode.OFFSET_EXPORT_HOSTS): gateways check the reads of a
        VDI two hosts export (gateway/views.py)."""
        if not 0 <= hosts <= 0xFFFFFFFF:
            raise InvalidInput(f"a host count of {hosts} does not fit")
        oid = vid_to_vdi_oid(self.get_vdi(name).vid)
        value = HOSTS_VALUE.pack(hosts)
        self._run(lambda c: ops.check(c.call(rq.write_obj(oid, OFFSET_EXPORT_HOSTS, value))),
                  what=f"record the hosts exporting {name!r}")

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
        return self._run(attempt, what=f"read {name!r}", transfer=True)

    def read_to_file(self, name: str, fileobj: BinaryIO, *, tag: str = "",
                     length: int | None = None, sparse: bool = False) -> int:
        """Write the VDI's first ``length`` bytes (all of it by default) to
        ``fileobj`` from its current position; returns the bytes covered.

        ``sparse=True`` (a seekable file) replaces the file from its position
        on: it is truncated there, zeros are not written but seeked over
        (holes where the VDI is unallocated or reads zero), and the file ends
        exactly at position + length."""
        raw, rawtag = validate_name(encode_text(name)), validate_tag(encode_text(tag))
        if length is not None:
            dio._check_range(0, length)
        start = fileobj.tell() if fileobj.seekable() else None
        if sparse and start is None:
            raise InvalidInput("a sparse export needs a seekable target file")
        tries = [0]

        def attempt(conn: Connection) -> int:
            if tries[0]:
                if start is None:
                    raise InvalidInput("transfer failed and the target cannot be rewound")
                fileobj.seek(start)
            tries[0] += 1
            layout = dio.open_layout_whole(conn, raw, rawtag, length, self.io_window)
            n = layout.hdr.vdi_size if length is None else length
            if not sparse:
                return dio.read_stream(conn, layout, 0, n, self.io_window, fileobj.write)
            assert start is not None
            fileobj.truncate(start)
            dio.read_stream(conn, layout, 0, n, self.io_window, fileobj.write,
                            skip=lambda k: fileobj.seek(k, 1))
            fileobj.truncate(start + n)  # a trailing hole still counts
            fileobj.seek(start + n)
            return n
        return self._run(attempt, what=f"read {name!r} to a file", transfer=True)

    def write(self, name: str, offset: int, data: bytes) -> None:
        raw = validate_name(encode_text(name))
        dio._check_range(offset, len(data))
        if not data:
            return
        source = dwr.bytes_source(data)
        with self.coord.writing(raw, self._deadline()) as claims:
            self._run(lambda c: dwr.write_with_redo(c, raw, offset, len(data), source,
                                                    self.io_window, claims),
                      what=f"write {name!r}", transfer=True)

    def write_from_file(self, name: str, fileobj: BinaryIO, *, offset: int = 0) -> int:
        raw = validate_name(encode_text(name))
        dio._check_range(offset, 0)
        length = dwr.remaining_length(fileobj)
        if length is not None:
            if length == 0:
                return 0
            source = dwr.file_source(fileobj)
            with self.coord.writing(raw, self._deadline()) as claims:
                return self._run(lambda c: dwr.write_with_redo(c, raw, offset, length,
                                                               source, self.io_window,
                                                               claims),
                                 what=f"write {name!r} from a file", transfer=True)
        done = 0
        while True:  # unknown length (a pipe): buffered segments
            segment = fileobj.read(_SEGMENT)
            if not segment:
                return done
            self.write(name, offset + done, segment)
            done += len(segment)

