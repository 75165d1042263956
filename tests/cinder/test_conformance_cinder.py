"""The conformance suite through the Cinder adapter, on the embedded server;
afterwards the cluster must hold nothing the suite created."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sheepdog_backend.driver.base import VolumeDriver
from sheepdog_backend.testing.backends import embedded_backend, leftover_volumes
from sheepdog_backend.testing.conformance import DriverConformanceTests
from tests.cinder.conftest import CINDER_MISSING, CinderBackend

pytestmark = pytest.mark.skipif(bool(CINDER_MISSING), reason=CINDER_MISSING or "-")


class TestCinderAdapterConformance(DriverConformanceTests):
    @pytest.fixture(scope="class")
    @classmethod
    def driver(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VolumeDriver]:
        from tests.cinder.conformance_adapter import CinderAdapterDriver

        tmp = tmp_path_factory.mktemp("conformance-cinder")
        with embedded_backend(tmp) as (server, _):
            be = CinderBackend(server.gateways)
            be.set(image_conversion_dir=str(tmp / "conversion"))
            drv = CinderAdapterDriver(be)
            try:
                drv.do_setup()
                drv.check_for_setup_error()
                yield drv
                assert leftover_volumes(drv.cinder.core) == [], "the suite left VDIs behind"
            finally:
                be.close()
