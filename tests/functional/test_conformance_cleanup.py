"""Against the real driver on the embedded server: a conformance test that
fails half-way (after creating a volume, a snapshot and a clone) still leaves
the cluster empty, and so does a cleanup-heavy failing run of the suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from sheepdog_backend.client.lease_records import ANCHOR
from sheepdog_backend.server.embedded import EmbeddedServer
from sheepdog_backend.testing.backends import driver_from_config, write_backend_ini

pytest_plugins = ["pytester"]

INNER = """
import os

import pytest
from sheepdog_backend.testing.backends import driver_from_config
from sheepdog_backend.testing.conformance import DriverConformanceTests


class TestInner(DriverConformanceTests):
    @pytest.fixture(scope="class")
    @classmethod
    def driver(cls):
        with driver_from_config(os.environ["SDCONF_TEST_INI"]) as drv:
            yield drv

    def test_fails_after_creating(self, driver, data, resources):
        src = resources.create_volume()
        data.write(src, 0, b"x" * 4096)
        snap = resources.create_snapshot(src)
        clone = resources.volume()
        driver.create_volume_from_snapshot(clone, snap)
        assert data.exists(clone)
        raise AssertionError("deliberate failure mid-test")
"""


def test_failing_tests_leave_the_real_cluster_empty(pytester: pytest.Pytester,
                                                    tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with EmbeddedServer(tmp_path / "sheep") as server:
        ini = write_backend_ini(tmp_path / "b.ini", server.gateways)
        monkeypatch.setenv("SDCONF_TEST_INI", str(ini))
        pytester.makepyfile(test_inner_cleanup=INNER)
        result = pytester.runpytest_inprocess(
            "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestAssertRewriteWarning",
            "-k", "fails_after_creating or clone or revert")
        outcomes = result.parseoutcomes()
        assert outcomes.get("failed") == 1 and outcomes.get("passed", 0) >= 5, outcomes
        assert "deliberate failure mid-test" in result.stdout.str()
        with driver_from_config(ini) as drv:
            left = [(v.name, v.tag) for v in drv.client.list_vdis()
                    if v.name != ANCHOR]  # the driver's leases stay: not a volume
        assert left == [], f"VDIs or snapshots left behind: {left}"
