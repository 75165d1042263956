"""RetryPolicy: what it retries, backoff, deadline, exhaustion."""

from __future__ import annotations

import pytest

from sheepdog_backend.client.retry import RetryPolicy
from sheepdog_backend.exception import (
    ConnectionClosed,
    Halt,
    InvalidInput,
    NoVdi,
    ProtocolError,
    RetryExhausted,
    Shutdown,
    Startup,
    VdiLocked,
    WaitForFormat,
    WaitForJoin,
)


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def policy(t: FakeTime, **kw: object) -> RetryPolicy:
    kw.setdefault("rng", lambda: 1.0)
    return RetryPolicy(sleep=t.sleep, clock=t.clock, **kw)  # type: ignore[arg-type]


def failing(errors: list[BaseException], result: str = "done"):  # type: ignore[no-untyped-def]
    calls = [0]

    def fn() -> str:
        calls[0] += 1
        if errors:
            raise errors.pop(0)
        return result
    return fn, calls


@pytest.mark.parametrize("exc", [ConnectionClosed("x"), Startup(), WaitForJoin(), Shutdown(),
                                 Halt()])
def test_transient_errors_are_retried(exc: BaseException) -> None:
    t = FakeTime()
    fn, calls = failing([exc, exc])
    assert policy(t).call(fn) == "done"
    assert calls[0] == 3 and len(t.sleeps) == 2


@pytest.mark.parametrize("exc", [NoVdi(), ProtocolError("bad"), InvalidInput("x"),
                                 VdiLocked()])
def test_permanent_errors_pass_straight_through(exc: BaseException) -> None:
    t = FakeTime()
    fn, calls = failing([exc])
    with pytest.raises(type(exc)):
        policy(t).call(fn)
    assert calls[0] == 1 and t.sleeps == []


def test_wait_for_format_is_not_retried_unless_asked() -> None:
    t = FakeTime()
    fn, calls = failing([WaitForFormat()])
    with pytest.raises(WaitForFormat):
        policy(t).call(fn)
    assert calls[0] == 1
    fn, calls = failing([WaitForFormat()])
    assert policy(t, retry_wait_for_format=True).call(fn) == "done"
    assert calls[0] == 2


def test_wait_for_format_opt_in_still_ends_at_the_deadline() -> None:
    t = FakeTime()
    fn, calls = failing([WaitForFormat() for _ in range(1000)])
    with pytest.raises(RetryExhausted) as info:
        policy(t, retry_wait_for_format=True, attempts=1000, deadline=5.0,
               max_backoff=1.0).call(fn)
    assert isinstance(info.value.last_error, WaitForFormat)
    assert t.now <= 5.0 + 1e-9 and calls[0] < 20


def test_busy_lock_is_retried_only_when_waiting() -> None:
    t = FakeTime()
    fn, calls = failing([VdiLocked(), VdiLocked()])
    assert policy(t).call(fn, wait_for_lock=True) == "done"
    assert calls[0] == 3


def test_exhaustion_carries_the_last_error() -> None:
    t = FakeTime()
    last = ConnectionClosed("the last one")
    fn, calls = failing([ConnectionClosed("1"), ConnectionClosed("2"), last])
    with pytest.raises(RetryExhausted) as info:
        policy(t, attempts=3).call(fn, what="probe")
    assert info.value.last_error is last and calls[0] == 3
    assert "probe" in str(info.value) and "the last one" in str(info.value)


def test_backoff_is_exponential_capped_with_jitter() -> None:
    t = FakeTime()
    p = policy(t, base_backoff=0.1, max_backoff=0.5, jitter=0.5, attempts=6, deadline=100)
    fn, _ = failing([ConnectionClosed("x")] * 5)
    p.call(fn)
    # rng() == 1.0: each wait is the exponential value times 1.5
    assert t.sleeps == pytest.approx([0.15, 0.3, 0.6, 0.75, 0.75])
    zero = RetryPolicy(rng=lambda: 0.0, base_backoff=0.1, max_backoff=0.5, jitter=0.5)
    assert [zero.backoff(n) for n in (1, 2, 3, 4)] == pytest.approx([0.1, 0.2, 0.4, 0.5])


def test_deadline_caps_the_total_time() -> None:
    t = FakeTime()
    fn, calls = failing([ConnectionClosed("x")] * 100)
    with pytest.raises(RetryExhausted):
        policy(t, attempts=100, base_backoff=1.0, max_backoff=1.0, deadline=3.5).call(fn)
    assert t.now == pytest.approx(3.5) and calls[0] <= 5


@pytest.mark.parametrize("kw", [{"attempts": 0}, {"base_backoff": -1},
                                {"base_backoff": 2, "max_backoff": 1}, {"deadline": 0},
                                {"jitter": 2}])
def test_bad_settings_rejected(kw: dict[str, float]) -> None:
    with pytest.raises(InvalidInput):
        RetryPolicy(**kw)  # type: ignore[arg-type]


def test_from_config_mapping_and_object() -> None:
    p = RetryPolicy.from_config({"attempts": 2, "deadline": 9.0, "unrelated": 1})
    assert (p.attempts, p.deadline) == (2, 9.0)

    class Conf:
        attempts = 4
        jitter = 0.0
        retry_wait_for_format = True
    q = RetryPolicy.from_config(Conf())
    assert (q.attempts, q.jitter, q.retry_wait_for_format) == (4, 0.0, True)
