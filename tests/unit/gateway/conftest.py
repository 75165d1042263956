"""Two scripted nodes (tests/unit/engine/fakenode.py) for the relay's and the
lane's tests: the first answers reads with 0x01 bytes, the second with 0x02."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.engine.fakenode import FakeNode


@pytest.fixture
def nodes() -> Iterator[tuple[FakeNode, FakeNode]]:
    with FakeNode(fill=b"\x01") as first, FakeNode(fill=b"\x02") as second:
        yield first, second
