"""Driver conformance suite: ``DriverConformanceTests``.

How it works: the class holds pytest tests that drive a ``VolumeDriver`` only
through its public methods and check data only through the driver's test hook
``driver.data_access()``.  It is not collected on its own (``__test__`` is
False); a subclass is collected (when its name matches ``Test*``) and must
provide a ``driver`` fixture that returns a set-up driver, e.g.::

    from sheepdog_backend.testing.backends import driver_from_config

    class TestMyDriver(DriverConformanceTests):
        @pytest.fixture(scope="class")
        @classmethod
        def driver(cls):
            with driver_from_config("my.ini", "mybackend") as drv:
                yield drv

The tests live in three groups (``suite_volumes.VolumeTests``,
``suite_snapshots.SnapshotTests``, ``suite_references.ReferenceTests``) that
this class combines with the fixtures below.  Every test registers what it
creates with a ``ResourceTracker`` that deletes it all at teardown, pass or
fail.  A test needing a capability the driver does not declare
(``driver.capabilities`` vs ``ALL_CAPABILITIES``) is skipped with "declared
unsupported: <capability>" and the pytest plugin reports it as GAP, never as a
pass.  Volumes are 1 GiB (thin) and data checks write a few hundred KiB at
several offsets, including 4 MiB object boundaries.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from sheepdog_backend.driver.base import VolumeDataAccess, VolumeDriver
from sheepdog_backend.testing.plugin import CAPABILITY_MARKER
from sheepdog_backend.testing.resources import ResourceTracker
from sheepdog_backend.testing.suite_base import (
    GAP_REASON_PREFIX,
    RUN_ID,
    declare_gap,
    expect_ok,
    refused,
    requires,
)
from sheepdog_backend.testing.suite_references import ReferenceTests
from sheepdog_backend.testing.suite_snapshots import SnapshotTests
from sheepdog_backend.testing.suite_volumes import VolumeTests

__all__ = ["GAP_REASON_PREFIX", "DriverConformanceTests", "ResourceTracker", "declare_gap",
           "expect_ok", "refused", "requires"]


class DriverConformanceTests(ReferenceTests, SnapshotTests, VolumeTests):
    """The VolumeDriver contract as tests; subclass it and provide ``driver``."""

    __test__: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__test__" not in cls.__dict__:
            cls.__test__ = True

    # ------------------------------------------------------------------ fixtures

    @pytest.fixture(autouse=True)
    def _declared_capabilities(self, request: pytest.FixtureRequest,
                               driver: VolumeDriver) -> None:
        needed: set[str] = set()
        for mark in request.node.iter_markers(CAPABILITY_MARKER):
            needed.update(mark.args)
        missing = sorted(needed - set(driver.capabilities))
        if missing:
            declare_gap(request.node, missing)

    @pytest.fixture
    def data(self, request: pytest.FixtureRequest, driver: VolumeDriver) -> VolumeDataAccess:
        if "data_access" not in driver.capabilities:
            declare_gap(request.node, ["data_access"])
        return driver.data_access()

    @pytest.fixture
    def resources(self, driver: VolumeDriver,
                  data: VolumeDataAccess) -> Iterator[ResourceTracker]:
        tracker = ResourceTracker(driver, RUN_ID, data)
        yield tracker
        expect_ok(tracker.cleanup())
