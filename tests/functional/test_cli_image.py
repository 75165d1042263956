"""``image import`` / ``image export`` through a real subprocess: the driver's
safe inspection first, nothing created on refusal, qcow2 through qemu-img, a
progress bar only on a terminal, throughput at the end."""

from __future__ import annotations

import json
import os
import pathlib
import pty
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from sheepdog_backend.client import SheepdogClient
from sheepdog_backend.testing.fixtures import EmbeddedServer

ROOT = pathlib.Path(__file__).resolve().parents[2]
MiB = 1 << 20
QEMU_IMG = shutil.which("qemu-img")


def cli(ini: str, *argv: str, stderr: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SHEEPDOG_BACKEND_CONFIG"}
    return subprocess.run([sys.executable, "-m", "sheepdog_backend", *argv, "--config-file",
                           ini], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE if stderr is None else stderr, text=True,
                          timeout=120, cwd=ROOT, env=env, check=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    with EmbeddedServer(tmp_path_factory.mktemp("img") / "data") as srv:
        yield srv


@pytest.fixture(scope="module")
def ini(server: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("imgini") / "img.conf"
    path.write_text(f"[DEFAULT]\nenabled_backends = main\n\n[main]\n"
                    f"sheepdog_gateways = {server.gateways[0]}\n")
    return str(path)


def pattern(size: int) -> bytes:
    block = bytes(range(256)) * 16
    return (block * (size // len(block) + 1))[:size]


def test_raw_import_creates_the_volume(ini: str, server: EmbeddedServer,
                                       tmp_path: pathlib.Path) -> None:
    image = tmp_path / "disk.raw"
    data = pattern(3 * MiB) + bytes(MiB) + b"tail"
    image.write_bytes(data)
    done = cli(ini, "image", "import", "imgv", str(image))
    assert done.returncode == 0, done.stderr
    assert "imported" in done.stdout and "/s)" in done.stdout and "new volume" in done.stdout
    assert done.stderr == ""  # no bar when stderr is not a terminal
    with SheepdogClient(server.gateways) as client:
        info = client.find_vdi("imgv")
        assert info is not None and info.size == 1 << 30
        assert client.read("imgv", 0, len(data)) == data
        client.delete_vdi("imgv")


def test_raw_export_of_an_existing_volume(ini: str, server: EmbeddedServer,
                                          tmp_path: pathlib.Path) -> None:
    data = pattern(5 * MiB)
    with SheepdogClient(server.gateways) as client:
        client.create_vdi("expv", 8 * MiB)
        client.write("expv", 0, data)
    out = tmp_path / "out.raw"
    exported = cli(ini, "image", "export", "expv", str(out), "-f", "json")
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["bytes"] == 8 * MiB
    assert out.read_bytes() == data + bytes(3 * MiB)
    again = cli(ini, "image", "export", "expv", str(out))
    assert again.returncode == 5 and "--force" in again.stderr
    out.write_bytes(b"keep")
    assert out.read_bytes() == b"keep"
    assert cli(ini, "image", "export", "expv", str(out), "--force").returncode == 0
    assert out.stat().st_size == 8 * MiB
    back = cli(ini, "image", "import", "expv", str(out))  # into the existing volume
    assert back.returncode == 0 and "new volume" not in back.stdout, back.stderr
    with SheepdogClient(server.gateways) as client:
        assert client.read("expv", 0, len(data)) == data
        client.delete_vdi("expv")


@pytest.mark.skipif(QEMU_IMG is None, reason="qemu-img (qemu-utils) is not installed")
def test_qcow2_export_and_unsafe_import(ini: str, server: EmbeddedServer,
                                        tmp_path: pathlib.Path) -> None:
    assert QEMU_IMG is not None
    data = pattern(2 * MiB)
    with SheepdogClient(server.gateways) as client:
        client.create_vdi("q1", 16 * MiB)
        client.write("q1", 0, data)
    out = tmp_path / "q1.qcow2"
    done = cli(ini, "image", "export", "q1", str(out), "--format", "qcow2")
    assert done.returncode == 0, done.stderr
    info = json.loads(subprocess.run([QEMU_IMG, "info", "--output=json", str(out)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == 16 * MiB
    assert out.stat().st_size < 8 * MiB  # zeros left out
    back = tmp_path / "back.raw"
    subprocess.run([QEMU_IMG, "convert", "-f", "qcow2", "-O", "raw", str(out), str(back)],
                   check=True)
    assert back.read_bytes() == data + bytes(14 * MiB)

    base = tmp_path / "base.raw"
    base.write_bytes(bytes(MiB))
    unsafe = tmp_path / "unsafe.qcow2"
    subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base),
                    str(unsafe)], check=True)
    refused = cli(ini, "image", "import", "q2", str(unsafe))
    assert refused.returncode == 5 and "unsafe" in refused.stderr, refused.stderr
    with SheepdogClient(server.gateways) as client:
        assert client.find_vdi("q2") is None
        client.delete_vdi("q1")


def test_too_small_volume_and_missing_file(ini: str, server: EmbeddedServer,
                                           tmp_path: pathlib.Path) -> None:
    big = tmp_path / "big.raw"
    with big.open("wb") as f:
        f.truncate((1 << 30) + 512)
    assert cli(ini, "volume", "create", "small", "--size", "1").returncode == 0
    done = cli(ini, "image", "import", "small", str(big))
    assert done.returncode == 5, done.stderr
    assert cli(ini, "image", "import", "nofile", str(tmp_path / "absent.raw")).returncode == 5
    with SheepdogClient(server.gateways) as client:
        assert client.find_vdi("nofile") is None
    assert cli(ini, "volume", "delete", "small").returncode == 0


def test_progress_bar_only_on_a_terminal(ini: str, tmp_path: pathlib.Path) -> None:
    image = tmp_path / "tty.raw"
    image.write_bytes(pattern(8 * MiB))
    master, slave = pty.openpty()
    try:
        done = cli(ini, "image", "import", "ttyv", str(image), stderr=slave)
        os.close(slave)
        slave = -1
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        shown = b"".join(chunks).decode(errors="replace")
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert done.returncode == 0
    assert "import ttyv [" in shown and "100.0%" in shown, shown
    assert cli(ini, "volume", "delete", "ttyv").returncode == 0
