"""Hyper volumes through the driver and a real CLI subprocess, only where the
operator asks (``sheepdog_hyper_volumes = true``), and sizes in the user's units."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator

import pytest

from sheepdog_backend.client import SheepdogClient
from sheepdog_backend.driver.base import Snapshot, Volume
from sheepdog_backend.driver.loader import load_backend
from sheepdog_backend.exception import HyperVolumeUnsupported, InvalidInput
from sheepdog_backend.testing.fixtures import EmbeddedServer
from tests.functional.test_cli_sizing import cli  # the same CLI subprocess
from tests.functional.test_cli_sizing import conf as sizing_conf  # and ini file

GiB, TiB, PiB = 1 << 30, 1 << 40, 1 << 50


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    with EmbeddedServer(tmp_path_factory.mktemp("hyp") / "data") as srv:
        yield srv


def conf(tmp: pathlib.Path, server: EmbeddedServer, extra: str = "") -> str:
    return sizing_conf(tmp, server.gateways[:1], "sheepdog_retry_attempts = 2\n" + extra)


def test_driver_makes_hyper_volumes_only_when_asked(server: EmbeddedServer,
                                                    tmp_path: pathlib.Path) -> None:
    off = load_backend(conf(tmp_path, server))
    off.do_setup()
    with pytest.raises(InvalidInput, match="sheepdog_hyper_volumes = true"):
        off.create_volume(Volume(id="x", name="x", size=3 << 20))  # 3 PiB
    off.close()
    driver = load_backend(conf(tmp_path, server, "sheepdog_hyper_volumes = true\n"))
    driver.do_setup()
    try:
        small = Volume(id="small", name="small", size=5 << 10)  # 5 TiB: flat, 8 MiB objects
        driver.create_volume(small)
        assert driver.describe_volume(small)["store_policy"] == 0
        huge = Volume(id="huge", name="huge", size=3 << 20)
        driver.create_volume(huge)
        shown = driver.describe_volume(huge)
        assert (shown["store_policy"], shown["block_size_shift"]) == (1, 22)
        access = driver.data_access()
        access.write(huge, 3 * PiB - 4096, b"the last page" + bytes(4083))
        assert access.read(huge, 3 * PiB - 4096, 13) == b"the last page"
        with pytest.raises(HyperVolumeUnsupported, match="cannot snapshot"):
            driver.create_snapshot(Snapshot(id="s", volume=huge, name="s"))
        driver.extend_volume(huge, 4 << 20)  # hyper volumes grow up to 16 PiB
        assert driver.describe_volume(huge)["size_bytes"] == 4 * PiB
        driver.delete_volume(huge)
        driver.delete_volume(small)
        with SheepdogClient(server.gateways) as client:
            assert client.find_vdi("huge") is None and client.find_vdi("small") is None
    finally:
        driver.close()


def test_cli_reports_the_index_refuses_snapshots_and_speaks_gib(
        server: EmbeddedServer, tmp_path: pathlib.Path) -> None:
    ini = conf(tmp_path, server, "sheepdog_hyper_volumes = true\n")
    made = cli(ini, "volume", "create", "clihyper", "--size", str(3 << 20))
    assert made.returncode == 0, made.stderr
    shown = json.loads(cli(ini, "volume", "show", "clihyper", "-f", "json").stdout)
    assert shown["index"] == "hyper (B-tree)" and shown["max_size"] == 16 * PiB
    assert "hyper (B-tree)" in cli(ini, "volume", "show", "clihyper").stdout
    snap = cli(ini, "snapshot", "create", "clihyper", "s1")
    assert snap.returncode == 5, snap.stderr
    assert "cannot snapshot it" in snap.stderr + snap.stdout
    attach = cli(ini, "connect", "clihyper", "--format", "qemu")
    assert attach.returncode == 5 and "cannot be attached" in attach.stderr + attach.stdout
    assert cli(ini, "volume", "create", "twogib", "--size", "2").returncode == 0
    shrink = cli(ini, "volume", "extend", "twogib", "--size", "1")
    assert shrink.returncode == 5
    out = shrink.stderr + shrink.stdout
    assert "is 2 GiB; it can only grow, not shrink to 1 GiB" in out
    assert "2147483648" not in out
    assert cli(ini, "volume", "delete", "clihyper").returncode == 0
    assert cli(ini, "volume", "delete", "twogib").returncode == 0
