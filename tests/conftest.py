"""Shared pytest fixtures."""

import collections.abc as _abc
from pathlib import Path as _Path

import pytest as _pytest

from sheepdog_backend.testing.fixtures import embedded_server  # noqa: F401
from tests.realsheep import SheepCluster


@_pytest.fixture
def real_sheep(tmp_path: _Path) -> _abc.Iterator[SheepCluster]:
    """One real, formatted sheep node on loopback (skips when sheep/dog are absent)."""
    with SheepCluster(tmp_path / "real", nodes=1) as cluster:
        yield cluster


@_pytest.fixture
def real_sheep_cluster(tmp_path: _Path) -> _abc.Iterator[SheepCluster]:
    """Three real sheep nodes of one cluster, formatted with 2 copies."""
    with SheepCluster(tmp_path / "real", nodes=3, copies=2) as cluster:
        yield cluster
