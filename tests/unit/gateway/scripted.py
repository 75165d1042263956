"""A gateway in front of scripted nodes (conftest.py's ``nodes``), with a
retry policy that does not sleep."""

from __future__ import annotations

from sheepdog_backend.client import RetryPolicy
from sheepdog_backend.gateway import Gateway
from tests.realsheep import free_port
from tests.unit.engine.fakenode import FakeNode


def gateway_on(*nodes: FakeNode, **kw: object) -> Gateway:
    retry = RetryPolicy(attempts=5, base_backoff=0.01, max_backoff=0.05, deadline=5.0,
                        sleep=lambda _s: None)
    return Gateway([n.address for n in nodes], port=free_port(), discover=False,
                   retry=retry, **kw)  # type: ignore[arg-type]
