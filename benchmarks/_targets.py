"""Where a benchmark runs: real sheep nodes it starts, a cluster the user
already runs (a sheepdog-backend ini file), or the embedded server.

How it works: each ``*_target`` context manager yields a ``Target`` holding
the first gateway, a ``SheepdogDriver`` built for it, and the real ``dog``
when one is found (``tests/realsheep.py`` finds ``sheep``/``dog`` through
SHEEPDOG_SHEEP / SHEEPDOG_DOG, SHEEPDOG_INTEROP_BIN or PATH; its
``SheepCluster`` starts the nodes and stops them by pid).  Everything a
target starts is stopped when the ``with`` block ends, whatever happens.
A Target is used by one thread.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from _serve import serve  # type: ignore[import-not-found]  # benchmarks/ is not a package

from sheepdog_backend.driver.base import BackendConfiguration
from sheepdog_backend.driver.loader import load_backend
from sheepdog_backend.driver.sheepdog import SheepdogDriver

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.realsheep import SheepCluster, find_program  # noqa: E402


@dataclass
class Target:
    label: str
    gateway: str  # host:port of the first gateway
    driver: SheepdogDriver
    dog: str | None
    copies: int
    owned: bool  # True: we started it (leftovers need no cleanup)

    @property
    def host(self) -> str:
        return self.gateway.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.gateway.rsplit(":", 1)[1])

    def run_dog(self, *args: str, stdin: str | None = None, stdout: str | None = None
                ) -> float:
        """Run ``dog ARGS -a HOST -p PORT`` as a user would; seconds it took.
        ``stdin``/``stdout`` name files to redirect from/to (output is
        otherwise captured, as a terminal would receive it)."""
        if self.dog is None:
            raise RuntimeError("no dog")
        cmd = [self.dog, *args, "-a", self.host, "-p", str(self.port)]
        with contextlib.ExitStack() as stack:
            fin: Any = stack.enter_context(open(stdin, "rb")) if stdin else subprocess.DEVNULL
            fout: Any = stack.enter_context(open(stdout, "wb")) if stdout else subprocess.PIPE
            start = time.perf_counter()
            proc = subprocess.run(cmd, stdin=fin, stdout=fout, stderr=subprocess.PIPE,
                                  timeout=300)
            took = time.perf_counter() - start
        if proc.returncode != 0 or b"fail" in proc.stderr.lower():
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): "
                               f"{proc.stderr.decode(errors='replace')}")
        return took


def make_driver(gateway: str, *, io_window: int | None = None) -> SheepdogDriver:
    values: dict[str, Any] = {"sheepdog_gateways": [gateway]}
    if io_window is not None:
        values["sheepdog_io_window"] = io_window
    driver = SheepdogDriver(BackendConfiguration(values), backend_name="bench")
    driver.do_setup()
    return driver


def have_real_sheep() -> bool:
    return find_program("sheep") is not None and find_program("dog") is not None


@contextlib.contextmanager
def real_sheep_target(root: str, *, nodes: int = 1, copies: int = 1) -> Iterator[Target]:
    with SheepCluster(os.path.join(root, "sheep"), nodes=nodes, copies=copies) as cluster:
        version = subprocess.run([cluster.sheep, "-v"], capture_output=True, text=True,
                                 timeout=10).stdout.strip().splitlines()
        label = (f"real sheep ({version[0] if version else 'sheep'}), {nodes} node(s), "
                 f"plain store, {copies} copies")
        driver = make_driver(cluster.gateways[0])
        try:
            yield Target(label, cluster.gateways[0], driver, cluster.dog, copies, True)
        finally:
            driver.close()


@contextlib.contextmanager
def embedded_target(root: str, *, sync: bool = True) -> Iterator[Target]:
    with serve(os.path.join(root, "embedded"), sync=sync) as gateway:
        driver = make_driver(gateway)
        try:
            yield Target(f"embedded server (sheepdog-backend serve, sync "
                         f"{'on' if sync else 'off'})", gateway, driver,
                         find_program("dog"), 1, True)
        finally:
            driver.close()


@contextlib.contextmanager
def config_target(path: str, backend: str | None) -> Iterator[Target]:
    """A cluster the user runs, described by a sheepdog-backend ini file
    (``[DEFAULT] enabled_backends`` + a backend section with sheepdog_gateways)."""
    driver = load_backend(path, backend)
    if not isinstance(driver, SheepdogDriver):
        raise SystemExit(f"{path}: backend {backend!r} is not a SheepdogDriver")
    driver.do_setup()
    driver.check_for_setup_error()
    gateway = driver.gateways[0]
    copies = driver.client.cluster_info().nr_copies
    try:
        yield Target(f"cluster of {path} [{driver.backend_name}] at {gateway}", gateway,
                     driver, find_program("dog"), copies, False)
    finally:
        driver.close()
