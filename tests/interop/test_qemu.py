"""QEMU 5.2 (the last QEMU with block/sheepdog.c) on volumes our driver made,
against a real sheep and against the embedded server (each test runs on both).

QEMU's own quirks (`qemu-img snapshot -d` clears the live volume's index,
`-o preallocation=full` aborts) are the same on a real sheep and are not used.
"""

from __future__ import annotations

import io
import json
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from sheepdog_backend.client import SheepdogClient
from sheepdog_backend.driver.base import Connector, Snapshot, Volume, VolumeDriver
from sheepdog_backend.driver.connection import blockdev_json, qemu_uri
from sheepdog_backend.testing.backends import driver_from_config, write_backend_ini
from tests.interop.conftest import Target
from tests.realsheep import require

MiB = 1 << 20
GiB = 1 << 30


def qemu(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([require(tool), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{tool} {' '.join(args)}: {proc.stdout} {proc.stderr}"
    return proc


def qemu_io(uri: str, *commands: str) -> str:
    args: list[str] = ["-f", "raw"]
    for command in commands:
        args += ["-c", command]
    out = qemu("qemu-io", *args, uri).stdout
    assert "Pattern verification failed" not in out and "failed" not in out.lower(), out
    return out


def legacy_uri(info: dict[str, object], tag: str = "") -> str:
    """QEMU's legacy form, as libvirt built it from the connection info."""
    data = info["data"]
    assert isinstance(data, dict)
    uri = f"sheepdog:{data['hosts'][0]}:{data['ports'][0]}:{data['name']}"
    return f"{uri}:{tag}" if tag else uri


@pytest.fixture(scope="module")
def driver(target: Target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VolumeDriver]:
    require("qemu-img")
    require("qemu-io")
    ini = write_backend_ini(tmp_path_factory.mktemp("qemu") / "site.ini", [target.gateway],
                            backend="site")
    with driver_from_config(ini) as drv:
        yield drv


@pytest.fixture
def client(target: Target) -> Iterator[SheepdogClient]:
    with target.client() as c:
        yield c


def new_volume(driver: VolumeDriver, size: int = 1) -> Volume:
    vol = Volume(id=uuid.uuid4().hex[:12], size=size)
    driver.create_volume(vol)
    return vol


def test_qemu_reads_a_driver_clone_as_the_snapshot(target: Target, driver: VolumeDriver,
                                                   client: SheepdogClient) -> None:
    vol = new_volume(driver)
    name = driver.vdi_name(vol)
    client.write(name, 0, b"\xaa" * MiB)
    client.write(name, 5 * MiB, b"\xbb" * MiB)
    snap = Snapshot(id=uuid.uuid4().hex[:8], volume=vol)
    driver.create_snapshot(snap)
    client.write(name, 0, b"\x11" * MiB)  # the source moves on after the snapshot
    clone = Volume(id=uuid.uuid4().hex[:12], size=2)
    driver.create_volume_from_snapshot(clone, snap)
    info = driver.initialize_connection(clone, Connector(host="compute-1"))
    uri = legacy_uri(info)
    qemu_io(uri, "read -P 0xaa 0 1M", "read -P 0xbb 5M 1M", "read -P 0 1M 4M",
            "read -P 0 1G 1M")
    # and the check can fail: the source's new bytes are not the clone's
    out = subprocess.run([require("qemu-io"), "-f", "raw", "-c", "read -P 0x11 0 1M", uri],
                         capture_output=True, text=True, timeout=120).stdout
    assert "Pattern verification failed" in out


def test_what_qemu_writes_our_client_reads(target: Target, driver: VolumeDriver,
                                           client: SheepdogClient) -> None:
    vol = new_volume(driver)
    name = driver.vdi_name(vol)
    uri = qemu_uri(name, target.host, target.port)
    qemu_io(uri, "write -P 0x3c 2M 512k", "write -P 0x5d 4092k 8k", "write -z 3M 4k")
    assert client.read(name, 2 * MiB, 512 * 1024) == b"\x3c" * (512 * 1024)
    assert client.read(name, 4092 * 1024, 8192) == b"\x5d" * 8192  # straddles objects
    assert client.read(name, 0, 2 * MiB) == bytes(2 * MiB)
    # the streaming export path (what copy_volume_to_image uses), first 8 MiB
    out = io.BytesIO()
    assert client.read_to_file(name, out, length=8 * MiB) == 8 * MiB
    data = out.getvalue()
    assert data[2 * MiB:2 * MiB + 512 * 1024] == b"\x3c" * (512 * 1024)
    assert data[4092 * 1024:4100 * 1024] == b"\x5d" * 8192
    assert data.count(0) == 8 * MiB - 512 * 1024 - 8192


@pytest.mark.parametrize("form", ["legacy", "uri", "blockdev"])
def test_qemu_img_info_accepts_every_connection_form(target: Target, driver: VolumeDriver,
                                                     form: str) -> None:
    vol = new_volume(driver, size=2)
    info = driver.initialize_connection(vol, Connector(host="compute-1"))
    data = info["data"]
    name, host, port = data["name"], data["hosts"][0], int(data["ports"][0])
    assert (host, port) == (target.host, target.port)
    if form == "legacy":
        spec = legacy_uri(info)
    elif form == "uri":
        spec = qemu_uri(name, host, port)
    else:
        spec = "json:" + json.dumps({"driver": "raw",
                                     "file": json.loads(blockdev_json(name, host, port))})
    report = json.loads(qemu("qemu-img", "info", "--output=json", spec).stdout)
    assert report["virtual-size"] == 2 * GiB
    assert report["format"] == "raw"


def test_qemu_made_snapshot_seen_by_our_client(target: Target, driver: VolumeDriver,
                                               client: SheepdogClient) -> None:
    vol = new_volume(driver)
    name = driver.vdi_name(vol)
    uri = qemu_uri(name, target.host, target.port)
    qemu_io(uri, "write -P 0x77 1M 1M")
    qemu("qemu-img", "snapshot", "-c", "qsnap", uri)
    qemu_io(uri, "write -P 0x88 1M 1M")
    snaps = client.list_snapshots(name)
    assert [s.tag for s in snaps] == ["qsnap"]
    assert client.read(name, MiB, MiB, tag="qsnap") == b"\x77" * MiB
    assert client.read(name, MiB, MiB) == b"\x88" * MiB
    listed = qemu("qemu-img", "snapshot", "-l", uri).stdout
    assert "qsnap" in listed
    # QEMU reads the snapshot through the tag forms too
    qemu_io(qemu_uri(name, target.host, target.port, "qsnap"), "read -P 0x77 1M 1M")
    qemu_io(legacy_uri(driver.initialize_connection(vol, Connector(host="h")), "qsnap"),
            "read -P 0x77 1M 1M")
