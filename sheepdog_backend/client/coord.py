"""Coordination of one client's concurrent users of a VDI (threads and windows).

How it works.  Sheepdog has no compare-and-set, so two requests of one client
can undo each other: two CREATE_AND_WRITEs of one fresh object (the last one
replaces the object with only its own bytes), or a slot update that lands in
an inode a snapshot froze a moment earlier.  Within one ``SheepdogClient``
both are prevented here, per VDI *name*, by a ``_Gate``:

* Writers share the gate (``writing()``), snapshot / rollback take it
  exclusively (``exclusive()``).  An exclusive user first blocks new writers,
  then waits until the writers in flight are done (each write, including its
  retries and its slot updates, is inside the gate), does its work and lets
  the held writers go: they resolve the name again and write to the new
  working VDI.  So a snapshot of one client is a point in time for that
  client's writes.
* Object creation is serialised per object, as QEMU's block/sheepdog.c does
  for its AIO requests: ``ObjectClaims.try_claim(vid, idx)`` gives the first
  writer of an unallocated object the right to create it; any other writer of
  the same object is told BUSY, waits (without holding claims of its own, so
  no two writers can wait on each other) until the creator's slot update was
  acknowledged, then goes as a plain WRITE_OBJ.  Objects created while writers
  were active are remembered (``created``) so a writer whose layout was read
  before another writer's slot update still writes instead of creating again;
  the memory is dropped whenever the last writer of the name leaves.

Shared state: ``Coordinator._gates`` (name -> gate, guarded by
``Coordinator._lock``); each gate's fields (writers, exclusive, waiting,
claims, created) are guarded by that gate's ``cond``; its ``index`` lock
serialises the B-tree updates of a hyper VDI (``client/hyper.py``).  Everything else of a
transfer is private to the thread running it.  Across processes nothing here
helps: see the README section "Guarantees".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from enum import Enum

from sheepdog_backend.exception import DeadlineExceeded

Key = tuple[int, int]  # (vid, object index)


class Claim(Enum):
    CREATE = "create"    # the caller must create the object, then finish() it
    WRITTEN = "written"  # this client created it already: write in place
    BUSY = "busy"        # another caller is creating it: wait(), then ask again
    FREE = "free"        # (peek only) nobody of this client touched it


class _Gate:
    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.users = 0         # threads holding or waiting for the gate (lifetime)
        self.writers = 0
        self.exclusive = False
        self.waiting = 0       # exclusive users waiting for the writers to drain
        self.epoch = 0         # exclusive periods ended so far
        self.pending: dict[int, int] = {}  # waiting writers by the epoch they came in
        self.claims: set[Key] = set()
        self.created: set[Key] = set()
        self.index = threading.Lock()  # a hyper VDI's B-tree update (client/hyper.py)

    def passed_over(self) -> bool:
        """Some waiting writer has already waited through an exclusive period."""
        return any(e < self.epoch for e in self.pending)


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def _wait(gate: _Gate, ready: Callable[[], bool], deadline: float | None,
          what: str) -> None:
    """Wait on ``gate.cond`` (held) until ``ready()`` or the deadline."""
    while not ready():
        left = _remaining(deadline)
        if left is not None and left <= 0:
            raise DeadlineExceeded(f"gave up waiting for {what}: the call's deadline "
                                   "passed")
        gate.cond.wait(left)


class ObjectClaims:
    """The per-object create serialisation of one writer of one VDI name.

    Without a gate (``ObjectClaims()``) every object is FREE/CREATE: that is
    the behaviour of a transfer no other thread of this client can see."""

    def __init__(self, gate: _Gate | None = None, deadline: float | None = None) -> None:
        self._gate = gate
        self._deadline = deadline

    def peek(self, vid: int, idx: int) -> Claim:
        gate = self._gate
        if gate is None:
            return Claim.FREE
        with gate.cond:
            key = (vid, idx)
            if key in gate.created:
                return Claim.WRITTEN
            return Claim.BUSY if key in gate.claims else Claim.FREE

    def try_claim(self, vid: int, idx: int) -> Claim:
        gate = self._gate
        if gate is None:
            return Claim.CREATE
        with gate.cond:
            key = (vid, idx)
            if key in gate.created:
                return Claim.WRITTEN
            if key in gate.claims:
                return Claim.BUSY
            gate.claims.add(key)
            return Claim.CREATE

    def finish(self, vid: int, idx: int, created: bool) -> None:
        """The claim's create (and its slot update) ended; ``created`` says
        whether the object is now mapped in the inode."""
        gate = self._gate
        if gate is None:
            return
        with gate.cond:
            key = (vid, idx)
            gate.claims.discard(key)
            if created:
                gate.created.add(key)
            gate.cond.notify_all()

    def index_lock(self, vid: int) -> AbstractContextManager[object]:
        """Held while a hyper VDI's B-tree is re-read and rewritten, so two
        transfers of this client cannot undo each other's inserts."""
        return nullcontext() if self._gate is None else self._gate.index

    def wait(self, vid: int, idx: int) -> None:
        """Wait until nobody holds the claim of (vid, idx)."""
        gate = self._gate
        if gate is None:
            return
        with gate.cond:
            _wait(gate, lambda: (vid, idx) not in gate.claims, self._deadline,
                  f"the create of object {idx} of VDI {vid:#x}")


class Coordinator:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gates: dict[bytes, _Gate] = {}

    def _enter(self, name: bytes) -> _Gate:
        with self._lock:
            gate = self._gates.get(name)
            if gate is None:
                gate = self._gates[name] = _Gate()
            gate.users += 1
            return gate

    def _leave(self, name: bytes, gate: _Gate) -> None:
        with self._lock:
            gate.users -= 1
            if gate.users == 0:
                del self._gates[name]

    @contextmanager
    def writing(self, name: bytes, deadline: float | None = None
                ) -> Iterator[ObjectClaims]:
        """Share the gate of ``name`` for one write call."""
        gate = self._enter(name)
        try:
            with gate.cond:
                # a writer held back by an exclusive user goes before the next
                # one (no starvation by a loop of snapshots)
                since = gate.epoch
                gate.pending[since] = gate.pending.get(since, 0) + 1
                try:
                    _wait(gate, lambda: not gate.exclusive and (
                        not gate.waiting or gate.epoch > since), deadline,
                        f"a snapshot of {name!r}")
                finally:
                    gate.pending[since] -= 1
                    if not gate.pending[since]:
                        del gate.pending[since]
                    gate.cond.notify_all()
                gate.writers += 1
            try:
                # a create of another transfer ends as that transfer progresses:
                # waiting for it is bounded by its requests' timeouts, not ours
                yield ObjectClaims(gate)
            finally:
                with gate.cond:
                    gate.writers -= 1
                    if gate.writers == 0:
                        gate.created.clear()
                    gate.cond.notify_all()
        finally:
            self._leave(name, gate)

    @contextmanager
    def exclusive(self, name: bytes, deadline: float | None = None) -> Iterator[None]:
        """Hold the gate of ``name`` alone: no write of this client is in flight."""
        gate = self._enter(name)
        try:
            with gate.cond:
                gate.waiting += 1
                try:
                    _wait(gate, lambda: not gate.exclusive and gate.writers == 0
                          and not gate.passed_over(),
                          deadline, f"the writes in flight to {name!r}")
                finally:
                    gate.waiting -= 1
                gate.exclusive = True
            try:
                yield
            finally:
                with gate.cond:
                    gate.exclusive = False
                    gate.epoch += 1
                    gate.cond.notify_all()
        finally:
            self._leave(name, gate)
