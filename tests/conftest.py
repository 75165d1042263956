"""Shared pytest fixtures."""

from sheepdog_backend.testing.fixtures import embedded_server  # noqa: F401
