"""A private tgtd for tests: its own control port and loopback iSCSI portal.

``TgtDaemon(log_dir)`` starts ``tgtd -f -C PORT --iscsi portal=127.0.0.1:PORT``
(never the defaults 0 / 3260, so several test runs can share the machine;
``host="127.0.0.2"`` puts the portal on another loopback address, as a second
compute host's tgtd: Linux routes all of 127.0.0.0/8 to lo),
waits until tgtadm answers, and ``stop()`` kills it by its pid.  ``restart()``
keeps the ports (targets are lost: tgtd keeps them in memory only).  Skips
with the reason when tgtd/tgtadm are absent or tgtd cannot start.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType

import pytest

from tests.realsheep import free_port, wait_port


def _free_control_port() -> int:
    """tgtd's control "port" names a unix socket /var/run/tgtd/socket.N
    (N <= 32767); pick an N no other tgtd holds."""
    for _ in range(200):
        number = random.randint(2000, 32000)
        if not os.path.exists(f"/var/run/tgtd/socket.{number}.lock"):
            return number
    raise RuntimeError("no free tgtd control port")


class TgtDaemon:
    def __init__(self, log_dir: str | os.PathLike[str], *, iothreads: int | None = None,
                 host: str = "127.0.0.1") -> None:
        self.tgtd = shutil.which("tgtd")
        self.tgtadm = shutil.which("tgtadm")
        if self.tgtd is None or self.tgtadm is None:
            print("SKIP reason: tgtd/tgtadm (package tgt) not installed")
            pytest.skip("tgtd/tgtadm not installed: apt-get install tgt")
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.control_port = _free_control_port()
        self.host = host
        self.portal_port = free_port(max_port=65535, host=host)
        self.iothreads = iothreads
        self.proc: subprocess.Popen[bytes] | None = None
        self._starts = 0

    @property
    def portal(self) -> str:
        return f"{self.host}:{self.portal_port}"

    def start(self, timeout: float = 15.0) -> TgtDaemon:
        assert self.tgtd is not None
        self._starts += 1
        argv = [self.tgtd, "-f", "-C", str(self.control_port),
                "--iscsi", f"portal={self.host}:{self.portal_port}"]
        if self.iothreads:
            argv += ["-t", str(self.iothreads)]
        log = open(self.log_dir / f"tgtd.{self._starts}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                text = self.log_text()
                self.proc = None
                print(f"SKIP reason: tgtd exited at start: {text[-500:]}")
                pytest.skip(f"tgtd could not start: {text[-300:]}")
            probe = subprocess.run([str(self.tgtadm), "-C", str(self.control_port),
                                    "--lld", "iscsi", "--mode", "target", "--op", "show"],
                                   capture_output=True, timeout=10, check=False)
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                self.stop()
                pytest.skip("tgtd did not answer tgtadm within "
                            f"{timeout:g} s: {probe.stderr!r}")
            time.sleep(0.1)
        wait_port(self.host, self.portal_port, timeout=timeout)
        return self

    def log_text(self) -> str:
        path = self.log_dir / f"tgtd.{self._starts}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.kill()  # tgtd -f ignores SIGTERM while it has targets
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - kill -9 cannot be ignored
            pass

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> TgtDaemon:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
