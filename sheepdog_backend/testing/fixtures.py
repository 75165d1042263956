"""Test helpers: the embedded Sheepdog-compatible server and its pytest fixture."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sheepdog_backend.server.embedded import EmbeddedServer, format_request

__all__ = ["EmbeddedServer", "embedded_server", "format_request"]


@pytest.fixture
def embedded_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A started one-port embedded server, formatted with 1 copy, sync off."""
    server = EmbeddedServer(tmp_path / "sheep", copies=1, format=True, sync=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()
