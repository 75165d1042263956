"""Volumes beyond 4 TiB: the object size is chosen per volume, reported by
``volume show``, kept by snapshots; extending past a volume's cap fails with the
reason and the remedy.  Through the CLI on an embedded server, and with the
driver against a real Sheepdog 1.0 node."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import pytest

from sheepdog_backend.client import SheepdogClient
from sheepdog_backend.driver.base import Snapshot, Volume
from sheepdog_backend.driver.loader import load_backend
from sheepdog_backend.testing.fixtures import EmbeddedServer

ROOT = pathlib.Path(__file__).resolve().parents[2]
GiB, TiB = 1 << 30, 1 << 40


def cli(ini: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SHEEPDOG_BACKEND_CONFIG"}
    return subprocess.run([sys.executable, "-m", "sheepdog_backend", *argv, "--config-file",
                           ini], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=env, check=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    with EmbeddedServer(tmp_path_factory.mktemp("size") / "data") as srv:
        yield srv


def conf(tmp: pathlib.Path, gateways: list[str], extra: str = "") -> str:
    path = tmp / "size.conf"
    path.write_text("[DEFAULT]\nenabled_backends = main\n\n[main]\nsheepdog_gateways = "
                    f"{', '.join(gateways)}\n" + extra)
    return str(path)


def test_five_tib_volume_gets_larger_objects(server: EmbeddedServer,
                                            tmp_path: pathlib.Path) -> None:
    ini = conf(tmp_path, server.gateways)
    made = cli(ini, "volume", "create", "big", "--size", "5120")
    assert made.returncode == 0, made.stderr
    shown = json.loads(cli(ini, "volume", "show", "big", "-f", "json").stdout)
    assert shown["object_size"] == 8 << 20 and shown["max_size"] == 8 * TiB
    table = cli(ini, "volume", "show", "big").stdout
    assert "8 MiB" in table and "8 TiB" in table and "5 TiB" in table

    with SheepdogClient(server.gateways) as client:  # bytes beyond 4 TiB really land
        client.write("big", 4 * TiB + 12345, b"past four tebibytes")
    assert cli(ini, "snapshot", "create", "big", "s1").returncode == 0
    with SheepdogClient(server.gateways) as client:
        client.write("big", 4 * TiB + 12345, b"PAST")
        assert client.read("big", 4 * TiB + 12345, 19, tag="s1") == b"past four tebibytes"
        assert client.read("big", 4 * TiB + 12345, 19) == b"PAST four tebibytes"
        snap = client.find_vdi("big", "s1")
        assert snap is not None and snap.block_size_shift == 23

    too_far = cli(ini, "volume", "extend", "big", "--size", str(9 * 1024))
    assert too_far.returncode == 5
    assert "8 MiB" in too_far.stderr and "at most 8 TiB" in too_far.stderr
    assert "create a new volume" in too_far.stderr, too_far.stderr
    assert cli(ini, "volume", "extend", "big", "--size", str(8 * 1024)).returncode == 0
    assert cli(ini, "snapshot", "delete", "big", "s1").returncode == 0
    assert cli(ini, "volume", "delete", "big").returncode == 0


def test_ceiling_gives_room_to_grow_and_is_a_limit(server: EmbeddedServer,
                                                  tmp_path: pathlib.Path) -> None:
    ini = conf(tmp_path, server.gateways, "sheepdog_max_volume_size = 16384\n")
    assert cli(ini, "volume", "create", "roomy", "--size", "1").returncode == 0
    shown = json.loads(cli(ini, "volume", "show", "roomy", "-f", "json").stdout)
    assert shown["object_size"] == 16 << 20
    assert cli(ini, "volume", "extend", "roomy", "--size", "10000").returncode == 0
    past = cli(ini, "volume", "extend", "roomy", "--size", "20000")
    assert past.returncode == 5 and "sheepdog_max_volume_size" in past.stderr
    huge = cli(ini, "volume", "create", "huge", "--size", "20000")
    assert huge.returncode == 5 and "sheepdog_max_volume_size" in huge.stderr
    with SheepdogClient(server.gateways) as client:
        assert client.find_vdi("huge") is None
    assert cli(ini, "volume", "delete", "roomy").returncode == 0


def test_fixed_object_size_refuses_with_the_remedy(server: EmbeddedServer,
                                                  tmp_path: pathlib.Path) -> None:
    ini = conf(tmp_path, server.gateways, "sheepdog_block_size_shift = 22\n")
    done = cli(ini, "volume", "create", "fixed", "--size", "5120")
    assert done.returncode == 5 and "sheepdog_block_size_shift" in done.stderr, done.stderr
    with SheepdogClient(server.gateways) as client:
        assert client.find_vdi("fixed") is None


def test_real_sheep_five_tib_volume_with_snapshot(real_sheep: object,
                                                 tmp_path: pathlib.Path) -> None:
    cluster = real_sheep
    gateways = cluster.gateways  # type: ignore[attr-defined]
    driver = load_backend(conf(tmp_path, gateways))
    vol = Volume(id="big", size=5120, name="big")
    try:
        driver.do_setup()
        driver.check_for_setup_error()
        driver.create_volume(vol)
        access = driver.data_access()
        access.write(vol, 4 * TiB + 4096, b"beyond 4 TiB on real sheep")
        driver.create_snapshot(Snapshot(id="s1", volume=vol, name="s1"))
        access.write(vol, 4 * TiB + 4096, b"BEYOND")
        with SheepdogClient(gateways) as client:
            assert client.read("big", 4 * TiB + 4096, 26, tag="s1") == \
                b"beyond 4 TiB on real sheep"
            info = client.find_vdi("big")
            assert info is not None and info.block_size_shift == 23
        assert access.read(vol, 4 * TiB + 4096, 26) == b"BEYOND 4 TiB on real sheep"
        listed = cluster.run_dog("vdi", "list", "-r").stdout  # type: ignore[attr-defined]
        assert "big" in listed and "s1" in listed
        driver.delete_snapshot(Snapshot(id="s1", volume=vol, name="s1"))
        driver.delete_volume(vol)
    finally:
        driver.close()
