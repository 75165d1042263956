"""Per-volume I/O counters of the gateway.

How it works: ``count(request, response, seconds)`` adds one forwarded
request to the counters of the VDI its object belongs to (data objects and
inode objects by their vid; VDI ops are counted under vid 0 as "control").
``snapshot()`` returns a copy as plain dicts keyed by the VDI id in hex.
``RequestTrace`` (opt-in: ``Gateway(trace=N)``) keeps the last N requests
with their start and end times, so a stall a writer saw can be split into
the requests it was made of (tests/gateway_race.py does).
Shared state: ``_vdis`` under ``_lock``, the trace's deque under its own
lock; counting and tracing run in every worker thread.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from sheepdog_backend.protocol.constants import Opcode
from sheepdog_backend.protocol.header import ObjRequest, Request, Response
from sheepdog_backend.protocol.oid import is_data_obj, oid_to_vid


@dataclass
class VdiCounters:
    reads: int = 0
    writes: int = 0
    creates: int = 0
    inode_writes: int = 0
    read_bytes: int = 0
    write_bytes: int = 0
    errors: int = 0
    other: int = 0
    snapshots: int = 0
    busy_seconds: float = 0.0
    max_latency: float = 0.0
    max_gate_wait: float = 0.0  # longest a create was held by a snapshot
    max_snapshot_call: float = 0.0  # longest NEW_VDI (snapshot) the cluster took


_READ, _WRITE, _CREATE = (int(Opcode.READ_OBJ), int(Opcode.WRITE_OBJ),
                          int(Opcode.CREATE_AND_WRITE_OBJ))


class IoStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._vdis: dict[int, VdiCounters] = {}

    def count(self, request: Request, response: Response, seconds: float, *,
              waited: float = 0.0, vid: int | None = None) -> None:
        body = request.body
        oid = body.oid if isinstance(body, ObjRequest) else None
        if vid is None:
            vid = oid_to_vid(oid) if oid is not None else 0
        self.count_op(vid, request.opcode, response.ok, oid is not None and is_data_obj(oid),
                      len(response.payload), len(request.payload), seconds, waited)

    def count_op(self, vid: int, op: int, ok: bool, data: bool, read_bytes: int,
                 write_bytes: int, seconds: float, waited: float = 0.0) -> None:
        """Count one request of ``vid`` (``data``: of a data object)."""
        with self._lock:
            c = self._vdis.get(vid)
            if c is None:
                c = self._vdis[vid] = VdiCounters()
            if not ok:
                c.errors += 1
            if op == _READ:
                c.reads += 1
                c.read_bytes += read_bytes
            elif data and (op == _WRITE or op == _CREATE):
                c.writes += 1
                c.write_bytes += write_bytes
                if op == _CREATE:
                    c.creates += 1
            elif op == _WRITE:
                c.inode_writes += 1
            elif op == Opcode.NEW_VDI and vid:
                c.snapshots += 1
                c.max_snapshot_call = max(c.max_snapshot_call, seconds - waited)
            else:
                c.other += 1
            c.busy_seconds += seconds
            if seconds > c.max_latency:
                c.max_latency = seconds
            if waited > c.max_gate_wait:
                c.max_gate_wait = waited

    def count_relayed(self, vid: int, reads: int, writes: int, read_bytes: int,
                      write_bytes: int, busy: float, longest: float) -> None:
        """Data reads and writes of ``vid`` the lane relayed, all successful."""
        with self._lock:
            c = self._vdis.get(vid)
            if c is None:
                c = self._vdis[vid] = VdiCounters()
            c.reads += reads
            c.writes += writes
            c.read_bytes += read_bytes
            c.write_bytes += write_bytes
            c.busy_seconds += busy
            c.max_latency = max(c.max_latency, longest)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {f"{vid:x}": asdict(c) for vid, c in sorted(self._vdis.items())}


@dataclass(frozen=True)
class TraceEntry:
    """One request as the gateway handled it (monotonic seconds)."""

    start: float
    end: float
    opcode: int
    oid: int | None  # object requests only
    offset: int
    length: int  # data_length of the request
    result: int
    waited: float  # held by a snapshot's gate or drain

    @property
    def seconds(self) -> float:
        return self.end - self.start


class RequestTrace:
    def __init__(self, size: int) -> None:
        self._lock = threading.Lock()
        self._entries: deque[TraceEntry] = deque(maxlen=size)

    def record(self, request: Request, response: Response, start: float, end: float,
               waited: float) -> None:
        body = request.body
        oid, offset = (body.oid, body.offset) if isinstance(body, ObjRequest) else (None, 0)
        self.add(TraceEntry(start, end, int(request.opcode), oid, offset, request.data_length,
                            int(response.result), waited))

    def add(self, entry: TraceEntry) -> None:
        with self._lock:
            self._entries.append(entry)

    def entries(self) -> list[TraceEntry]:
        with self._lock:
            return list(self._entries)
