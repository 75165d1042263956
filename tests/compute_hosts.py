"""Simulated compute hosts for the local export mode (issue 26): each on its
own loopback address (127.0.0.N) with its own tgtd (TgtDaemon), its own
``sheepdog-backend gateway`` and its own ``sheepdog-backend agent`` process,
the agent loading its own ini file (its tgtd's control port).

``ComputeHost.start()`` starts all three and waits until the agent has
acknowledged on the cluster (``gateway_socket``: the gateway also listens on
that unix socket and the agent's LUs go through it, --gateway-socket);
``kill_agent()`` / ``start_agent()`` stop and restart the agent alone;
``stop()`` stops every process by its own handle, whatever happened
(idempotent; callers put it in ``finally``).  Logs go to the host's folder.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sheepdog_backend.client import SheepdogClient
from sheepdog_backend.export import Tgtadm, TgtTargets
from sheepdog_backend.export.hosts import ack, registration
from tests.realsheep import free_port, wait_port
from tests.tgtd import TgtDaemon

PREFIX = "iqn.2010-10.org.openstack:"
CHAP_KEY = "test-key-not-secret"


def backend_values(gateways: Sequence[str]) -> dict[str, object]:
    """The options every process of a test cluster shares."""
    return {"sheepdog_gateways": list(gateways), "sheepdog_retry_attempts": 2,
            "sheepdog_retry_deadline": 5.0, "sheepdog_connect_timeout": 2.0,
            "target_prefix": PREFIX, "sheepdog_export_chap_key": CHAP_KEY}


class ComputeHost:
    def __init__(self, name: str, address: str, base: Path, cluster: Sequence[str], *,
                 gateway_socket: str | None = None) -> None:
        self.name = name
        self.gateway_socket = gateway_socket
        self.address = address
        self.dir = base / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cluster = list(cluster)
        self.tgtd = TgtDaemon(self.dir / "tgtd", host=address)
        self.gateway_port = free_port(host=address)  # <= 9999: tgt keeps 4 digits
        self.gateway_proc: subprocess.Popen[bytes] | None = None
        self.agent_proc: subprocess.Popen[bytes] | None = None
        self._agent_runs = 0

    @property
    def gateway(self) -> str:
        return f"{self.address}:{self.gateway_port}"

    @property
    def portal(self) -> str:
        return self.tgtd.portal

    def targets(self) -> TgtTargets:
        return TgtTargets(Tgtadm(control_port=self.tgtd.control_port))

    def iqns(self) -> set[str]:
        return {t.iqn for t in self.targets().targets()}

    def _config(self) -> Path:
        path = self.dir / "agent.conf"
        lines = ["[DEFAULT]", "enabled_backends = sd", "", "[sd]"]
        values = dict(backend_values(self.cluster),
                      sheepdog_tgt_control_port=self.tgtd.control_port)
        for key, value in values.items():
            text = ",".join(value) if isinstance(value, list) else str(value)
            lines.append(f"{key} = {text}")
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, client: SheepdogClient) -> ComputeHost:
        try:
            self.tgtd.start()
            self.start_gateway()
            self.start_agent(client)
        except BaseException:
            self.stop()
            raise
        return self

    def start_gateway(self) -> None:
        argv = [sys.executable, "-m", "sheepdog_backend", "gateway", "--host", self.address,
                "--port", str(self.gateway_port)]
        if self.gateway_socket:
            argv += ["--unix", self.gateway_socket]
        for node in self.cluster:
            argv += ["--cluster", node]
        log = open(self.dir / "gateway.log", "ab")
        self.gateway_proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_port(self.address, self.gateway_port, timeout=20)
        if self.gateway_socket:
            sock = Path(self.gateway_socket)
            wait_for(f"the gateway's socket {sock}", sock.exists, timeout=10)

    def start_agent(self, client: SheepdogClient, *, timeout: float = 30.0) -> None:
        """Start the agent and wait until it has registered and acknowledged."""
        self._agent_runs += 1
        argv = [sys.executable, "-m", "sheepdog_backend", "--config-file",
                str(self._config()), "agent", "--host", self.name, "--portal", self.portal,
                "--gateway", self.gateway, "--poll-interval", "0.1", "--check-interval", "1"]
        if self.gateway_socket:
            argv += ["--gateway-socket", self.gateway_socket]
        log = open(self.dir / f"agent.{self._agent_runs}.log", "ab")
        self.agent_proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        pid = self.agent_proc.pid
        deadline = time.monotonic() + timeout
        while not ack(client, self.name).agent.endswith(f":{pid}"):
            if self.agent_proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"agent of {self.name} did not acknowledge: "
                                   + self.agent_log()[-3000:])
            time.sleep(0.05)
        assert registration(client, self.name).portal[0] == self.address

    def agent_log(self) -> str:
        path = self.dir / f"agent.{self._agent_runs}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill_agent(self) -> None:
        proc, self.agent_proc = self.agent_proc, None
        if proc is not None:
            proc.kill()
            proc.wait(timeout=10)

    def stop(self) -> None:
        self.kill_agent()
        try:
            self.tgtd.stop()
        finally:
            proc, self.gateway_proc = self.gateway_proc, None
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)


def wait_for(what: str, check: object, timeout: float = 15.0) -> None:
    """Wait until ``check()`` is true; AssertionError naming ``what`` after ``timeout``."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.05)
