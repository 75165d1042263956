"""The loop-side budget: room, the peak, and fairness between connections that
hold nothing and connections that already hold some."""

from __future__ import annotations

import pytest

from sheepdog_backend.engine.admission import Budget


class FakeConn:
    """A parked connection: asks for ``want`` bytes and takes them when retried."""

    def __init__(self, budget: Budget, name: str, held: int = 0) -> None:
        self.budget = budget
        self.name = name
        self.inflight_bytes = held
        self.parked = False
        self.want = 0
        self.admitted: list[int] = []

    def ask(self, cost: int) -> bool:
        if self.budget.fits(cost, self.inflight_bytes):
            self.budget.take(cost)
            self.inflight_bytes += cost
            self.admitted.append(cost)
            return True
        self.want = cost
        self.budget.park(self)
        return False

    def retry_admission(self) -> None:
        assert self.ask(self.want), f"{self.name} was retried without room"


def test_one_request_always_fits_an_empty_budget() -> None:
    budget = Budget(100)
    conn = FakeConn(budget, "big")
    assert conn.ask(1000) and budget.used == 1000 and budget.peak == 1000
    other = FakeConn(budget, "small")
    assert not other.ask(1) and budget.waiting == 1
    budget.release(1000)
    assert other.admitted == [1] and budget.used == 1 and budget.waiting == 0


def test_a_quarter_is_kept_for_connections_that_hold_nothing() -> None:
    budget = Budget(100)
    hoarder = FakeConn(budget, "hoarder")
    assert hoarder.ask(60) and hoarder.ask(15)  # 75: up to limit - reserve
    assert not hoarder.ask(1)  # the rest is kept for clients that hold nothing
    reader = FakeConn(budget, "reader")  # reads its replies: holds nothing between them
    assert reader.ask(25) and budget.used == 100
    budget.release(25)  # the reader's reply went out: still no room for the hoarder
    assert hoarder.admitted == [60, 15]
    budget.release(60)
    assert hoarder.admitted == [60, 15, 1] and budget.used == 16


def test_a_fresh_connection_goes_before_those_that_hold_some() -> None:
    budget = Budget(100)
    hoarder = FakeConn(budget, "hoarder")
    assert hoarder.ask(60) and hoarder.ask(10)
    fresh = FakeConn(budget, "fresh")
    assert not fresh.ask(40)  # 70 + 40 > 100
    assert not hoarder.ask(1)  # would fit (71), but a fresh one waits: fairness
    assert budget.waiting == 2
    budget.release(60)  # 10 used: the fresh one first, then the hoarder
    assert fresh.admitted == [40] and hoarder.admitted == [60, 10, 1]
    assert budget.used == 51 and budget.waiting == 0


def test_waiters_are_served_in_order_and_nobody_overtakes_the_head() -> None:
    budget = Budget(100)
    first = FakeConn(budget, "first")
    assert first.ask(100)
    a, b = FakeConn(budget, "a"), FakeConn(budget, "b")
    assert not a.ask(80) and not b.ask(10)
    budget.release(30)  # 70 used: a (80) does not fit, so b (10) waits behind it
    assert a.admitted == [] and b.admitted == []
    budget.release(70)  # empty: a, then b
    assert a.admitted == [80] and b.admitted == [10] and budget.used == 90


def test_a_closing_connection_leaves_the_queue() -> None:
    budget = Budget(10)
    holder = FakeConn(budget, "holder")
    assert holder.ask(10)
    gone, next_one = FakeConn(budget, "gone"), FakeConn(budget, "next")
    assert not gone.ask(5) and not next_one.ask(5)
    budget.unpark(gone)
    assert budget.waiting == 1 and not gone.parked
    budget.release(10)
    assert gone.admitted == [] and next_one.admitted == [5]


def test_a_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Budget(0)
