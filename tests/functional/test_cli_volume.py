"""The ``sheepdog-backend`` volume commands end to end on an embedded server:
names exactly as ``dog vdi list`` shows them, JSON for scripts, exit codes."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest

from sheepdog_backend.cli import main
from sheepdog_backend.cli import volume as cli_volume
from sheepdog_backend.testing.fixtures import EmbeddedServer

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ini(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("cli")
    with EmbeddedServer(tmp / "data") as srv:
        path = tmp / "cli.conf"
        path.write_text(f"[DEFAULT]\nenabled_backends = main\n[main]\n"
                        f"sheepdog_gateways = {srv.gateways[0]}\n"
                        f"sheepdog_retry_attempts = 2\nsheepdog_retry_deadline = 5\n")
        yield str(path)


def run(capsys: pytest.CaptureFixture[str], ini: str, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--config-file", ini])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], ini: str, *argv: str) -> object:
    code, out, err = run(capsys, ini, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_volume_and_snapshot_commands(capsys: pytest.CaptureFixture[str], ini: str) -> None:
    code, out, err = run(capsys, ini, "volume", "create", "v1", "--size", "1")
    assert code == 0, err
    assert "created volume v1" in out
    listed = run_json(capsys, ini, "volume", "list")
    assert isinstance(listed, list)
    assert [(v["name"], v["size_bytes"]) for v in listed] == [("v1", 1 << 30)]

    assert run(capsys, ini, "snapshot", "create", "v1", "s1")[0] == 0
    snaps = run_json(capsys, ini, "snapshot", "list", "v1")
    assert isinstance(snaps, list) and [(s["name"], s["tag"]) for s in snaps] == [("v1", "s1")]

    code, _, err = run(capsys, ini, "volume", "create", "c1", "--snapshot", "v1@s1",
                       "--size", "2")
    assert code == 0, err
    shown = run_json(capsys, ini, "volume", "show", "c1")
    assert isinstance(shown, dict) and shown["size_bytes"] == 2 << 30
    assert run(capsys, ini, "volume", "create", "c2", "--snapshot", "v1@s1")[0] == 0
    assert run_json(capsys, ini, "volume", "show", "c2")["size_bytes"] == 1 << 30  # type: ignore[index]

    assert run(capsys, ini, "volume", "clone", "v1", "k1")[0] == 0
    assert run(capsys, ini, "volume", "extend", "k1", "--size", "3")[0] == 0
    assert run_json(capsys, ini, "volume", "show", "k1")["size_bytes"] == 3 << 30  # type: ignore[index]
    assert run(capsys, ini, "volume", "revert", "v1", "s1")[0] == 0

    code, out, _ = run(capsys, ini, "volume", "show", "v1")
    assert code == 0 and "snapshots" in out and "v1@s1" in out

    # busy, not found, invalid, conflict: each has its exit code
    code, _, err = run(capsys, ini, "volume", "delete", "v1")
    assert code == cli_volume.EXIT_CONFLICT and "snapshot" in err
    code, _, err = run(capsys, ini, "volume", "delete", "v1", "--json")
    assert code == cli_volume.EXIT_CONFLICT
    assert json.loads(err)["error"] == "VolumeIsBusy"
    assert run(capsys, ini, "volume", "show", "nope")[0] == cli_volume.EXIT_NOT_FOUND
    assert run(capsys, ini, "volume", "extend", "k1", "--size", "1")[0] == \
        cli_volume.EXIT_INVALID
    assert run(capsys, ini, "volume", "create", "v1", "--size", "5")[0] == \
        cli_volume.EXIT_CONFLICT
    assert run(capsys, ini, "volume", "create", "x", "--snapshot", "v1")[0] == \
        cli_volume.EXIT_INVALID
    assert run(capsys, ini, "volume", "create", "x", "--size", "1", "--backing",
               "rbd:pool/img@s")[0] == cli_volume.EXIT_INVALID
    assert run(capsys, ini, "volume", "create", "x")[0] == cli_volume.EXIT_USAGE
    assert run(capsys, ini, "snapshot", "create", "nope", "s")[0] == cli_volume.EXIT_NOT_FOUND

    for name in ("c1", "c2", "k1"):
        assert run(capsys, ini, "volume", "delete", name)[0] == 0
    assert run(capsys, ini, "snapshot", "delete", "v1", "s1")[0] == 0
    assert run(capsys, ini, "snapshot", "delete", "v1", "s1")[0] == 0  # idempotent
    assert run(capsys, ini, "volume", "delete", "v1")[0] == 0
    assert run_json(capsys, ini, "volume", "list") == []


def test_connect_and_stats(capsys: pytest.CaptureFixture[str], ini: str) -> None:
    assert run(capsys, ini, "volume", "create", "conn", "--size", "1")[0] == 0
    info = run_json(capsys, ini, "connect", "conn")
    assert isinstance(info, dict) and info["driver_volume_type"] == "sheepdog"
    port = info["data"]["ports"][0]
    code, out, _ = run(capsys, ini, "connect", "conn")
    assert code == 0 and json.loads(out) == info
    code, out, _ = run(capsys, ini, "connect", "conn", "--format", "libvirt")
    disk = ET.fromstring(out)
    source = disk.find("source")
    assert source is not None and source.get("name") == "conn"
    code, out, _ = run(capsys, ini, "connect", "conn", "--format", "qemu")
    assert out.strip() == f"sheepdog://127.0.0.1:{port}/conn"
    code, out, _ = run(capsys, ini, "connect", "conn", "--format", "blockdev")
    assert json.loads(out)["vdi"] == "conn"
    assert run(capsys, ini, "connect", "absent")[0] == cli_volume.EXIT_NOT_FOUND
    stats = run_json(capsys, ini, "stats")
    assert isinstance(stats, list) and stats[0]["volume_backend_name"] == "main"
    assert stats[0]["total_volumes"] >= 1
    assert run(capsys, ini, "volume", "delete", "conn")[0] == 0


def test_config_errors_exit_3(capsys: pytest.CaptureFixture[str], ini: str,
                              tmp_path: pathlib.Path) -> None:
    code, _, err = run(capsys, str(tmp_path / "absent.conf"), "volume", "list")
    assert code == cli_volume.EXIT_CONFIG and "no such configuration file" in err
    code, _, err = run(capsys, ini, "volume", "list", "--backend", "other")
    assert code == cli_volume.EXIT_CONFIG and "'other'" in err
    bad = tmp_path / "bad.conf"
    bad.write_text("[DEFAULT]\nenabled_backends = a\n[a]\nvolume_driver = nosuch\n")
    code, _, err = run(capsys, str(bad), "stats")
    assert code == cli_volume.EXIT_CONFIG and "[a] volume_driver" in err


def test_unreachable_cluster_exit_7(capsys: pytest.CaptureFixture[str],
                                    tmp_path: pathlib.Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    conf = tmp_path / "down.conf"
    conf.write_text(f"[DEFAULT]\nenabled_backends = a\n[a]\nsheepdog_gateways = "
                    f"127.0.0.1:{port}\nsheepdog_retry_attempts = 1\n"
                    f"sheepdog_connect_timeout = 1\n")
    code, _, err = run(capsys, str(conf), "volume", "list")
    assert code == cli_volume.EXIT_UNAVAILABLE, err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], ini: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(["volume", "create", "v", "--size", "0", "--config-file", ini])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["connect", "v", "--format", "iscsi", "--config-file", ini])
    assert info.value.code == 2
    capsys.readouterr()


def test_real_subprocess(ini: str) -> None:
    env = dict(os.environ, SHEEPDOG_BACKEND_CONFIG=ini)
    created = subprocess.run([sys.executable, "-m", "sheepdog_backend", "volume", "create",
                              "sub1", "--size", "1"], capture_output=True, text=True,
                             timeout=60, env=env, cwd=ROOT, check=False)
    assert created.returncode == 0, created.stderr
    listed = subprocess.run([sys.executable, "-m", "sheepdog_backend", "volume", "list",
                             "--json"], capture_output=True, text=True, timeout=60, env=env,
                            cwd=ROOT, check=False)
    assert listed.returncode == 0, listed.stderr
    assert "sub1" in [v["name"] for v in json.loads(listed.stdout)]
    deleted = subprocess.run([sys.executable, "-m", "sheepdog_backend", "volume", "delete",
                              "sub1", "--config-file", ini], capture_output=True, text=True,
                             timeout=60, cwd=ROOT, check=False)
    assert deleted.returncode == 0, deleted.stderr
    missing = subprocess.run([sys.executable, "-m", "sheepdog_backend", "volume", "show",
                              "sub1", "--config-file", ini], capture_output=True, text=True,
                             timeout=60, cwd=ROOT, check=False)
    assert missing.returncode == cli_volume.EXIT_NOT_FOUND
