"""The volume lease on a real Sheepdog 1.0 node, next to the embedded server.

First the primitive it is built on, as each server does it: GET_VDI_ATTR with
CREAT|EXCL succeeds once while a live record of the key exists, a delete
keeps the record's object (name cleared) and the next exclusive create skips
it to the following slot.  Then the lease: one holder at a time, a dead
holder's lease expires and exactly one of several contenders takes it over,
each contender holding it alone in turn."""

from __future__ import annotations

import threading
import time

from sheepdog_backend.client import lease_records as lr
from sheepdog_backend.client.lease import LeaseManager, LeaseSettings
from tests.interop.conftest import Target, unique

SHORT = LeaseSettings(duration=1.0, renew_interval=0.3, reuse=0.0, wait=30.0)
CONTENDERS = 4


def test_exclusive_create_delete_and_create_again(target: Target) -> None:
    with target.client() as client:
        client.run(lr.create_anchor, what="anchor")
        k = lr.key(unique("excl"), 1)
        first = client.run(lambda c: lr.create(c, k, lr.encode_value({"n": 1})), what="a")
        assert first is not None and first[0] == lr.base_slot(k)
        assert client.run(lambda c: lr.create(c, k, lr.encode_value({"n": 2})),
                          what="b") is None  # VDI_EXIST while the record lives
        assert client.run(lambda c: lr.delete(c, k), what="delete") is True
        chain = client.run(lambda c: lr.read_chains(c, [k])[0], what="read")
        assert chain.exists and chain.live is None  # the object stays, released
        assert chain.records[0].fields == {"n": 1}
        again = client.run(lambda c: lr.create(c, k, lr.encode_value({"n": 3})), what="c")
        assert again is not None and again[0] == (first[0] + 1) & 0xFFFFFFFF
        assert client.run(lambda c: lr.first_of_gen(c, k, again[0]), what="first") is False
        assert client.run(lambda c: lr.delete(c, k), what="d") is True
        assert client.run(lambda c: lr.delete(c, k), what="e") is False  # none live left


def test_one_holder_at_a_time_and_one_takes_a_dead_holder_over(target: Target) -> None:
    name = unique("lease")
    clients = [target.client() for _ in range(CONTENDERS + 1)]
    managers = [LeaseManager(c, SHORT) for c in clients]
    try:
        dead = LeaseManager(clients[0], SHORT, background=False)  # takes, then stops
        stopped = threading.Event()

        def die() -> None:
            with dead.hold([name], "create_snapshot", {name: "t"}):
                stopped.set()
                time.sleep(600)  # never renews, never releases: a daemon thread
        threading.Thread(target=die, daemon=True).start()
        assert stopped.wait(timeout=30)
        inside: list[str] = []
        record: list[tuple[int, float, float, bool, int]] = []
        lock = threading.Lock()
        errors: list[BaseException] = []

        def contend(i: int) -> None:
            try:
                with managers[i + 1].hold([name], f"op{i}") as held:
                    start = time.monotonic()
                    with lock:
                        inside.append(f"in{i}")
                    time.sleep(0.05)
                    with lock:
                        inside.append(f"out{i}")
                    record.append((i, start, time.monotonic(), bool(held.takeovers),
                                   held.leases[0].gen))
            except BaseException as exc:  # reported below
                errors.append(exc)
        threads = [threading.Thread(target=contend, args=(i,)) for i in range(CONTENDERS)]
        begin = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert errors == []
        assert len(record) == CONTENDERS
        # one at a time: every "in" is followed by its own "out"
        assert all(inside[j][2:] == inside[j + 1][3:] for j in range(0, len(inside), 2))
        assert [r[3] for r in record].count(True) == 1  # exactly one took it over
        assert sorted(r[4] for r in record) == [2, 3, 4, 5]  # each its own generation
        first = min(record, key=lambda r: r[1])
        assert first[3] and first[1] - begin >= 7 / 6 * SHORT.duration * 0.9
    finally:
        for m in managers:
            m.close()
        for c in clients:
            c.close()
    with target.client() as client:
        assert client.run(lambda c: lr.find_top(c, name), what="top") == 5
        gens = client.run(lambda c: lr.read_gens(c, name, [1, 2, 3, 4, 5]), what="all")
        assert [chain.live for chain in gens.values()] == [None] * 5  # all released
