"""``sheepdog-backend gateway`` as a process: it serves, counts per-volume
I/O into its stats file, stops on SIGTERM removing its socket, and refuses
a port tgt cannot reach."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sheepdog_backend.client import SheepdogClient
from sheepdog_backend.server.embedded import EmbeddedServer
from tests.realsheep import free_port, wait_port


def test_gateway_command_serves_counts_and_stops(tmp_path: Path) -> None:
    port = free_port()
    sock, stats_file = tmp_path / "gw.sock", tmp_path / "stats.json"
    with EmbeddedServer(tmp_path / "sheep", sync=False) as server:
        argv = [sys.executable, "-m", "sheepdog_backend", "gateway", "--cluster",
                server.gateways[0], "--port", str(port), "--unix", str(sock),
                "--stats-file", str(stats_file), "--stats-interval", "0.5"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            wait_port("127.0.0.1", port, timeout=20)
            with SheepdogClient([f"127.0.0.1:{port}"]) as via:
                vid = via.create_vdi("clivol", 8 << 20).vid
                via.write("clivol", 0, b"\x44" * 65536)
            deadline = time.monotonic() + 20
            counters = None
            while time.monotonic() < deadline:
                if stats_file.exists():
                    counters = json.loads(stats_file.read_text())["vdis"].get(f"{vid:x}")
                    if counters and counters["write_bytes"] >= 65536:
                        break
                time.sleep(0.2)
            assert counters and counters["writes"] >= 1, counters
            assert sock.exists()
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        assert "gateway on unix:" in err and "stopped" in err
        assert not sock.exists()
        with SheepdogClient(server.gateways) as direct:
            assert direct.read("clivol", 0, 65536) == b"\x44" * 65536


def test_gateway_command_refuses_a_port_tgt_cannot_use() -> None:
    proc = subprocess.run([sys.executable, "-m", "sheepdog_backend", "gateway", "--cluster",
                           "127.0.0.1:7000", "--port", "17000"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "4 digits" in proc.stderr


def test_gateway_command_refuses_a_negative_replay_budget() -> None:
    proc = subprocess.run([sys.executable, "-m", "sheepdog_backend", "gateway", "--cluster",
                           "127.0.0.1:7000", "--port", "7001", "--replay-budget", "-3"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "--replay-budget: -3 MiB: the budget cannot be negative" in proc.stderr


@pytest.mark.parametrize(("argv", "message"), [
    (["--max-connections", "0"], "max-connections must be at least 1, got 0"),
    (["--max-connections", "lots"], "max-connections must be a number, got 'lots'"),
    (["--memory-budget", "0"], "the memory budget must be a size of at least 1M"),
    (["--memory-budget", "12X"], "the memory budget must be a size"),
])
def test_gateway_command_refuses_bad_limits(argv: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "sheepdog_backend", "gateway", "--cluster",
                           "127.0.0.1:7000", "--port", "7001", *argv],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
