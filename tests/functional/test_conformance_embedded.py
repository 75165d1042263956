"""The conformance suite against the built-in driver on the embedded server,
configured through an ini file and loaded through the entry point, exactly as
a user would; afterwards the cluster must hold nothing the suite created."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sheepdog_backend.driver.base import VolumeDriver
from sheepdog_backend.testing.backends import (
    driver_from_config,
    embedded_backend,
    leftover_volumes,
)
from sheepdog_backend.testing.conformance import DriverConformanceTests


class TestEmbeddedServerConformance(DriverConformanceTests):
    @pytest.fixture(scope="class")
    @classmethod
    def driver(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VolumeDriver]:
        with embedded_backend(tmp_path_factory.mktemp("conformance-embedded")) as (_, ini):
            assert "volume_driver = sheepdog" in ini.read_text()
            with driver_from_config(ini) as drv:
                assert type(drv).__name__ == "SheepdogDriver"
                yield drv
                assert leftover_volumes(drv) == [], "the suite left VDIs behind"
