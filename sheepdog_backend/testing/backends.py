"""Backends for the conformance suite: a user's ini file, or an embedded server.

How it works: ``driver_from_config`` loads one backend of an ini file through
the entry-point loader (``driver.loader.load_backend``), sets it up
(``do_setup`` then ``check_for_setup_error``) and closes it afterwards.
``embedded_backend`` starts an ``EmbeddedServer`` (one or more gateways) in a
directory and writes an ini file that names every gateway, so the built-in
driver is tested exactly as a user would configure it.  Heavy modules (server,
loader) are imported inside the functions.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sheepdog_backend.driver.base import VolumeDriver
    from sheepdog_backend.server.embedded import EmbeddedServer

EMBEDDED_BACKEND = "embedded"


def write_backend_ini(path: str | os.PathLike[str], gateways: Sequence[str], *,
                      backend: str = EMBEDDED_BACKEND, driver: str = "sheepdog") -> Path:
    """An ini file with one enabled backend using ``driver`` over ``gateways``."""
    target = Path(path)
    target.write_text(
        "[DEFAULT]\n"
        f"enabled_backends = {backend}\n\n"
        f"[{backend}]\n"
        f"volume_driver = {driver}\n"
        f"sheepdog_gateways = {','.join(gateways)}\n"
        # a dead gateway (the multi-gateway run kills one) must not stall a test
        "sheepdog_connect_timeout = 2.0\n",
        encoding="utf-8")
    return target


def leftover_volumes(driver: VolumeDriver, prefix: str = "") -> list[str]:
    """Names of the working VDIs the driver can see (starting with ``prefix``):
    after a suite run on a cluster of its own, anything here leaked."""
    names = [str(v["reference"]["source-name"]) for v in driver.get_manageable_volumes()]
    return sorted(n for n in names if n.startswith(prefix))


@contextmanager
def driver_from_config(config_file: str | os.PathLike[str],
                       backend: str | None = None) -> Iterator[VolumeDriver]:
    """A loaded, set-up driver for ``backend`` (first enabled when None)."""
    from sheepdog_backend.driver.loader import load_backend

    driver = load_backend(os.fspath(config_file), backend)
    try:
        driver.do_setup()
        driver.check_for_setup_error()
        yield driver
    finally:
        driver.close()


@contextmanager
def embedded_backend(workdir: str | os.PathLike[str], *,
                     ports: Sequence[int] = (0,)) -> Iterator[tuple[EmbeddedServer, Path]]:
    """A started embedded server (formatted, 1 copy, sync off) and an ini file
    pointing at all of its gateways; the server is stopped on exit."""
    from sheepdog_backend.server.embedded import EmbeddedServer

    root = Path(workdir)
    server = EmbeddedServer(root / "sheep", ports=ports, copies=1, format=True, sync=False)
    server.start()
    try:
        yield server, write_backend_ini(root / "conformance.ini", server.gateways)
    finally:
        server.stop()
