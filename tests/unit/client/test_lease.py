"""The volume lease (client/lease.py, lease_records.py) on the embedded server,
with an injected clock: time passes only when a manager sleeps (a waiter's
pause between reads) or the test says so, so nothing here really waits.

Several managers stand for several processes; the background thread is off
(``background=False``) and a test runs a holder's ``maintain`` (renewals,
releases) where that thread would."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sheepdog_backend.client import SheepdogClient
from sheepdog_backend.client import lease_records as lr
from sheepdog_backend.client.lease import Held, LeaseManager, LeaseSettings
from sheepdog_backend.driver.base import BackendConfiguration
from sheepdog_backend.driver.sheepdog import SheepdogDriver
from sheepdog_backend.exception import (
    ConfigError,
    InvalidInput,
    LeaseLost,
    LeaseTimeout,
    NoVdi,
)
from sheepdog_backend.testing.fixtures import EmbeddedServer
from tests.unit.client.loopback import FaultProxy

SETTINGS = LeaseSettings(duration=6.0, renew_interval=2.0, reuse=1.0, wait=30.0)


class Clock:
    """Shared fake time; ``sleep`` advances it and runs ``each`` (e.g. a
    holder's maintenance, as its thread would run meanwhile)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.each: list[Callable[[], Any]] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        for fn in self.each:
            fn()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def clients(embedded_server: EmbeddedServer) -> Iterator[list[SheepdogClient]]:
    out = [SheepdogClient(embedded_server.gateways) for _ in range(3)]
    try:
        yield out
    finally:
        for c in out:
            c.close()


def manager(client: SheepdogClient, clock: Clock, settings: LeaseSettings = SETTINGS
            ) -> LeaseManager:
    return LeaseManager(client, settings, clock=clock, sleep=clock.sleep, background=False)


class Holder:
    """A hold entered in a thread of its own (the guards a hold installs are
    per thread), which stays in it until ``leave`` - or forever, a dead holder."""

    def __init__(self, m: LeaseManager, name: str, op: str, detail: str = "") -> None:
        self.entered = threading.Event()
        self.go = threading.Event()
        self.held: Held | None = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                with m.hold([name], op, {name: detail}) as held:
                    self.held = held
                    self.entered.set()
                    self.go.wait(timeout=60)
                    held.check()  # what a woken holder does before its next step
            except BaseException as exc:  # the test looks at it
                self.error = exc
            finally:
                self.entered.set()
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert self.entered.wait(timeout=30) and self.held is not None, self.error

    def leave(self) -> BaseException | None:
        self.go.set()
        self.thread.join(timeout=30)
        return self.error


def state(client: SheepdogClient, name: str) -> tuple[int, lr.Record | None]:
    """(top generation, its live record or None)."""
    def look(conn: Any) -> tuple[int, lr.Record | None]:
        top = lr.find_top(conn, name)
        return top, (lr.read_gens(conn, name, [top])[top].live if top else None)
    return client.run(look, what="read a lease")


def test_one_holder_at_a_time_and_a_release_lets_the_next_in(
        clients: list[SheepdogClient], clock: Clock) -> None:
    a, b = manager(clients[0], clock), manager(clients[1], clock)
    with a.hold(["v"], "op-a", {"v": "detail-a"}) as held:
        top, live = state(clients[2], "v")
        assert top == 1 and live is not None
        assert live.fields["op"] == "op-a" and live.fields["detail"] == "detail-a"
        assert live.fields["owner"] == a.owner
        assert held.takeovers == []
    a.close()  # releases what it keeps for reuse
    assert state(clients[2], "v") == (1, None)
    start = clock.now
    with b.hold(["v"], "op-b"):
        assert clock.now == start  # no waiting: it was released
        assert state(clients[2], "v")[0] == 2
    b.close()
    assert state(clients[2], "v") == (2, None)


def test_a_dead_holder_is_taken_over_after_its_expiry_and_stops_when_woken(
        clients: list[SheepdogClient], clock: Clock) -> None:
    dead, b = manager(clients[0], clock), manager(clients[1], clock)
    holder = Holder(dead, "v", "create_snapshot", "tag-x")  # never renews: it stopped
    start = clock.now
    with b.hold(["v"], "after") as mine:
        waited = clock.now - start
        assert SETTINGS.duration * 7 / 6 <= waited < SETTINGS.duration * 7 / 6 + 0.2
        assert [(n, f["op"], f["detail"], f["owner"]) for n, f in mine.takeovers] == [
            ("v", "create_snapshot", "tag-x", dead.owner)]
        assert state(clients[2], "v")[0] == 2
        # woken, the stopped holder may not act before its next step
        assert isinstance(holder.leave(), LeaseLost)
    b.close()
    dead.close()
    assert state(clients[2], "v") == (2, None)


def test_a_renewing_holder_keeps_the_lease_and_the_waiter_gives_up_naming_it(
        clients: list[SheepdogClient], clock: Clock) -> None:
    a, b = manager(clients[0], clock), manager(clients[1], clock)
    holder = Holder(a, "v", "copy_image_to_volume")
    clock.each.append(a.maintain)  # its thread renews while b waits
    with pytest.raises(LeaseTimeout, match=r"copy_image_to_volume.*waited 30 s"):
        with b.hold(["v"], "delete_volume"):
            pass
    assert clock.now - 1000.0 >= SETTINGS.wait  # five lease durations
    assert holder.leave() is None  # still its own
    a.close()
    assert state(clients[2], "v") == (1, None)


def test_a_renewal_acknowledged_after_the_deadline_loses_the_lease(
        clients: list[SheepdogClient], clock: Clock) -> None:
    a = manager(clients[0], clock)
    holder = Holder(a, "v", "op")
    clock.now += SETTINGS.duration * 2 / 6
    a.maintain()  # a renewal in time extends the lease
    clock.now += SETTINGS.duration * 4 / 6
    assert holder.held is not None and not holder.held.leases[0].lost
    clock.now += SETTINGS.duration * 1 / 6  # paused past the (renewed) deadline
    a.maintain()  # the renewal must not revive it
    assert holder.held.leases[0].lost
    assert isinstance(holder.leave(), LeaseLost)
    a.close()


def test_a_holder_past_its_deadline_sends_nothing(
        clients: list[SheepdogClient], clock: Clock) -> None:
    a = manager(clients[0], clock)
    with pytest.raises(LeaseLost):
        with a.hold(["v"], "op"):
            clock.now += SETTINGS.duration * 5 / 6
            clients[0].create_vdi("made-after-the-deadline", 1 << 30)
    assert clients[1].find_vdi("made-after-the-deadline") is None
    a.close()


def test_reuse_within_the_window_then_a_new_generation(
        clients: list[SheepdogClient], clock: Clock) -> None:
    a = manager(clients[0], clock)
    for _ in range(3):
        with a.hold(["v"], "op"):
            pass
        clock.now += 0.2
    assert state(clients[2], "v")[0] == 1  # one take for the three
    clock.now += SETTINGS.reuse
    with a.hold(["v"], "op"):
        assert state(clients[2], "v")[0] == 2
    a.close()


def test_a_waiter_asks_and_the_holder_keeping_it_for_reuse_releases_it(
        clients: list[SheepdogClient], clock: Clock) -> None:
    a, b = manager(clients[0], clock), manager(clients[1], clock)
    with a.hold(["v"], "op"):
        pass  # kept for reuse
    clock.each.append(a.maintain)  # its thread reads the flag while b waits
    start = clock.now
    with b.hold(["v"], "op"):
        assert clock.now - start < SETTINGS.reuse  # not the reuse window out
        assert state(clients[2], "v")[0] == 2
    b.close()
    a.close()


def test_a_stale_taker_of_a_used_generation_abandons_it(
        clients: list[SheepdogClient], clock: Clock) -> None:
    a = manager(clients[0], clock)
    with a.hold(["v"], "op"):
        pass
    a.close()  # generation 1 taken and released
    k = lr.key("v", 1)
    value = lr.encode_value({"owner": "stale"})

    def stale_take(conn: Any) -> bool:
        made = lr.create(conn, k, value)  # an exclusive create skips the released record
        assert made is not None
        return lr.first_of_gen(conn, k, made[0])
    assert clients[1].run(stale_take, what="stale take") is False
    assert clients[1].run(lambda c: lr.delete(c, k), what="abandon") is True
    assert state(clients[2], "v") == (1, None)


def make_anchor(client: SheepdogClient) -> None:
    """The leases' VDI, as the first take on a cluster makes it."""
    client.run(lr.create_anchor, what="make the anchor")


def test_a_take_whose_reply_is_lost_is_recognised_as_ours(
        embedded_server: EmbeddedServer, clients: list[SheepdogClient],
        clock: Clock) -> None:
    make_anchor(clients[2])
    lost: list[int] = []

    def rule(req: Any, n: int) -> str:
        if req.opcode == 0x89 and req.flags & 0x200 and not lost:  # the first exclusive create
            lost.append(n)
            return "lose_reply"
        return "pass"
    with FaultProxy(embedded_server.addresses[0], rule) as proxy:
        client = SheepdogClient([proxy.address])
        try:
            a = manager(client, clock)
            with a.hold(["v"], "op"):
                assert lost
                assert state(clients[2], "v")[0] == 1
            a.close()
        finally:
            client.close()
    assert state(clients[2], "v") == (1, None)


def test_a_take_of_unknown_outcome_is_deleted_once_the_cluster_answers(
        embedded_server: EmbeddedServer, clients: list[SheepdogClient],
        clock: Clock) -> None:
    make_anchor(clients[2])
    down: list[bool] = [False]

    def rule(req: Any, n: int) -> str:
        if req.opcode == 0x89 and req.flags & 0x200:
            down[0] = True
            return "lose_reply"
        return "cut_before" if down[0] else "pass"
    with FaultProxy(embedded_server.addresses[0], rule) as proxy:
        client = SheepdogClient([proxy.address])
        try:
            a = manager(client, clock)
            with pytest.raises(Exception):  # noqa: B017 - the retries run out, typed
                with a.hold(["v"], "op"):
                    pass
            assert state(clients[2], "v")[1] is not None  # made, and nobody knows it
            down[0] = False
            proxy.rule = lambda req, n: "pass"
            a.maintain()
            assert state(clients[2], "v") == (1, None)
        finally:
            client.close()


def test_an_attribute_record_of_someone_else_is_never_deleted_as_ours(
        clients: list[SheepdogClient], clock: Clock) -> None:
    k = lr.key("v", 1)
    theirs, ours = lr.encode_value({"owner": "them"}), lr.encode_value({"owner": "us"})
    clients[0].run(lambda c: lr.create(c, k, theirs), what="their take")
    assert clients[1].run(lambda c: lr.delete_if(c, k, ours), what="ours?") is False
    assert state(clients[2], "v")[1] is not None


@pytest.mark.parametrize(("values", "option"), [
    ({"duration": -1.0}, "duration"),
    ({"duration": 0.0}, "duration"),
    ({"duration": float("nan")}, "duration"),
    ({"renew_interval": 4.0}, "renew_interval"),
    ({"reuse": 4.0}, "reuse"),
    ({"wait": 11.0}, "wait"),
    ({"wait": True}, "wait"),
])
def test_bad_settings_are_refused_naming_the_option(values: dict[str, Any],
                                                     option: str) -> None:
    base = {"duration": 6.0, "renew_interval": 2.0, "reuse": 1.0, "wait": 30.0}
    with pytest.raises(InvalidInput) as info:
        LeaseSettings(**{**base, **values})
    assert getattr(info.value, "option", None) == option


def test_a_driver_with_a_bad_lease_option_fails_to_load_and_sends_nothing(
        embedded_server: EmbeddedServer, clients: list[SheepdogClient]) -> None:
    before = clients[0].list_vdis()
    conf = BackendConfiguration({"sheepdog_gateways": embedded_server.gateways,
                                 "sheepdog_lease_duration": -5.0})
    with pytest.raises(ConfigError, match=r"sheepdog_lease_duration: must be"):
        SheepdogDriver(conf, backend_name="bad")
    conf = BackendConfiguration({"sheepdog_gateways": embedded_server.gateways,
                                 "sheepdog_lease_duration": 30.0,
                                 "sheepdog_lease_wait": 10.0})
    with pytest.raises(ConfigError, match=r"sheepdog_lease_wait: must be at least twice"):
        SheepdogDriver(conf, backend_name="bad")
    assert clients[0].list_vdis() == before
    with pytest.raises(NoVdi):  # not even the leases' anchor was made
        clients[0].get_vdi(lr.ANCHOR)


@pytest.mark.filterwarnings("ignore:Using fork:DeprecationWarning")  # eventlet, if imported
def test_a_forked_child_releases_none_of_its_parents_leases(
        clients: list[SheepdogClient], clock: Clock) -> None:
    a = manager(clients[0], clock)
    with a.hold(["v"], "op"):
        pass  # kept for reuse
    pid = os.fork()
    if pid == 0:  # the child closes what it inherited, as a worker's exit would
        code = 1
        try:
            a.close()
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    while (done := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    if done == (0, 0):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert done[0] == pid and os.waitstatus_to_exitcode(done[1]) == 0
    top, live = state(clients[2], "v")
    assert top == 1 and live is not None and live.fields["owner"] == a.owner  # still ours
    a.close()
    assert state(clients[2], "v") == (1, None)
