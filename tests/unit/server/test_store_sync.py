"""Group-committed directory fsyncs: as durable as one fsync per caller, fewer runs."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from sheepdog_backend.protocol.oid import vid_to_data_oid
from sheepdog_backend.server.store import GroupSync, ObjectStore


def test_callers_waiting_on_a_run_share_the_next_one() -> None:
    release = threading.Event()
    runs: list[int] = []
    seen: dict[str, int] = {}

    def fn() -> None:
        runs.append(len(runs) + 1)
        if len(runs) == 1:
            assert release.wait(10)

    group = GroupSync(fn)

    def caller(name: str) -> None:
        started = len(runs)  # runs begun before this call
        group.sync()
        seen[name] = started

    first = threading.Thread(target=caller, args=("a",))
    first.start()
    deadline = time.monotonic() + 10
    while not runs and time.monotonic() < deadline:
        time.sleep(0.01)
    late = [threading.Thread(target=caller, args=(n,)) for n in ("b", "c")]
    for t in late:
        t.start()
    while group._requested < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert group._requested == 3
    release.set()
    for t in (first, *late):
        t.join(10)
    assert runs == [1, 2], "the two late callers share one run"
    # each late caller called while run 1 was in progress: run 1 started before
    # their call, so only run 2 (started after) may cover them
    assert seen["b"] == seen["c"] == 1


def test_a_failed_run_is_retried_by_the_next_caller() -> None:
    calls = []

    def fn() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("disk went away")

    group = GroupSync(fn)
    with pytest.raises(OSError):
        group.sync()
    group.sync()
    assert len(calls) == 2


def test_removing_many_objects_pays_one_directory_fsync(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path, sync=True)
    oids = [vid_to_data_oid(7, i) for i in range(5)]
    for oid in oids:
        store.create(oid, 4096, [(0, b"x")])
    dir_syncs = []
    real = store._fsync_dir

    def counting(path: str) -> None:
        dir_syncs.append(path)
        real(path)

    store._fsync_dir = counting  # type: ignore[method-assign]
    assert store.remove_many([*oids, vid_to_data_oid(7, 99)]) == 5
    assert dir_syncs == [store.obj_dir]
    assert not any(store.exists(oid) for oid in oids)
    assert store.remove_many([oids[0]]) == 0 and len(dir_syncs) == 1
