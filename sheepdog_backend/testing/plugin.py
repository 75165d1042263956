"""pytest plugin (entry point ``pytest11``): command-line options for the
driver conformance suite.  Imports nothing heavy: pytest loads it in every
session of every project that has sheepdog-backend installed."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sheepdog", "sheepdog-backend driver conformance")
    group.addoption("--sheepdog-config", metavar="FILE", default=None,
                    help="ini file with the backend to test (default: start an embedded "
                    "Sheepdog-compatible server and test the built-in driver against it)")
    group.addoption("--sheepdog-backend", metavar="NAME", default=None,
                    help="backend section of --sheepdog-config to test (default: the first "
                    "of enabled_backends)")
