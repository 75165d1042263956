"""Several drivers on one volume, as several cinder-volume services or CLIs
would be (issue 26, 1): each has its own client, so nothing in one process
serialises them, only the volume lease on the cluster does.

* Eight at once - eight clients in threads, or eight processes: every
  acknowledged snapshot is findable by its tag, every clone reads as its
  source, nothing is left behind (no untagged or temporary snapshot, no stray
  VDI, no lease held) and the volume can be deleted afterwards.
* A holder that dies or stops mid-operation, a driver in its own process
  (tests/lease_worker.py) that kills or stops itself between two steps:
  another process waits for the lease to expire, takes it over and finishes or
  undoes what the holder left; the stopped holder, woken after that, does not
  act.  Leases last 1 s there (sheepdog_lease_duration), so a takeover waits
  about 1.2 s after the taker first sees the record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from threading import Barrier
from typing import Any

import pytest

from sheepdog_backend.driver.base import BackendConfiguration, GiB, Snapshot, Volume
from sheepdog_backend.driver.sheepdog import SheepdogDriver
from sheepdog_backend.testing.fixtures import EmbeddedServer
from tests.lease_worker import held_leases, run_op

KiB, MiB = 1 << 10, 1 << 20
CLIENTS = 8
WAIT = 120.0  # seconds for one scenario's clients (the machine is shared)
OFFSETS = (0, 4 * MiB + 7, 300 * MiB)
ROOT = Path(__file__).resolve().parents[2]
# short leases: a test never waits long for one that its holder dropped
CONF = {"sheepdog_retry_attempts": 3, "sheepdog_retry_deadline": 30.0,
        "sheepdog_request_timeout": 30.0}
Op = tuple[str, dict[str, Any]]


def make_driver(gateway: str, **conf: Any) -> SheepdogDriver:
    conf = BackendConfiguration({"sheepdog_gateways": [gateway], **CONF, **conf})
    return SheepdogDriver(conf, backend_name="processes")


@pytest.fixture
def observer(embedded_server: EmbeddedServer) -> Iterator[SheepdogDriver]:
    # releases its leases at once: the clients do not wait for its reuse window
    drv = make_driver(embedded_server.gateways[0], sheepdog_lease_reuse=0.0)
    try:
        yield drv
    finally:
        drv.close()


def run_threads(gateway: str, ops: list[Op]) -> list[tuple[str, str]]:
    """Each op on its own driver in its own thread, all started together."""
    drivers = [make_driver(gateway) for _ in ops]
    start = Barrier(len(ops))

    def one(drv: SheepdogDriver, op: Op) -> tuple[str, str]:
        drv.do_setup()
        start.wait(timeout=WAIT)
        try:
            run_op(drv, *op)
            return "ok", ""
        except Exception as exc:  # the test classifies it
            return "error", type(exc).__name__
    try:
        with ThreadPoolExecutor(max_workers=len(ops)) as pool:
            futures = [pool.submit(one, d, op) for d, op in zip(drivers, ops, strict=True)]
            return [f.result(timeout=WAIT) for f in futures]
    finally:
        for drv in drivers:
            drv.close()


def start_worker(gateway: str, ops: list[Op], conf: dict[str, Any] | None = None,
                 pause: dict[str, str] | None = None) -> subprocess.Popen[str]:
    spec = {"gateways": [gateway], "conf": {**CONF, **(conf or {})}, "ops": ops}
    if pause:
        spec["pause"] = pause
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "tests.lease_worker", json.dumps(spec)],
                            cwd=ROOT, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def stop_worker(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


def result_of(line: str) -> tuple[str, str]:
    doc = json.loads(line)
    return ("ok", "") if "ok" in doc else ("error", doc["error"])


def run_processes(gateway: str, ops: list[Op]) -> list[tuple[str, str]]:
    """Each op in its own process, all released by one line on stdin."""
    procs = [start_worker(gateway, [op]) for op in ops]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        out = []
        for p in procs:
            assert p.stdout is not None
            out.append(result_of(p.stdout.readline()))
            assert p.wait(timeout=WAIT) == 0
        return out
    finally:
        for p in procs:
            stop_worker(p)


@pytest.fixture(params=["threads", "processes"])
def run_all(request: pytest.FixtureRequest, embedded_server: EmbeddedServer) -> Any:
    gateway = embedded_server.gateways[0]
    if request.param == "threads":
        return lambda ops: run_threads(gateway, ops)
    return lambda ops: run_processes(gateway, ops)


def new_name(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def volume_with_marks(drv: SheepdogDriver, label: str, seed: int
                      ) -> tuple[str, dict[int, bytes]]:
    """A new volume (its name) and the bytes ``marks`` wrote to it."""
    name = new_name(label)
    drv.create_volume(vol(name))
    return name, marks(drv, name, seed)


def marks(drv: SheepdogDriver, name: str, seed: int) -> dict[int, bytes]:
    out = {off: bytes((seed + off + i) % 251 + 1 for i in range(4 * KiB)) for off in OFFSETS}
    for off, payload in out.items():
        drv.client.write(name, off, payload)
    return out


def assert_reads(drv: SheepdogDriver, name: str, want: dict[int, bytes], tag: str = "") -> None:
    for off, payload in want.items():
        assert drv.client.read(name, off, len(payload), tag=tag) == payload, (name, tag, off)


def assert_nothing_left(drv: SheepdogDriver, *names: str) -> None:
    """None of ``names`` has a VDI left (working or snapshot, tagged or not),
    nor a lease held."""
    left = [(v.name, v.tag) for v in drv.client.list_vdis() if v.name in names]
    assert left == []
    assert held_leases(drv, *names) == []


def vol(name: str, size: int = 1) -> Volume:
    return Volume(id=name, size=size, name=name)


def test_snapshots_of_one_volume(run_all: Any, observer: SheepdogDriver) -> None:
    name, data = volume_with_marks(observer, "snaps", 1)
    tags = [f"s{i}" for i in range(CLIENTS)]
    results = run_all([("create_snapshot", {"volume": name, "snapshot": t}) for t in tags])
    assert results == [("ok", "")] * CLIENTS
    assert held_leases(observer, name) == []  # each released it (closing its driver)
    found = [observer.client.find_vdi(name, t) for t in tags]
    assert all(f is not None and f.is_snapshot for f in found), found
    assert len({f.vid for f in found if f is not None}) == CLIENTS
    # every snapshot carries a tag: no untagged one was left behind
    assert sorted(s["tag"] for s in observer.list_snapshots(vol(name))) == sorted(tags)
    for t in tags:
        assert_reads(observer, name, data, tag=t)
        observer.delete_snapshot(Snapshot(id=t, volume=vol(name), name=t))
    observer.delete_volume(vol(name))
    assert_nothing_left(observer, name)


def test_clones_of_one_source(run_all: Any, observer: SheepdogDriver) -> None:
    src, data = volume_with_marks(observer, "src", 2)
    targets = [new_name(f"dst{i}") for i in range(CLIENTS)]
    results = run_all([("create_cloned_volume", {"volume": t, "source": src})
                       for t in targets])
    assert results == [("ok", "")] * CLIENTS
    assert held_leases(observer, src, *targets) == []
    assert observer.client.list_snapshots(src) == []  # no temporary snapshot left
    for t in targets:
        assert_reads(observer, t, data)
        observer.delete_volume(vol(t))
    observer.delete_volume(vol(src))
    assert_nothing_left(observer, src, *targets)


def test_clones_into_one_target(run_all: Any, observer: SheepdogDriver) -> None:
    src, data = volume_with_marks(observer, "src", 3)
    dst = new_name("dst")
    results = run_all([("create_cloned_volume", {"volume": dst, "source": src})] * CLIENTS)
    # the first makes it, the others find it made as asked (a repeated call)
    assert results == [("ok", "")] * CLIENTS
    assert held_leases(observer, src, dst) == []
    assert observer.client.list_snapshots(src) == []
    assert_reads(observer, dst, data)
    observer.delete_volume(vol(dst))
    observer.delete_volume(vol(src))
    assert_nothing_left(observer, src, dst)


def test_volumes_from_one_snapshot_into_one_target(run_all: Any,
                                                   observer: SheepdogDriver) -> None:
    src, data = volume_with_marks(observer, "src", 4)
    dst = new_name("dst")
    observer.create_snapshot(Snapshot(id="base", volume=vol(src), name="base"))
    marks(observer, src, 5)  # the volume moves on; the target must be the snapshot
    results = run_all([("create_volume_from_snapshot",
                        {"volume": dst, "size": 2, "source": src, "snapshot": "base"})]
                      * CLIENTS)
    assert results == [("ok", "")] * CLIENTS
    assert held_leases(observer, src, dst) == []
    made = observer.client.get_vdi(dst)
    assert made.size == 2 * GiB
    assert made.parent_vid == observer.client.get_vdi(src, "base").vid
    assert_reads(observer, dst, data)
    observer.delete_volume(vol(dst))
    observer.delete_snapshot(Snapshot(id="base", volume=vol(src), name="base"))
    observer.delete_volume(vol(src))
    assert_nothing_left(observer, src, dst)


# -- a holder that dies or stops mid-operation ------------------------------

SHORT = {"sheepdog_lease_duration": 1.0, "sheepdog_lease_renew_interval": 0.3,
         "sheepdog_lease_reuse": 0.0, "sheepdog_lease_wait": 30.0}
EXPIRY = 1.0 * 7 / 6  # a taker sees the record unchanged this long
CLIENT = "sheepdog_backend.client.client:SheepdogClient"


def line(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    text = proc.stdout.readline()
    assert text, f"worker {proc.pid} ended (exit {proc.poll()}) without a word"
    return dict(json.loads(text)) if text.strip() != "ready" else {"ready": True}


def go(proc: subprocess.Popen[str]) -> None:
    assert line(proc) == {"ready": True}
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()


def run_one(gateway: str, op: tuple[str, dict[str, Any]]) -> tuple[tuple[str, str], float]:
    """``op`` in a fresh process with short leases: its result and how long it took."""
    proc = start_worker(gateway, [op], SHORT)
    try:
        go(proc)
        start = time.monotonic()
        assert proc.stdout is not None
        result = result_of(proc.stdout.readline())
        took = time.monotonic() - start
        assert proc.wait(timeout=WAIT) == 0
        return result, took
    finally:
        stop_worker(proc)


def die_during(gateway: str, op: tuple[str, dict[str, Any]], before: str) -> None:
    """``op`` in a process that kills itself (SIGKILL) just before ``before``."""
    proc = start_worker(gateway, [op], SHORT, pause={"before": before, "signal": "KILL"})
    try:
        go(proc)
        assert line(proc) == {"paused": before}
        assert proc.wait(timeout=WAIT) == -signal.SIGKILL
    finally:
        stop_worker(proc)


def test_killed_clone_is_undone_by_the_next_holder(embedded_server: EmbeddedServer,
                                                   observer: SheepdogDriver) -> None:
    gateway = embedded_server.gateways[0]
    src, data = volume_with_marks(observer, "src", 1)
    dst = new_name("dst")
    clone = ("create_cloned_volume", {"volume": dst, "source": src})
    # killed after the temporary snapshot of src, before the clone
    die_during(gateway, clone, f"{CLIENT}.clone_vdi")
    assert len(observer.client.list_snapshots(src)) == 1  # what it left
    assert sorted(held_leases(observer, src, dst)) == sorted([src, dst])
    # the next operation on src waits out the dead holder's lease, and its
    # record says what to undo: the temporary snapshot is deleted first
    result, took = run_one(gateway, ("create_snapshot", {"volume": src, "snapshot": "s"}))
    assert result == ("ok", "")
    assert took >= EXPIRY * 0.9
    assert [v.tag for v in observer.client.list_snapshots(src)] == ["s"]
    # the control plane repeats the clone: it takes dst's expired lease over too
    result, took = run_one(gateway, clone)
    assert result == ("ok", "")
    assert took >= EXPIRY * 0.9
    assert_reads(observer, dst, data)
    assert [v.tag for v in observer.client.list_snapshots(src)] == ["s"]
    observer.delete_snapshot(Snapshot(id="s", volume=vol(src), name="s"))
    for name in (dst, src):
        observer.delete_volume(vol(name))
    assert_nothing_left(observer, src, dst)


def test_killed_snapshot_is_undone_by_the_next_holder(embedded_server: EmbeddedServer,
                                                      observer: SheepdogDriver) -> None:
    gateway = embedded_server.gateways[0]
    name, data = volume_with_marks(observer, "snap", 2)
    snap = ("create_snapshot", {"volume": name, "snapshot": "s1"})
    # killed after tagging the working inode, before NEW_VDI froze it
    die_during(gateway, snap, "sheepdog_backend.client.vdi:new_vdi")
    working = observer.client.get_vdi(name)
    assert (working.tag, working.is_snapshot) == ("s1", False)  # the tag it left
    # the next operation on the volume (any: an extend) clears the stray tag
    # first, as the dead holder's record asks
    result, took = run_one(gateway, ("extend_volume", {"volume": name, "new_size": 2}))
    assert result == ("ok", "")
    assert took >= EXPIRY * 0.9
    assert observer.client.get_vdi(name).tag == ""
    result, _ = run_one(gateway, snap)  # the repeated call makes it
    assert result == ("ok", "")
    assert [s.tag for s in observer.client.list_snapshots(name)] == ["s1"]
    assert_reads(observer, name, data, tag="s1")
    observer.delete_snapshot(Snapshot(id="s1", volume=vol(name), name="s1"))
    observer.delete_volume(vol(name))
    assert_nothing_left(observer, name)


def test_stopped_holder_does_not_act_after_waking(embedded_server: EmbeddedServer,
                                                  observer: SheepdogDriver) -> None:
    gateway = embedded_server.gateways[0]
    name, data = volume_with_marks(observer, "stop", 3)
    # the volume has no snapshot when the delete looks: it stops before DEL_VDI
    before = f"{CLIENT}.delete_vdi"
    holder = start_worker(gateway, [("delete_volume", {"volume": name})], SHORT,
                          pause={"before": before, "signal": "STOP"})
    try:
        go(holder)
        assert line(holder) == {"paused": before}
        # another process takes the expired lease over and snapshots the volume
        result, took = run_one(gateway, ("create_snapshot", {"volume": name,
                                                             "snapshot": "kept"}))
        assert result == ("ok", "")
        assert took >= EXPIRY * 0.9
        holder.send_signal(signal.SIGCONT)
        # woken, the holder would delete a volume that now has a snapshot: it stops
        woke = line(holder)
        assert woke.get("error") == "LeaseLost", woke
        assert holder.wait(timeout=WAIT) == 0
    finally:
        stop_worker(holder)
    assert observer.client.get_vdi(name).vid
    assert_reads(observer, name, data)
    assert_reads(observer, name, data, tag="kept")
    observer.delete_snapshot(Snapshot(id="kept", volume=vol(name), name="kept"))
    observer.delete_volume(vol(name))
    assert_nothing_left(observer, name)
