"""Real Sheepdog and QEMU programs for tests: find them, start real nodes.

How it works: ``find_program(name)`` looks for ``sheep``, ``dog``, ``qemu-img``
or ``qemu-io`` in its own environment variable (``SHEEPDOG_SHEEP``,
``SHEEPDOG_DOG``, ``SHEEPDOG_QEMU_IMG``, ``SHEEPDOG_QEMU_IO``), then in the
folder ``$SHEEPDOG_INTEROP_BIN``, then on ``PATH``; never in a path of this
repository's neighbours (``.ci/run`` sets ``SHEEPDOG_INTEROP_BIN``).
``require(name)`` skips the calling test, naming what is missing and how to
provide it.

``SheepCluster`` starts N real ``sheep`` daemons on 127.0.0.1 sharing one
``-c local:`` directory, each on its own free port (4-digit ports by default,
since tgt's Sheepdog store keeps only four digits of a port), waits until each
accepts, formats the cluster with ``dog cluster format`` and stops every node
by the pid it wrote, whatever happens (``stop()``, SIGTERM, is idempotent;
leaving the context manager, as the fixtures do, is ``discard()``: every node
killed at once, the cluster thrown away).  A multi-node cluster gives
each node its own zone (``-z``), as a real deployment would.  ``add_node()``
starts one more node (a node joining), ``nodes[i].kill()`` one dying,
``power_cut()`` all of them at the same instant; ``wait_ready()`` waits until
every living node reports the cluster running.  Nothing is shared between
clusters; one cluster's state is touched only by the thread that owns it.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import pytest

ENV_VARS = {
    "sheep": "SHEEPDOG_SHEEP",
    "dog": "SHEEPDOG_DOG",
    "qemu-img": "SHEEPDOG_QEMU_IMG",
    "qemu-io": "SHEEPDOG_QEMU_IO",
}
FOLDER_VAR = "SHEEPDOG_INTEROP_BIN"


def _qemu_has_sheepdog(path: str) -> bool:
    """QEMU removed its Sheepdog driver in 6.0: a newer qemu-img/qemu-io on PATH
    (Debian's 7.2, for iSCSI) is not the one the interop tier needs."""
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    words = proc.stdout.split()
    version = words[words.index("version") + 1] if "version" in words else ""
    major = version.split(".")[0]
    return major.isdigit() and int(major) < 6


def find_program(name: str) -> str | None:
    """The path of a real program, or None when it is not provided.

    For ``qemu-img``/``qemu-io`` only a QEMU older than 6.0 (one with the
    Sheepdog block driver) counts; Debian's own QEMU 7.2 is found by
    ``shutil.which`` directly where the iSCSI tests need it.
    """
    var = ENV_VARS.get(name)
    candidates: list[str | None] = []
    if var and os.environ.get(var):
        candidates.append(os.environ[var])
    else:
        folder = os.environ.get(FOLDER_VAR)
        if folder:
            candidates.append(os.path.join(folder, name))
        candidates.append(shutil.which(name))
    for path in candidates:
        if path is None or not os.access(path, os.X_OK):
            continue
        if name.startswith("qemu-") and not _qemu_has_sheepdog(path):
            continue
        return path
    return None


def require(name: str) -> str:
    """The program's path, or skip the test saying what is missing."""
    path = find_program(name)
    if path is None:
        var = ENV_VARS.get(name, "")
        what = "QEMU < 6.0 (with the Sheepdog driver) " if name.startswith("qemu-") else ""
        pytest.skip(f"real {what}{name} not found: set {var} or {FOLDER_VAR} "
                    f"(a folder holding it), or put it on PATH")
    return path


def free_port(*, max_port: int = 9999, host: str = "127.0.0.1") -> int:
    """A port that is free now on ``host``, at most ``max_port``."""
    for _ in range(200):
        port = random.randint(2000, max_port) if max_port < 65535 else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError(f"no free port <= {max_port} on {host}")


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing accepts on {host}:{port} after {timeout} s") from None
            time.sleep(0.05)


class SheepNode:
    """One real ``sheep`` daemon; stopped by the pid it wrote."""

    def __init__(self, sheep: str, base: Path, shm: Path, index: int, port: int,
                 zone: int | None = None) -> None:
        self.sheep = sheep
        self.index = index
        self.zone = zone  # None: sheep derives it from the address (127.0.0.1 -> 16777343)
        self.host = "127.0.0.1"
        self.port = port
        self.dir = base / f"node{index}"
        self.store = self.dir / "store"
        self.log_dir = self.dir / "log"
        self.pid_file = self.dir / "sheep.pid"
        self.shm = shm
        self.pid: int | None = None

    @property
    def gateway(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.pid_file.unlink(missing_ok=True)
        zone = ["-z", str(self.zone)] if self.zone is not None else []
        subprocess.run(
            [self.sheep, "-c", f"local:{self.shm}", "-b", self.host, "-p", str(self.port),
             *zone, "-l", f"dir={self.log_dir}", "-P", str(self.pid_file), str(self.store)],
            check=True, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while not self.pid_file.exists() or not self.pid_file.read_text().strip():
            if time.monotonic() > deadline:
                raise RuntimeError(f"sheep {self.gateway} wrote no pid file; log:\n"
                                   + self.log_text())
            time.sleep(0.02)
        self.pid = int(self.pid_file.read_text().strip())
        try:
            wait_port(self.host, self.port, timeout)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"sheep {self.gateway} did not listen; log:\n"
                               + self.log_text()) from None

    def alive(self) -> bool:
        """Whether the pid exists.  An exited sheep stays a zombie until the
        init process reaps it (it daemonized: not our child), about a second
        here, and a sheep started meanwhile on the same ``-c local:`` file
        still sees it as a member: waiting for the reaping is needed before a
        restart, not before throwing a cluster away (``discard``)."""
        if self.pid is None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the daemon (SIGKILL by default: a node dying mid-operation)."""
        if self.pid is not None and self.alive():
            os.kill(self.pid, sig)
        self._reap()

    def stop(self, timeout: float = 10.0) -> None:
        if self.pid is None:
            return
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.02)
            if self.alive():
                os.kill(self.pid, signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        # sheep daemonized: it is not our child, so poll until it is gone.
        if self.pid is None:
            return
        deadline = time.monotonic() + 5
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        self.pid = None

    def log_text(self) -> str:
        path = self.log_dir / "sheep.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else "(no log)"


class SheepCluster:
    """N real sheep nodes of one cluster on loopback (local cluster driver)."""

    def __init__(self, base: str | os.PathLike[str], nodes: int = 1, *, copies: int = 1,
                 format: bool = True, ports: Sequence[int] | None = None) -> None:
        self.sheep = require("sheep")
        self.dog = require("dog")
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.shm = self.base / "shm"  # a file sheep creates; must not pre-exist as a folder
        self.copies = copies
        self.format = format
        chosen = list(ports) if ports else []
        while len(chosen) < nodes:
            port = free_port()
            if port not in chosen:
                chosen.append(port)
        # Nodes on one address share sheep's default zone, and sheep places at
        # most one copy per zone: a multi-node cluster gets a zone per node, or
        # `cluster format -c 2` would ask "copies larger than zones?" and stop.
        self.nodes = [SheepNode(self.sheep, self.base, self.shm, i, p,
                                zone=i + 1 if nodes > 1 else None)
                      for i, p in enumerate(chosen)]

    @property
    def gateways(self) -> list[str]:
        return [node.gateway for node in self.nodes]

    def start(self) -> SheepCluster:
        try:
            for node in self.nodes:
                node.start()
            if self.format:
                # dog asks before some formats and, unanswered, formats nothing
                # yet exits 0: answer no, and let wait_ready() see the outcome.
                self.run_dog("cluster", "format", "-c", str(self.copies), input=b"no\n")
                self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def add_node(self, *, start: bool = True) -> SheepNode:
        """One more node of this cluster (a node joining); started unless told."""
        port = free_port()
        while port in {n.port for n in self.nodes}:
            port = free_port()
        index = len(self.nodes)
        node = SheepNode(self.sheep, self.base, self.shm, index, port, zone=index + 1)
        self.nodes.append(node)
        if start:
            node.start()
        return node

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Wait until every living node says the cluster is running (formatted,
        all nodes joined).  `dog vdi list` is no test: it succeeds unformatted."""
        deadline = time.monotonic() + timeout
        while True:
            states = [self.run_dog("cluster", "info", node=node.index, check=False)
                      for node in self.nodes if node.alive()]
            if states and all(p.stdout.startswith("Cluster status: running") for p in states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("cluster not ready: "
                                   + " | ".join((p.stdout + p.stderr).strip() for p in states))
            time.sleep(0.1)

    def run_dog(self, *args: str, node: int = 0, check: bool = True,
                input: bytes | None = None, timeout: float = 60.0
                ) -> subprocess.CompletedProcess[str]:
        """Run the real dog against node ``node``; text output."""
        target = self.nodes[node]
        cmd = [self.dog, *args, "-a", target.host, "-p", str(target.port)]
        if input is not None:
            raw = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout)
            proc = subprocess.CompletedProcess(
                cmd, raw.returncode, raw.stdout.decode(errors="replace"),
                raw.stderr.decode(errors="replace"))
        else:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def power_cut(self) -> None:
        """SIGKILL every node at the same moment: no node sees another leave, so
        each keeps the last epoch with all of them (a restarted node then waits
        for the others to rejoin)."""
        for node in self._sigkill_all():
            node.kill()  # reaps; forgets the pid

    def _sigkill_all(self) -> list[SheepNode]:
        """SIGKILL every living node at the same moment; the nodes signalled."""
        living = [node for node in self.nodes if node.pid is not None and node.alive()]
        for node in living:
            try:
                os.kill(node.pid, signal.SIGKILL)  # type: ignore[arg-type]
            except ProcessLookupError:
                pass
        return living

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every living node at once, wait for all together, SIGKILL
        what is left (a node takes ~2 s to vanish here: one by one, a 3-node
        teardown cost 7 s)."""
        living = [node for node in self.nodes if node.pid is not None and node.alive()]
        for node in living:
            try:
                os.kill(node.pid, signal.SIGTERM)  # type: ignore[arg-type]
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while any(node.alive() for node in living) and time.monotonic() < deadline:
            time.sleep(0.02)
        for node in self.nodes:
            try:
                node.kill()  # SIGKILL if still there; forgets the pid either way
            except Exception:  # stop every node whatever one does
                pass

    def __enter__(self) -> SheepCluster:
        return self.start()

    def discard(self) -> None:
        """SIGKILL every node and forget them, without waiting for init to
        reap them: the cluster is thrown away with its folder (waiting cost
        1-2 s per cluster)."""
        self._sigkill_all()
        for node in self.nodes:
            node.pid = None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.discard()
