"""`sheepdog-backend serve`: argument validation, start, SIGTERM/SIGINT stop."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sheepdog_backend.cli import main
from sheepdog_backend.protocol.constants import Opcode, Result
from sheepdog_backend.protocol.header import Request
from sheepdog_backend.server.wire import RawConnection


@pytest.mark.parametrize("argv, message", [
    (["--port", "-1"], "port must be in 1..65535"),
    (["--port", "70000"], "port must be in 1..65535"),
    (["--port", "seven"], "port must be a number"),
    (["--copies", "0"], "copies must be in 1..31"),
    (["--copies", "32"], "copies must be in 1..31"),
])
def test_bad_arguments_are_refused(tmp_path: Path, argv: list[str], message: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--data-dir", str(tmp_path / "d"), *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_a_port_given_twice_is_refused(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--data-dir", str(tmp_path / "d"), "--port", "7000",
                 "--port", "7000"]) == 2
    assert "a port is given twice" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("sig, fmt", [(signal.SIGTERM, True), (signal.SIGINT, False)])
def test_serve_starts_answers_and_stops_cleanly(tmp_path: Path, sig: int, fmt: bool) -> None:
    ports = [_free_port(), _free_port()]
    argv = [sys.executable, "-m", "sheepdog_backend", "serve", "--data-dir",
            str(tmp_path / "d"), "--port", str(ports[0]), "--port", str(ports[1]),
            "--no-sync"] + ([] if fmt else ["--no-format"])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                conn = RawConnection("127.0.0.1", ports[1], timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        with conn:
            rsp = conn.call(Request(Opcode.STAT_CLUSTER, data_length=0))
            assert rsp.result == (Result.SUCCESS if fmt else Result.WAIT_FOR_FORMAT)
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 2 and "serving" in lines[0] and "stopped" in lines[1]
    assert f"127.0.0.1:{ports[0]}" in lines[0]


def test_port_zero_binds_free_ports_and_names_them(tmp_path: Path) -> None:
    """`--port 0` avoids the pick-then-bind race: the start line names the
    ports really bound, and the server answers on each of them."""
    argv = [sys.executable, "-m", "sheepdog_backend", "serve", "--data-dir",
            str(tmp_path / "d"), "--port", "0", "--port", "0", "--no-sync"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # the start line, written once listening
        assert "serving" in line, line
        gateways = [word for word in line.split() if word.startswith("127.0.0.1:")]
        ports = [int(g.rsplit(":", 1)[1]) for g in gateways]
        assert len(ports) == 2 and len(set(ports)) == 2 and 0 not in ports
        for port in ports:
            with RawConnection("127.0.0.1", port, timeout=5) as conn:
                assert conn.call(Request(Opcode.STAT_CLUSTER, data_length=0)).ok
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0
