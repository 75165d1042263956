"""Data I/O on a VDI: read and write any byte range, many requests in flight.

How it works.  A transfer first resolves the VDI: GET_VDI_INFO (its reply
carries the vid and the object size), then - pipelined - the 568-byte inode
header and the slots (``data_vdi_id``) of the objects the range touches.
The range is cut into per-object chunks.

* Read: a chunk whose slot is 0 is zeros, filled locally with no request;
  otherwise READ_OBJ of ``vid_to_data_oid(slot, idx)`` (possibly an
  ancestor's object).  Large objects are read in pieces of at most 4 MiB.
  A sparse stream (``read_stream`` with ``skip``) reports unallocated
  objects and all-zero 64 KiB blocks as runs to skip instead of zeros.
* Writes are ``write.py``'s (they use ``open_layout``, ``chunks`` and
  ``run_window`` from here).

At most ``window`` requests are in flight on the connection; responses are
matched by id in any order.  Streaming keeps at most ``window`` chunks in
memory.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from sheepdog_backend.client import hyper
from sheepdog_backend.client import requests as rq
from sheepdog_backend.client import vdi as ops
from sheepdog_backend.client.transport import Connection
from sheepdog_backend.exception import InvalidInput, error_for_code
from sheepdog_backend.protocol.constants import SD_INODE_DATA_INDEX, Result
from sheepdog_backend.protocol.header import Request, Response
from sheepdog_backend.protocol.inode import InodeHeader, decode_slots
from sheepdog_backend.protocol.oid import vid_to_data_oid

READ_PIECE = 4 << 20
K = TypeVar("K")


@dataclass
class Layout:
    """What a transfer needs to know about the VDI."""

    hdr: InodeHeader
    first: int  # slot index of slots[0]
    slots: list[int]

    @property
    def vid(self) -> int:
        return self.hdr.vdi_id

    @property
    def shift(self) -> int:
        return self.hdr.block_size_shift

    def slot(self, idx: int) -> int:
        return self.slots[idx - self.first]


def run_window(conn: Connection, jobs: Iterable[tuple[K, Request]], window: int,
               into: Callable[[K], memoryview | None] | None = None
               ) -> Iterator[tuple[K, Response]]:
    """Send jobs keeping at most ``window`` in flight; yield (key, response) as
    responses arrive.  ``into(key)`` may name the buffer a job's response
    payload is received into (see ``Connection.send``).  Abandoning the
    iterator leaves requests in flight, which makes the connection unusable:
    the pool then closes it."""
    inflight: dict[int, K] = {}
    it = iter(jobs)
    exhausted = False
    while True:
        while not exhausted and len(inflight) < window:
            try:
                key, req = next(it)
            except StopIteration:
                exhausted = True
                break
            inflight[conn.send(req, into=into(key) if into else None)] = key
        if not inflight:
            return
        rsp = conn.wait_any()
        yield inflight.pop(rsp.id), rsp


def drain(conn: Connection) -> None:
    while conn.inflight:
        conn.wait_any()


def _check_range(offset: int, length: int) -> None:
    if not isinstance(offset, int) or not isinstance(length, int):
        raise InvalidInput("offset and length must be integers")
    if offset < 0 or length < 0:
        raise InvalidInput(f"negative offset or length ({offset}, {length})")


def open_layout(conn: Connection, name: str | bytes, tag: str | bytes, offset: int,
                length: int, window: int) -> Layout:
    """Resolve a VDI and fetch the slots covering [offset, offset+length)."""
    body = ops.lookup(conn, name, tag)
    vid, shift = body.vdi_id, body.block_size_shift
    if not shift:  # server did not say: learn it from the header first
        hdr = ops.read_header(conn, vid)
        shift = hdr.block_size_shift
    first = offset >> shift
    end_idx = min(SD_INODE_DATA_INDEX, ((offset + length + (1 << shift) - 1) >> shift))
    count = max(0, end_idx - first) if length else 0
    reqs = [ops.header_request(vid), *ops.slot_requests(vid, first, count)]
    rsps = ops.pipeline(conn, reqs, window)
    hdr = ops.decode_header(rsps[0])
    if hdr.block_size_shift != shift:
        raise InvalidInput("object size changed while opening the VDI")
    if offset + length > hdr.vdi_size:
        raise InvalidInput(f"range {offset}+{length} is past the end of the VDI "
                           f"({hdr.vdi_size} bytes)")
    if hdr.store_policy != 0:
        return _hyper_layout(conn, hdr, first, offset, length)
    slots: list[int] = []
    for rsp in rsps[1:]:
        slots.extend(decode_slots(rsp.payload))
    return Layout(hdr, first, slots)


def _hyper_layout(conn: Connection, hdr: InodeHeader, first: int, offset: int,
                  length: int) -> Layout:
    """A hyper VDI's layout: its slots looked up in the B-tree (hyper.py)."""
    end = (offset + length + hdr.object_size - 1) >> hdr.block_size_shift
    count = max(0, end - first) if length else 0
    return Layout(hdr, first, hyper.layout_slots(conn, hdr, first, count))


def open_layout_whole(conn: Connection, name: str | bytes, tag: str | bytes,
                      length: int | None, window: int) -> Layout:
    """The layout for reading [0, length), or the whole VDI when ``length`` is
    None, with a single lookup (open_layout; without a length: the lookup, the
    header, then the slots its size covers)."""
    if length is not None:
        return open_layout(conn, name, tag, 0, length, window)
    hdr = ops.read_header(conn, ops.lookup(conn, name, tag).vdi_id)
    if hdr.store_policy != 0:
        return _hyper_layout(conn, hdr, 0, 0, hdr.vdi_size)
    return Layout(hdr, 0, ops.read_slots(conn, hdr.vdi_id, 0, hdr.count_data_objs, window))


def chunks(offset: int, length: int, shift: int, piece: int) -> Iterator[tuple[int, int, int]]:
    """(idx, offset inside the object, length) covering the range."""
    obj = 1 << shift
    pos, end = offset, offset + length
    while pos < end:
        in_off = pos & (obj - 1)
        n = min(obj - in_off, end - pos, piece)
        yield pos >> shift, in_off, n
        pos += n


# -- reads -------------------------------------------------------------------


def _read_jobs(layout: Layout, pieces: list[tuple[int, int, int]]
               ) -> list[tuple[int, Request]]:
    jobs = []
    for i, (idx, in_off, n) in enumerate(pieces):
        slot = layout.slot(idx)
        if slot:
            jobs.append((i, rq.read_obj(vid_to_data_oid(slot, idx), in_off, n)))
    return jobs


def _check_read(layout: Layout, rsp: Response, n: int) -> None:
    if rsp.result != Result.SUCCESS:
        raise error_for_code(rsp.result)
    if rsp.effective_data_length != n:
        raise InvalidInput(f"short read from {layout.hdr.name!r}")


def read_into(conn: Connection, layout: Layout, offset: int, out: memoryview, window: int,
              *, zeroed: bool = False) -> int:
    """Read [offset, offset+len(out)) straight into ``out``: every READ_OBJ
    payload is received in place, unallocated objects are zero-filled (not
    even that when the caller says ``out`` is ``zeroed`` already)."""
    length = len(out)
    pieces = list(chunks(offset, length, layout.shift, READ_PIECE))
    starts = []
    pos = 0
    for idx, _in_off, n in pieces:
        starts.append(pos)
        if not zeroed and layout.slot(idx) == 0:
            out[pos:pos + n] = _zeros(n)
        pos += n

    def target(i: int) -> memoryview:
        return out[starts[i]:starts[i] + pieces[i][2]]

    for i, rsp in run_window(conn, _read_jobs(layout, pieces), max(1, window), target):
        _check_read(layout, rsp, pieces[i][2])
        if rsp.payload:  # not received in place (cannot happen with a full-size reply)
            target(i)[:] = rsp.payload
    return length


def read_bytes(conn: Connection, layout: Layout, offset: int, length: int,
               window: int) -> bytes:
    """Read [offset, offset+length) as one bytes object.

    The payloads are received straight into the result: a BytesIO made of
    ``bytes(length)`` (zeros, so unallocated objects need no fill) lends its
    buffer to ``recv_into``, and once that view is gone ``getvalue()`` hands
    the same bytes object back (CPython does not copy an unshared, exactly
    sized buffer; elsewhere it is one copy, still correct)."""
    result = io.BytesIO(bytes(length))
    view = result.getbuffer()
    read_into(conn, layout, offset, view, window, zeroed=True)
    del view  # every slice handed to the connection is gone by now
    return result.getvalue()


def read_stream(conn: Connection, layout: Layout, offset: int, length: int, window: int,
                sink: Callable[[bytes | memoryview], object],
                skip: Callable[[int], object] | None = None) -> int:
    """Read [offset, offset+length) and hand it to ``sink`` in order.  Payloads
    are received into reused buffers: ``sink`` must consume what it is given
    before returning (as ``write()`` of a file does).

    With ``skip``, zeros are not handed to ``sink``: ``skip(n)`` is called for
    each run of ``n`` zero bytes instead - every unallocated object (no request
    is sent for it) and every all-zero SPARSE_BLOCK of an allocated one.  A
    sparse file target seeks forward there and leaves a hole."""
    emit = _sparse_emitter(sink, skip) if skip is not None else sink
    pieces = list(chunks(offset, length, layout.shift, READ_PIECE))
    free: list[memoryview] = []
    held: dict[int, memoryview] = {}  # piece -> its buffer, received or in flight
    done: set[int] = set()
    emitted = 0

    def target(i: int) -> memoryview:
        buf = free.pop() if free else memoryview(bytearray(READ_PIECE))
        held[i] = buf
        return buf[:pieces[i][2]]

    def flush() -> None:
        nonlocal emitted
        while emitted < len(pieces):
            idx, _in_off, n = pieces[emitted]
            if layout.slot(idx) == 0:
                if skip is not None:
                    skip(n)
                else:
                    sink(_zeros(n))
            elif emitted in done:
                done.discard(emitted)
                buf = held.pop(emitted)
                emit(buf[:n])
                free.append(buf)
            else:
                return
            emitted += 1

    for i, rsp in run_window(conn, _read_jobs(layout, pieces), max(1, window), target):
        _check_read(layout, rsp, pieces[i][2])
        if rsp.payload:
            held[i][:len(rsp.payload)] = rsp.payload
        done.add(i)
        flush()
    flush()
    return length


_ZERO = bytes(READ_PIECE)
SPARSE_BLOCK = 64 << 10  # zero runs shorter than this are written, not skipped


def _zeros(n: int) -> bytes | memoryview:
    return memoryview(_ZERO)[:n] if n <= len(_ZERO) else bytes(n)


def is_zero(data: bytes | bytearray | memoryview) -> bool:
    """True when every byte is 0 (a memcmp against a zero buffer: ~25x faster
    than ``data.count(0) == len(data)``)."""
    view = memoryview(data).cast("B")
    for pos in range(0, len(view), len(_ZERO)):
        if not _ZERO.startswith(view[pos:pos + len(_ZERO)]):
            return False
    return True


def _sparse_emitter(sink: Callable[[bytes | memoryview], object],
                    skip: Callable[[int], object]
                    ) -> Callable[[bytes | memoryview], None]:
    """A sink that hands runs of non-zero SPARSE_BLOCKs to ``sink`` (one call
    per run) and calls ``skip(n)`` for runs of all-zero blocks."""
    def emit(data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        run_start, zero_run = 0, False
        for pos in range(0, len(view), SPARSE_BLOCK):
            zero = _ZERO.startswith(view[pos:pos + SPARSE_BLOCK])
            if zero != zero_run and pos > run_start:
                if zero_run:
                    skip(pos - run_start)
                else:
                    sink(view[run_start:pos])
                run_start = pos
            zero_run = zero
        if len(view) > run_start:
            if zero_run:
                skip(len(view) - run_start)
            else:
                sink(view[run_start:])
    return emit
