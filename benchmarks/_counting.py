"""Count what an operation sends: requests by opcode, serial round trips,
requests a real sheep must make durable before it answers, new connections.

How it works: ``counting()`` wraps ``Connection.send`` and
``Connection.__init__`` of the client's transport for the duration of a
``with`` block (benchmarks only; the package is not changed) and adds to the
``Counts`` it yields.  A *round trip* starts whenever a request is sent on a
connection with nothing in flight: requests pipelined behind it ride the same
trip, so a serial sequence of N calls counts N and a pipelined batch counts 1.
*Durable* requests are those a sheep answers only after writing an object
file (opened O_DSYNC unless sheep runs with ``-n``): NEW_VDI and DEL_VDI
(they write an inode), WRITE_OBJ and CREATE_AND_WRITE_OBJ; everything else
(lookups, bitmaps, reads) is answered from memory or the page cache.  Only one
thread sends at a time in these benchmarks, so the counters need no lock.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sheepdog_backend.client.transport import Connection
from sheepdog_backend.protocol.constants import Opcode

DURABLE = frozenset({Opcode.NEW_VDI, Opcode.DEL_VDI, Opcode.WRITE_OBJ,
                     Opcode.CREATE_AND_WRITE_OBJ})


@dataclass
class Counts:
    requests: Counter[str] = field(default_factory=Counter)
    round_trips: int = 0
    durable: int = 0
    connects: int = 0

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def add(self, other: Counts) -> None:
        self.requests.update(other.requests)
        self.round_trips += other.round_trips
        self.durable += other.durable
        self.connects += other.connects

    def describe(self, limit: int = 4) -> str:
        """``GET_VDI_INFO x3, NEW_VDI x1`` (most frequent first)."""
        parts = [f"{op} x{n}" for op, n in self.requests.most_common(limit)]
        rest = len(self.requests) - limit
        return ", ".join(parts) + (f", +{rest} kinds" if rest > 0 else "")


@contextlib.contextmanager
def counting() -> Iterator[Counts]:
    counts = Counts()
    send = Connection.send
    init = Connection.__init__

    def counted_send(self: Connection, request: Any, **kw: Any) -> int:
        if self.inflight == 0:
            counts.round_trips += 1
        opcode = request.opcode
        counts.requests[Opcode(opcode).name if opcode in Opcode._value2member_map_
                        else hex(opcode)] += 1
        if opcode in DURABLE:
            counts.durable += 1
        return send(self, request, **kw)

    def counted_init(self: Connection, *a: Any, **kw: Any) -> None:
        counts.connects += 1
        init(self, *a, **kw)

    Connection.send = counted_send  # type: ignore[method-assign]
    Connection.__init__ = counted_init  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        Connection.send = send  # type: ignore[method-assign]
        Connection.__init__ = init  # type: ignore[method-assign]
