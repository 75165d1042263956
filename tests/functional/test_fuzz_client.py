"""Fuzzing the client's reply decoding end to end: an EmbeddedServer behind a
proxy that corrupts replies (bytes flipped anywhere: header fields, result
codes, lengths, payloads; seeded per example by hypothesis).  Every public
call must end with a result or a SheepdogError - never another exception -
within its deadline, and without allocating much (tracemalloc peak)."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sheepdog_backend.client.client import SheepdogClient
from sheepdog_backend.client.retry import RetryPolicy
from sheepdog_backend.exception import SheepdogError
from sheepdog_backend.server.embedded import EmbeddedServer
from tests.functional.faultproxy import RandomFaultProxy

MIB = 1 << 20
DEADLINE = 4.0  # the client's retry deadline below
SLACK = 6.0  # one request timeout (2 s) past the deadline, and a loaded machine
PEAK = 96 * MIB


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    with EmbeddedServer(tmp_path_factory.mktemp("fuzzclient") / "sheep") as srv:
        with SheepdogClient(srv.gateways) as client:
            client.create_vdi("fz", 16 * MIB)
            client.write("fz", 0, b"\x5a" * (5 * MIB))
            client.snapshot_vdi("fz", "s1")
        yield srv


CALLS: list[tuple[str, Callable[[SheepdogClient], object]]] = [
    ("get_vdi", lambda c: c.get_vdi("fz")),
    ("read", lambda c: c.read("fz", 0, 5 * MIB)),
    ("read_snapshot", lambda c: c.read("fz", 0, 64 << 10, tag="s1")),
    ("list_vdis", lambda c: c.list_vdis()),
    ("list_snapshots", lambda c: c.list_snapshots("fz")),
    ("write", lambda c: c.write("fz", 8 * MIB, b"\x01" * 4096)),
    ("cluster_info", lambda c: c.cluster_info()),
]


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 1 << 30), rate=st.sampled_from([0.05, 0.3, 1.0]))
@example(seed=248, rate=1.0)  # a corrupted lookup reply once made list_snapshots MemoryError
def test_corrupted_replies_give_typed_errors_in_time(server: EmbeddedServer, seed: int,
                                                     rate: float) -> None:
    failures = []
    with RandomFaultProxy(server.addresses[0], seed=seed, rates={"corrupt": rate}) as proxy:
        retry = RetryPolicy(deadline=DEADLINE, attempts=3)
        with SheepdogClient([proxy.address], request_timeout=2.0, connect_timeout=2.0,
                            retry=retry) as client:
            for name, call in CALLS:
                tracemalloc.start()
                started = time.monotonic()
                try:
                    call(client)
                except SheepdogError:
                    pass
                except Exception as exc:  # an untyped error is the finding
                    failures.append(f"{name}: untyped {type(exc).__name__}: {exc}")
                finally:
                    _, peak = tracemalloc.get_traced_memory()
                    tracemalloc.stop()
                took = time.monotonic() - started
                if took > DEADLINE + SLACK:
                    failures.append(f"{name}: took {took:.1f} s")
                if peak > PEAK:
                    failures.append(f"{name}: allocated {peak / MIB:.0f} MiB")
    assert failures == []
