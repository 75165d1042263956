"""The per-VDI gate and the per-object create claims of one client (coord.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from sheepdog_backend.client.coord import Claim, Coordinator
from sheepdog_backend.exception import DeadlineExceeded


def _started(fn: object) -> threading.Thread:
    assert callable(fn)
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


def _until(ready: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait until a thread has got where the test needs it (a sleep of a fixed
    length is too short on a loaded machine: the thread may not have run yet)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"no {what} after {timeout:g} s"
        time.sleep(0.001)


def _exclusive_waiting(coord: Coordinator, name: bytes) -> int:
    gate = coord._gates.get(name)
    return gate.waiting if gate is not None else 0


def _writers_held(coord: Coordinator, name: bytes) -> int:
    gate = coord._gates.get(name)
    return sum(gate.pending.values()) if gate is not None else 0


def test_exclusive_waits_for_the_writers_in_flight_and_holds_new_ones() -> None:
    coord = Coordinator()
    order: list[str] = []
    writing = threading.Event()
    release = threading.Event()

    def writer() -> None:
        with coord.writing(b"v"):
            writing.set()
            release.wait(10)
            order.append("write done")

    def snapshot() -> None:
        with coord.exclusive(b"v"):
            order.append("snapshot")
            time.sleep(0.05)
            order.append("snapshot done")

    def late_writer() -> None:
        with coord.writing(b"v"):
            order.append("late write")

    w = _started(writer)
    assert writing.wait(10)
    s = _started(snapshot)
    _until(lambda: _exclusive_waiting(coord, b"v") == 1, "snapshot waiting for the writer")
    late = _started(late_writer)  # arrives while the snapshot waits: held back
    _until(lambda: _writers_held(coord, b"v") == 1, "late writer held back")
    assert order == []
    release.set()
    for t in (w, s, late):
        t.join(10)
    assert order == ["write done", "snapshot", "snapshot done", "late write"]


def test_a_held_writer_goes_before_the_next_snapshot() -> None:
    coord = Coordinator()
    order: list[str] = []
    first = threading.Event()
    go = threading.Event()

    def snapshots() -> None:
        for i in range(2):
            with coord.exclusive(b"v"):
                if i == 0:
                    first.set()
                    go.wait(10)
                order.append(f"snap{i}")

    def writer() -> None:
        with coord.writing(b"v"):
            order.append("write")

    s = _started(snapshots)
    assert first.wait(10)
    w = _started(writer)
    _until(lambda: _writers_held(coord, b"v") == 1, "writer held by the first snapshot")
    go.set()
    s.join(10)
    w.join(10)
    assert order == ["snap0", "write", "snap1"]


def test_other_gates_are_independent() -> None:
    coord = Coordinator()
    with coord.exclusive(b"a"), coord.writing(b"b", time.monotonic() + 1):
        pass


def test_waiting_for_the_gate_ends_at_the_deadline() -> None:
    coord = Coordinator()
    with coord.exclusive(b"v"):
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded), coord.writing(b"v", time.monotonic() + 0.2):
            pass
        assert time.monotonic() - start < 5


def test_claims_serialise_creation_of_one_object() -> None:
    coord = Coordinator()
    with coord.writing(b"v") as a, coord.writing(b"v") as b:
        assert a.try_claim(7, 0) == Claim.CREATE
        assert b.try_claim(7, 0) == Claim.BUSY
        assert b.peek(7, 0) == Claim.BUSY
        assert b.try_claim(7, 1) == Claim.CREATE  # another object: free
        waited = threading.Event()

        def wait() -> None:
            b.wait(7, 0)
            waited.set()
        t = _started(wait)
        time.sleep(0.05)
        assert not waited.is_set()
        a.finish(7, 0, True)
        t.join(10)
        assert waited.is_set()
        assert b.try_claim(7, 0) == Claim.WRITTEN  # created by a: write in place
        b.finish(7, 1, False)  # failed: the next writer creates it itself
        assert a.try_claim(7, 1) == Claim.CREATE
        a.finish(7, 1, True)
    with coord.writing(b"v") as c:  # the last writer left: memory dropped
        assert c.peek(7, 0) == Claim.FREE
