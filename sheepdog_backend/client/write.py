"""Writes to a VDI: chunks, object creation, slot updates, snapshot races.

How it works.  ``write_with_redo`` resolves the working VDI (``io.open_layout``)
and ``write_chunks`` cuts the range into per-object chunks, many in flight:

* slot == own vid -> WRITE_OBJ in place (an overwrite: nothing else to do);
* slot == 0 -> CREATE_AND_WRITE_OBJ (skipped when the chunk is all zeros and
  nobody of this client is creating the object: thin); slot == an ancestor ->
  CREATE_AND_WRITE_OBJ with COW from the ancestor's object.  Only after a
  create succeeded is its slot written (WRITE_OBJ of the slot range at
  4664 + 4*idx, runs of created slots only, never a slot we did not change).

Object creation is serialised per object for every caller of one client
(``coord.ObjectClaims``): a chunk whose object another caller is creating is
*deferred*; once this transfer's own creates and slot updates are done (so it
holds no claim while waiting) it waits for the other create and writes in
place.

READONLY on a write means the VDI was snapshotted under us: the transfer
drains, re-resolves the name (new working vid) and redoes every chunk.

An allocating write has one more hazard a READONLY never shows: the object is
created while the VDI is working, a snapshot (by another process: within one
client ``coord`` holds snapshots back) freezes the inode, then the slot update
lands in the frozen inode and is answered SUCCESS.  So a transfer that created
objects looks the name up again after its last slot update; if the working
vid changed and the new working inode does not map a created object to us,
the slot went into the snapshot and the whole transfer is redone on the new
working VDI.  Only then is the write acknowledged.  (That lookup is one
GET_VDI_INFO per allocating write call; overwrites pay nothing.)

A hyper VDI (B-tree index) maps its created objects through
``hyper.IndexUpdater`` instead of slot writes: once per pass, after every
create of the pass succeeded (the B-tree is rewritten, not patched per slot).

All state is private to one transfer on one connection except the claims,
which ``coord`` guards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from sheepdog_backend.client import hyper
from sheepdog_backend.client import requests as rq
from sheepdog_backend.client import vdi as ops
from sheepdog_backend.client.coord import Claim, ObjectClaims
from sheepdog_backend.client.hyper import IndexUpdater
from sheepdog_backend.client.io import Layout, chunks, drain, is_zero, open_layout, run_window
from sheepdog_backend.client.transport import Connection
from sheepdog_backend.exception import InvalidInput, ReadOnly, error_for_code
from sheepdog_backend.protocol.constants import Flag, Result
from sheepdog_backend.protocol.header import Request
from sheepdog_backend.protocol.inode import InodeHeader
from sheepdog_backend.protocol.oid import vid_to_data_oid

SLOT_FLUSH = 64  # created slots accumulated before a slot-range write
READONLY_REDOS = 16  # a write racing this many snapshots in a row gives up, typed


class _SlotUpdater:
    """Collects created object indexes and writes their slots in runs."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.pending: set[int] = set()

    def add(self, idx: int) -> None:
        self.layout.slots[idx - self.layout.first] = self.layout.vid
        self.pending.add(idx)

    def requests(self, flags: int = 0) -> list[tuple[Request, list[int]]]:
        """The slot writes of the pending indexes, each with the indexes it maps."""
        if not self.pending:
            return []
        lay = self.layout
        ordered = sorted(self.pending)
        self.pending.clear()
        runs: list[tuple[int, int]] = []
        for idx in ordered:
            if runs and runs[-1][1] == idx:
                runs[-1] = (runs[-1][0], idx + 1)
            else:
                runs.append((idx, idx + 1))
        out: list[tuple[Request, list[int]]] = []
        for start, end in runs:
            reqs = ops.slot_write_requests(lay.hdr, lay.first, lay.slots,
                                           [(start - lay.first, end - lay.first)], flags)
            for i, req in enumerate(reqs):  # each request with the indexes it maps
                sub = start + i * ops.SLOT_BATCH
                out.append((req, list(range(sub, min(end, sub + ops.SLOT_BATCH)))))
        return out


@dataclass
class _Chunk:
    idx: int
    in_off: int
    data: bytes


class _Transfer:
    """One pass of a write over one layout (see the module comment)."""

    def __init__(self, conn: Connection, layout: Layout, claims: ObjectClaims,
                 window: int) -> None:
        self.conn, self.layout, self.claims = conn, layout, claims
        self.hdr = layout.hdr
        self.vid = layout.vid
        self.updater = _SlotUpdater(layout)
        # a hyper VDI maps its creates in its B-tree, once per pass (hyper.py)
        self.index = IndexUpdater(layout.hdr, claims) if layout.hdr.store_policy else None
        self.held: set[int] = set()      # claimed by us, slot not yet acknowledged
        self.created: list[int] = []     # created and mapped by this transfer
        self.deferred: list[_Chunk] = []
        obj = 1 << layout.shift
        self.win = max(1, min(window, max(1, (64 << 20) // obj)))

    def _request(self, chunk: _Chunk) -> tuple[str, Request] | None:
        hdr, idx, data = self.hdr, chunk.idx, chunk.data
        slot = self.layout.slot(idx)
        oid = vid_to_data_oid(self.vid, idx)
        if slot != self.vid:
            if slot == 0 and is_zero(data) \
                    and self.claims.peek(self.vid, idx) == Claim.FREE:
                return None  # thin: an unallocated object already reads as zeros
            claim = self.claims.try_claim(self.vid, idx)
            if claim == Claim.BUSY:
                self.deferred.append(chunk)
                return None
            if claim == Claim.WRITTEN:
                self.layout.slots[idx - self.layout.first] = self.vid
                slot = self.vid
            else:
                self.held.add(idx)
                cow = vid_to_data_oid(slot, idx) if slot else 0
                return "create", rq.create_and_write_obj(
                    oid, chunk.in_off, data, cow_oid=cow, copies=hdr.nr_copies,
                    copy_policy=hdr.copy_policy)
        return "data", rq.write_obj(oid, chunk.in_off, data, copies=hdr.nr_copies,
                                    copy_policy=hdr.copy_policy)

    def _mapped(self, idxs: list[int]) -> None:
        for idx in idxs:
            self.held.discard(idx)
            self.created.append(idx)
            self.claims.finish(self.vid, idx, True)

    def _pass(self, work: Iterator[_Chunk]) -> None:
        updater = self.updater

        def jobs() -> Iterator[tuple[tuple[str, int, list[int]], Request]]:
            for chunk in work:
                job = self._request(chunk)
                if job is not None:
                    yield (job[0], chunk.idx, []), job[1]
                if len(updater.pending) >= SLOT_FLUSH:
                    for req, idxs in updater.requests():
                        yield ("slot", 0, idxs), req
            # no flush here: creates are still in flight, and the slots of what
            # has completed so far are scattered runs; once all are done they
            # are one run (an import: one durable write instead of 4-8)

        for (kind, idx, idxs), rsp in run_window(self.conn, jobs(), self.win):
            if rsp.result == Result.READONLY:
                drain(self.conn)
                raise ReadOnly()
            if rsp.result != Result.SUCCESS:
                raise error_for_code(rsp.result)
            if kind == "create" and self.index is not None:
                self.index.add(idx)
                self.layout.slots[idx - self.layout.first] = self.vid
            elif kind == "create":
                updater.add(idx)
            elif kind == "slot":
                self._mapped(idxs)
        if self.index is not None:
            self._mapped(self.index.flush(self.conn))
        # the slots of the creates not mapped yet, after the last one completed
        while updater.pending:
            batch = updater.requests()
            ops.pipeline(self.conn, [req for req, _ in batch], self.win)
            for _req, idxs in batch:
                self._mapped(idxs)

    def run(self, work: Iterator[_Chunk]) -> list[int]:
        try:
            self._pass(work)
            while self.deferred:  # we hold no claim now: wait for the others'
                later, self.deferred = self.deferred, []
                for chunk in later:
                    self.claims.wait(self.vid, chunk.idx)
                self._pass(iter(later))
        finally:
            for idx in self.held:  # failed: let the waiters create it themselves
                self.claims.finish(self.vid, idx, False)
            self.held.clear()
        return self.created


def write_chunks(conn: Connection, layout: Layout, offset: int, length: int,
                 source: Callable[[int], bytes], window: int,
                 claims: ObjectClaims | None = None) -> list[int]:
    """Write ``length`` bytes taken in order from ``source(n)``.  Returns the
    indexes of the objects this transfer created and mapped; raises ReadOnly
    if the VDI became a snapshot."""
    obj = 1 << layout.shift

    def work() -> Iterator[_Chunk]:
        for idx, in_off, n in chunks(offset, length, layout.shift, obj):
            data = source(n)
            if len(data) != n:
                raise InvalidInput("the data source ended early")
            yield _Chunk(idx, in_off, data)

    return _Transfer(conn, layout, claims or ObjectClaims(), window).run(work())


def _still_working(conn: Connection, name: str | bytes, layout: Layout,
                   created: list[int], window: int) -> bool:
    """After the slot updates: did they land in the VDI that is still the
    working one (or were they copied into the working one by a snapshot)?"""
    vid = ops.lookup(conn, name).vdi_id
    if vid == layout.vid:
        return True
    if layout.hdr.store_policy:
        return all(v == layout.vid for v in hyper.lookup_vids(conn, vid, created))
    first, last = min(created), max(created)
    slots = ops.read_slots(conn, vid, first, last - first + 1, window)
    return all(slots[idx - first] == layout.vid for idx in created)


def write_with_redo(conn: Connection, name: str | bytes, offset: int, length: int,
                    make_source: Callable[[], Callable[[int], bytes]], window: int,
                    claims: ObjectClaims | None = None) -> int:
    """Write, re-resolving the name and redoing the transfer on READONLY or
    when an allocating write's slot update went into a just-frozen inode."""
    for attempt in range(READONLY_REDOS + 1):
        layout = open_layout(conn, name, b"", offset, length, window)
        try:
            created = write_chunks(conn, layout, offset, length, make_source(), window,
                                   claims)
        except ReadOnly:
            if attempt == READONLY_REDOS:
                raise
            continue
        if not created or _still_working(conn, name, layout, created, window):
            return length
    raise ReadOnly(f"{name!r} was snapshotted {READONLY_REDOS + 1} times during one "
                   "write; the write is not acknowledged")


def bytes_source(data: bytes | bytearray | memoryview) -> Callable[[], Callable[[int], bytes]]:
    view = memoryview(data).cast("B")

    def make() -> Callable[[int], bytes]:
        pos = 0

        def take(n: int) -> bytes:
            nonlocal pos
            out = bytes(view[pos:pos + n])
            pos += n
            return out
        return take
    return make


def file_source(fileobj: BinaryIO) -> Callable[[], Callable[[int], bytes]]:
    """Read the file in order; a redo seeks back to where it started."""
    try:
        start: int | None = fileobj.tell() if fileobj.seekable() else None
    except OSError:
        start = None
    used = False

    def make() -> Callable[[int], bytes]:
        nonlocal used
        if used:
            if start is None:
                raise ReadOnly("the VDI was snapshotted during the transfer and the "
                               "source cannot be rewound")
            fileobj.seek(start)
        used = True

        def take(n: int) -> bytes:
            parts = []
            need = n
            while need:
                data = fileobj.read(need)
                if not data:
                    break
                parts.append(data)
                need -= len(data)
            return b"".join(parts)
        return take
    return make


def remaining_length(fileobj: BinaryIO) -> int | None:
    """Bytes left in a seekable file, or None when it cannot be known."""
    try:
        if not fileobj.seekable():
            return None
        here = fileobj.tell()
        end = fileobj.seek(0, 2)
        fileobj.seek(here)
        return max(0, end - here)
    except (OSError, AttributeError, ValueError):
        return None


def preallocate(conn: Connection, hdr: InodeHeader, window: int) -> int:
    """Create every unallocated object of a VDI (dog -P): empty creates, then
    the slots in runs.  Repeatable: objects already mapped are left alone."""
    if hdr.store_policy:
        raise InvalidInput("preallocation of a hyper volume is not supported: its index "
                           "would list every object of up to 16 PiB")
    count = hdr.count_data_objs
    layout = Layout(hdr, 0, ops.read_slots(conn, hdr.vdi_id, 0, count, window))
    updater = _SlotUpdater(layout)
    jobs = ((idx, rq.create_and_write_obj(vid_to_data_oid(hdr.vdi_id, idx), 0, b"",
                                          copies=hdr.nr_copies,
                                          copy_policy=hdr.copy_policy,
                                          flags=Flag.DIRECT))
            for idx in range(count) if layout.slots[idx] == 0)
    created = 0
    for idx, rsp in run_window(conn, jobs, max(1, window)):
        if rsp.result != Result.SUCCESS:
            raise error_for_code(rsp.result)
        updater.add(idx)
        created += 1
    ops.pipeline(conn, [req for req, _ in updater.requests(Flag.DIRECT)], max(1, window))
    return created
