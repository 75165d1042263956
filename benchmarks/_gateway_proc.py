"""`sheepdog-backend gateway` as a separate process for the benchmarks, and
what /proc says about a process and about the TCP connections to a port.

How it works: ``GatewayProcess(cluster, log).start()`` runs ``python -m
sheepdog_backend gateway --cluster HOST:PORT... --port P`` (the same entry
point as the installed ``sheepdog-backend`` script, in this interpreter's
environment) with its output in ``log``; P is a free port <= 9999 (tgt's
Sheepdog store keeps 4 digits of a port).  ``start`` waits until the port
accepts (bounded); ``stop`` sends SIGTERM to its pid, then SIGKILL after
10 s, whatever state it is in (``with`` calls it).  Its own interpreter
means its own GIL, and its RSS and threads can be read from /proc/PID.

``proc_sample(pid)`` reads VmRSS, VmHWM (the peak RSS) and Threads from
/proc/PID/status and counts /proc/PID/fd.  ``tcp_clients(port)`` lists the
client ends of the loopback TCP connections to ``port`` (from
/proc/net/tcp and tcp6), so the connections tgt opened to a gateway or a
sheep can be counted from outside either.  ``Watch`` samples a process
(and optionally a port) from a thread every ``interval`` s until stopped and
keeps the first and peak figures.  Linux only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

MiB = 1 << 20
ESTABLISHED = "01"


@dataclass(frozen=True)
class ProcSample:
    rss: int  # bytes
    hwm: int  # peak RSS of the process's life, bytes
    threads: int
    fds: int


def proc_sample(pid: int) -> ProcSample | None:
    """The process's memory, threads and open fds now; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    if "VmRSS" not in fields:  # a zombie: no memory left to read
        return None

    def kib(name: str) -> int:
        return int(fields[name].split()[0]) * 1024

    return ProcSample(rss=kib("VmRSS"), hwm=kib("VmHWM"),
                      threads=int(fields["Threads"].split()[0]), fds=fds)


def tcp_clients(port: int) -> dict[int, str]:
    """Client-side local port -> TCP state (hex, "01" established) of every
    connection on this host to ``port``."""
    found: dict[int, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                lines = f.readlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 4:
                continue
            local, remote, state = parts[1], parts[2], parts[3]
            if int(remote.rsplit(":", 1)[1], 16) == port and state != "0A":  # not LISTEN
                found[int(local.rsplit(":", 1)[1], 16)] = state
    return found


@dataclass
class Watch:
    """Samples ``pid`` (and the connections to ``port``) every ``interval`` s
    from a daemon thread between ``start`` and ``stop``."""

    pid: int
    port: int | None = None
    interval: float = 0.25
    first: ProcSample | None = None
    last: ProcSample | None = None
    peak_rss: int = 0
    peak_threads: int = 0
    peak_fds: int = 0
    peak_connections: int = 0  # established at once
    seen_connections: set[int] = field(default_factory=set)  # client ports seen, any state
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        got = proc_sample(self.pid)
        if got is not None:
            self.first = self.first or got
            self.last = got
            self.peak_rss = max(self.peak_rss, got.rss, got.hwm)
            self.peak_threads = max(self.peak_threads, got.threads)
            self.peak_fds = max(self.peak_fds, got.fds)
        if self.port is not None:
            clients = tcp_clients(self.port)
            self.seen_connections.update(clients)
            self.peak_connections = max(
                self.peak_connections, sum(1 for s in clients.values() if s == ESTABLISHED))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> Watch:
        self.sample()
        self._thread = threading.Thread(target=self._run, name=f"watch-{self.pid}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.sample()


def free_tgt_port() -> int:
    """A free loopback port <= 9999 (tgt reads 4 digits of a port)."""
    from tests.realsheep import free_port  # needs the test extras: lazily
    return free_port()


class GatewayProcess:
    """One ``sheepdog-backend gateway`` process on 127.0.0.1:PORT."""

    def __init__(self, cluster: list[str], log: str | os.PathLike[str], *,
                 port: int | None = None, args: tuple[str, ...] = ()) -> None:
        self.cluster = list(cluster)
        self.log = Path(log)
        self.port = port or free_tgt_port()
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the gateway process is not running")
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        argv = [sys.executable, "-m", "sheepdog_backend", "gateway", "--port", str(self.port),
                "--stats-interval", "3600", *self.args]
        for node in self.cluster:
            argv += ["--cluster", node]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the gateway exited at start ({self.proc.returncode}): "
                                       f"{self.log_tail()}")
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                    return self
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the gateway did not listen on {self.address} "
                                           f"within {timeout:g} s: {self.log_tail()}") from None
                    time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
