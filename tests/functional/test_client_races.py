"""Concurrent use of the client loses no acknowledged write (issue 9, items 1-3).

Each scenario runs on the embedded server and on a real Sheepdog 1.0 sheep
(``real_sheep``, skipped with the reason when the programs are absent): the
races are the client's, the servers behave alike.  Loops are bounded by count
and time.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from sheepdog_backend.client import RetryPolicy, SheepdogClient
from sheepdog_backend.protocol.constants import SD_INODE_HEADER_SIZE, Opcode
from sheepdog_backend.protocol.header import ObjRequest, Request
from sheepdog_backend.protocol.oid import is_vdi_obj
from tests.unit.client.loopback import FaultProxy

MiB = 1 << 20
OBJ = 4 * MiB
BLOCK = 64 << 10


@pytest.fixture(params=["embedded", "real_sheep"])
def gateways(request: pytest.FixtureRequest) -> list[str]:
    if request.param == "embedded":
        return list(request.getfixturevalue("embedded_server").gateways)
    return list(request.getfixturevalue("real_sheep").gateways)


def _client(gateways: list[str]) -> SheepdogClient:
    return SheepdogClient(gateways, retry=RetryPolicy(attempts=4, deadline=60))


def _run_threads(n: int, fn: Callable[[int], None]) -> None:
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            fn(i)
        except BaseException as exc:
            errors.append(exc)
    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    if errors:
        raise errors[0]


def _block(tag: str, n: int) -> bytes:
    seed = hashlib.sha256(f"{tag}/{n}".encode()).digest()
    return (seed * (BLOCK // len(seed) + 1))[:BLOCK]


# -- item 1: concurrent writes to one fresh object ------------------------------------


def test_threads_writing_one_fresh_object_lose_nothing(gateways: list[str]) -> None:
    objects = 5
    with _client(gateways) as c:
        c.create_vdi("fresh", objects * OBJ)
        barriers = [threading.Barrier(8) for _ in range(objects)]

        def writer(i: int) -> None:
            for k in range(objects):
                barriers[k].wait(30)  # all 8 hit the unallocated object together
                c.write("fresh", k * OBJ + i * BLOCK, _block("fresh", k * 8 + i))
        _run_threads(8, writer)
        lost = [(k, i) for k in range(objects) for i in range(8)
                if c.read("fresh", k * OBJ + i * BLOCK, BLOCK) != _block("fresh", k * 8 + i)]
        assert lost == [], f"{len(lost)} of {objects * 8} acknowledged writes lost"


# -- item 2: writes while snapshots are taken -----------------------------------------


@dataclass
class Event:
    start: float
    end: float


@dataclass
class Write(Event):
    block: int
    digest: bytes  # sha256 of the block written (the writer may run long: no data kept)


@dataclass
class Snap(Event):
    tag: str


def _writes_and_snapshots(writer: SheepdogClient, snapper: SheepdogClient, name: str,
                          blocks: int, writes_wanted: int, min_snaps: int, max_snaps: int,
                          seconds: float) -> tuple[list[Write], list[Snap]]:
    """One thread writes ``writes_wanted`` blocks, and on until ``min_snaps``
    snapshots by the other thread have completed during its writes (a fast
    writer must not finish before the snapshots it races happened); both stop
    after ``seconds`` whatever they did, for the caller to check."""
    writes: list[Write] = []
    snaps: list[Snap] = []
    done = threading.Event()
    rng = random.Random(9)

    def write_loop() -> None:
        try:
            end = time.monotonic() + seconds
            n = 0
            while (n < writes_wanted or len(snaps) < min_snaps) and time.monotonic() < end:
                block = rng.randrange(blocks)
                data = _block(name, n)
                t0 = time.monotonic()
                writer.write(name, block * BLOCK, data)
                writes.append(Write(t0, time.monotonic(), block,
                                    hashlib.sha256(data).digest()))
                n += 1
        finally:
            done.set()

    def snap_loop() -> None:
        i = 0
        while not done.is_set() and i < max_snaps:
            t0 = time.monotonic()
            tag = f"s{i}"
            snapper.snapshot_vdi(name, tag)
            snaps.append(Snap(t0, time.monotonic(), tag))
            i += 1
            time.sleep(0.01)
    _run_threads(2, lambda i: write_loop() if i == 0 else snap_loop())
    return writes, snaps


def _digest_blocks(client: SheepdogClient, name: str, blocks: int, tag: str = ""
                   ) -> list[bytes]:
    data = client.read(name, 0, blocks * BLOCK, tag=tag)
    return [hashlib.sha256(data[i * BLOCK:(i + 1) * BLOCK]).digest() for i in range(blocks)]


def _check_point_in_time(client: SheepdogClient, name: str, blocks: int,
                         writes: list[Write], snaps: list[Snap]) -> None:
    zero = hashlib.sha256(bytes(BLOCK)).digest()
    digests = [w.digest for w in writes]
    # live volume: every block is its last acknowledged write (one sequential writer)
    want = [zero] * blocks
    for w, d in zip(writes, digests, strict=True):
        want[w.block] = d
    live = _digest_blocks(client, name, blocks)
    lost = [b for b in range(blocks) if live[b] != want[b]]
    assert lost == [], f"{len(lost)} blocks lost their last acknowledged write"
    # each snapshot is the state after the first c writes, for one c between the
    # writes acknowledged before the snapshot began and those begun before it ended
    for s in snaps:
        got = _digest_blocks(client, name, blocks, tag=s.tag)
        lo = sum(1 for w in writes if w.end < s.start)
        hi = sum(1 for w in writes if w.start < s.end)
        state = [zero] * blocks
        for w, d in zip(writes[:lo], digests[:lo], strict=True):
            state[w.block] = d
        cuts = []
        for c in range(lo, hi + 1):
            if c > lo:
                state[writes[c - 1].block] = digests[c - 1]
            if state == got:
                cuts.append(c)
        assert cuts, (f"snapshot {s.tag} is no point in time (writes {lo}..{hi}): "
                      f"{sum(1 for b in range(blocks) if got[b] not in [*digests, zero])}"
                      " blocks hold bytes no write wrote")


@pytest.mark.parametrize("clients", ["same client", "two clients"])
def test_writes_while_snapshotting_are_kept_and_snapshots_are_points_in_time(
        gateways: list[str], clients: str) -> None:
    blocks = 256  # 16 MiB: 4 objects, each first write after a snapshot is a COW create
    with _client(gateways) as c, _client(gateways) as other:
        snapper = c if clients == "same client" else other
        c.create_vdi("busy", blocks * BLOCK)
        writes, snaps = _writes_and_snapshots(c, snapper, "busy", blocks, writes_wanted=200,
                                              min_snaps=2, max_snaps=10, seconds=10)
        assert len(snaps) >= 2 and len(writes) >= 20, \
            f"in 10 s: {len(writes)} writes, {len(snaps)} snapshots during them"
        _check_point_in_time(c, "busy", blocks, writes, snaps)


# -- item 2, deterministic: a snapshot lands between create and slot write --------------


def _slot_write(req: Request) -> bool:
    body = req.body
    return (req.opcode == Opcode.WRITE_OBJ and isinstance(body, ObjRequest)
            and is_vdi_obj(body.oid) and body.offset >= SD_INODE_HEADER_SIZE)


def test_snapshot_between_create_and_slot_write_loses_nothing(gateways: list[str]) -> None:
    with _client(gateways) as other:
        other.create_vdi("det", 2 * OBJ)
        other.write("det", 0, b"old!")
        other.snapshot_vdi("det", "base")  # the next write of object 0 is a COW create
        fired: list[int] = []

        def rule(req: Request, n: int) -> str:
            if _slot_write(req) and not fired:
                fired.append(n)
                other.snapshot_vdi("det", "between")  # by another client, directly
            return "pass"
        host, port = gateways[0].rsplit(":", 1)
        with FaultProxy((host, int(port)), rule) as proxy, \
                _client([proxy.address]) as c:
            c.write("det", 4, b"new!")  # object 0: create, snapshot, slot write
            c.write("det", OBJ + 8, b"fresh")  # object 1: no snapshot this time
        assert fired, "the slot write was never seen"
        assert other.read("det", 0, 8) == b"old!new!"  # the acknowledged write is live
        assert other.read("det", OBJ + 8, 5) == b"fresh"
        assert other.read("det", 0, 8, tag="base") == b"old!" + bytes(4)
        # the snapshot taken in the middle holds the write entirely or not at all
        assert other.read("det", 0, 8, tag="between") in (b"old!" + bytes(4), b"old!new!")


# -- item 3: concurrent snapshots of one volume keep their tags ------------------------


def test_concurrent_snapshots_keep_their_tags(gateways: list[str]) -> None:
    with _client(gateways) as c:
        c.create_vdi("many", 8 * MiB)
        c.write("many", 0, b"data")
        barrier = threading.Barrier(8)
        made: dict[str, int] = {}

        def snap(i: int) -> None:
            barrier.wait(30)
            info = c.snapshot_vdi("many", f"t{i}")
            assert info.tag == f"t{i}" and info.is_snapshot
            made[f"t{i}"] = info.vid
        _run_threads(8, snap)
        found = {f"t{i}": c.get_vdi("many", f"t{i}").vid for i in range(8)}
        assert found == made and len(set(found.values())) == 8
        assert sorted(v.tag for v in c.list_snapshots("many")) == sorted(found)
        for tag in found:
            assert c.read("many", 0, 4, tag=tag) == b"data"
            assert c.delete_vdi("many", tag)
        assert c.delete_vdi("many")
        assert [v.name for v in c.list_vdis()] == []


def test_snapshot_is_deletable_by_vid_without_its_tag(gateways: list[str]) -> None:
    with _client(gateways) as c:
        c.create_vdi("byvid", 8 * MiB)
        snap = c.snapshot_vdi("byvid", "temp")
        c.write("byvid", 0, b"later")
        assert c.delete_vdi_by_vid(snap.vid) is True
        assert c.find_vdi("byvid", "temp") is None
        assert c.read("byvid", 0, 5) == b"later"
        assert c.delete_vdi_by_vid(snap.vid) is False  # gone already
        assert c.delete_vdi_by_vid(c.get_vdi("byvid").vid) is True
        assert [v.name for v in c.list_vdis()] == []


def test_snapshot_racing_another_clients_snapshot_keeps_the_live_data(
        gateways: list[str]) -> None:
    """Another process snapshots (and writes) between our read of the working
    inode and our NEW_VDI: sheep takes our request for a rebase onto the stale
    inode, which would drop the other's later write from the live volume.  The
    client repairs it; each snapshot ends with its own tag."""
    with _client(gateways) as other:
        other.create_vdi("raced", 2 * OBJ)
        other.write("raced", 0, b"one")
        fired: list[int] = []

        def rule(req: Request, n: int) -> str:
            body = req.body
            if req.opcode == Opcode.NEW_VDI and getattr(body, "snapid", 0) and not fired:
                fired.append(n)
                other.write("raced", OBJ, b"two")
                other.snapshot_vdi("raced", "theirs")
                other.write("raced", OBJ + 3, b"three")  # after their snapshot
            return "pass"
        host, port = gateways[0].rsplit(":", 1)
        with FaultProxy((host, int(port)), rule) as proxy, \
                _client([proxy.address]) as c:
            mine = c.snapshot_vdi("raced", "mine")
        assert fired
        assert mine.tag == "mine" and mine.is_snapshot
        assert other.read("raced", 0, 3) == b"one"
        assert other.read("raced", OBJ, 8) == b"twothree"  # the live volume kept both
        assert other.read("raced", OBJ, 8, tag="mine") == b"twothree"
        assert other.read("raced", OBJ, 8, tag="theirs") == b"two" + bytes(5)
        assert sorted(v.tag for v in other.list_snapshots("raced")) == ["mine", "theirs"]
