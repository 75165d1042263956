"""The conformance suite against the correct in-memory fake: every test passes,
none is skipped or a gap."""

from __future__ import annotations

import pytest

from sheepdog_backend.testing.conformance import DriverConformanceTests
from tests.unit.testing.fake_driver import FakeDriver


class TestFakeDriverConformance(DriverConformanceTests):
    @pytest.fixture(scope="class")
    @classmethod
    def driver(cls) -> FakeDriver:
        return FakeDriver()
