"""The driver conformance suite as a test module shipped in the package.

    pytest --pyargs sheepdog_backend.testing --sheepdog-config my.ini [--sheepdog-backend NAME]

tests the backend of ``my.ini`` (loaded through its entry point, like a control
plane would).  Without ``--sheepdog-config`` it starts an embedded
Sheepdog-compatible server in a temporary directory, writes an ini file for it
and tests the built-in driver.  ``sheepdog-backend check`` runs this module.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from sheepdog_backend.driver.base import VolumeDriver
from sheepdog_backend.testing.backends import driver_from_config, embedded_backend
from sheepdog_backend.testing.conformance import DriverConformanceTests


@pytest.fixture(scope="module")
def driver(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[VolumeDriver]:
    config = request.config.getoption("sheepdog_config", default=None)
    backend = request.config.getoption("sheepdog_backend", default=None)
    with ExitStack() as stack:
        if config is None:
            workdir = tmp_path_factory.mktemp("sheepdog-conformance")
            _, config = stack.enter_context(embedded_backend(workdir))
        yield stack.enter_context(driver_from_config(config, backend))


class TestDriverConformance(DriverConformanceTests):
    """Every conformance test against the backend chosen on the command line."""
