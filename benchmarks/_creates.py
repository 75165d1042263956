"""What coherent creates cost: object creates through the gateway with its
check (gateway/coherence.py: is the object there already?) and without it,
next to the same creates sent to the node, side by side in one run.

How it works: ``create_costs(gateway, cluster, count, rounds)`` makes one fresh
VDI per path and round and sends ``count`` CREATE_AND_WRITE_OBJ of 64 KiB, one
after another, each to an object not created yet (what tgt sends for a
guest's first write into an object), over one raw connection; the paths
rotate each round.  "without" runs the same in-process gateway with its
check bypassed for the measurement only (the gateway never runs that way:
a stale LU's create would replace an object).  Returns the median seconds
per create of each path.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sheepdog_backend.client import SheepdogClient
from sheepdog_backend.client import requests as rq
from sheepdog_backend.gateway import Gateway
from sheepdog_backend.protocol.header import Request
from sheepdog_backend.protocol.oid import vid_to_data_oid
from sheepdog_backend.server.wire import RawConnection

BLOCK = 64 * 1024
PATHS = ("direct", "gateway", "without check")


@contextmanager
def _unchecked(gateway: Gateway) -> Iterator[None]:
    original: Callable[[Request], tuple[Request, int | None]] = gateway.coherence.prepare
    gateway.coherence.prepare = lambda request: (request, None)  # type: ignore[method-assign]
    try:
        yield
    finally:
        gateway.coherence.prepare = original  # type: ignore[method-assign]


def _run(address: tuple[str, int], vid: int, count: int) -> float:
    data = b"\x5c" * BLOCK
    with RawConnection(*address) as raw:
        times = []
        for idx in range(count):
            start = time.perf_counter()
            answer = raw.call(rq.create_and_write_obj(vid_to_data_oid(vid, idx), 0, data))
            times.append(time.perf_counter() - start)
            if not answer.ok:
                raise RuntimeError(f"create {idx} answered {answer.result:#x}")
    return statistics.median(times)


def create_costs(gateway: Gateway, cluster: list[str], count: int, rounds: int
                 ) -> dict[str, float]:
    host, port = cluster[0].rsplit(":", 1)
    node = (host, int(port))
    via = ("127.0.0.1", gateway.port or 0)
    results: dict[str, list[float]] = {path: [] for path in PATHS}
    with SheepdogClient(cluster) as client:
        for r in range(rounds):
            order = PATHS[r % 3:] + PATHS[:r % 3]
            for path in order:
                name = f"creates-{path.replace(' ', '-')}-{r}"
                vid = client.create_vdi(name, count * (4 << 20)).vid
                if path == "direct":
                    results[path].append(_run(node, vid, count))
                elif path == "gateway":
                    results[path].append(_run(via, vid, count))
                else:
                    with _unchecked(gateway):
                        results[path].append(_run(via, vid, count))
                client.delete_vdi(name)
    return {path: statistics.median(values) for path, values in results.items()}


def print_creates(costs: dict[str, float], count: int, rounds: int) -> None:
    ms = 1000.0
    print(f"\ncoherent creates: {count} CREATE_AND_WRITE_OBJ of 64 KiB into fresh objects, one "
          f"at a time, median of {rounds} rounds (order rotated)")
    for path in PATHS:
        print(f"  {path:<14} {costs[path] * ms:7.2f} ms per create")
    extra = costs["gateway"] - costs["without check"]
    print(f"  the check costs {extra * ms:.2f} ms per create "
          f"({extra / costs['without check'] * 100:+.0f}%)")
