"""Two tgt LUs of one VDI, each through its own gateway (as two hosts would
export it during a live migration), on a real Sheepdog 1.0 node, with QEMU
7.2 writing through each: a LU whose cached inode is stale must not replace
the objects the other LU allocated since it opened (issue 25's experiment).

LU B opens first; LU A then writes the first 64 KiB of 8 objects that were
unallocated when B opened; B writes the last 64 KiB of the same objects.
B's inode still says "unallocated", so tgt sends CREATE_AND_WRITE_OBJ, which
on a sheep replaces the whole object: without coherent creates all 8 of A's
acknowledged writes are lost.  The same for copy-on-write objects after a
snapshot, once B reloaded its inode (a write elsewhere) before A's copies.
Every acknowledged write is read back from the cluster."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sheepdog_backend.client import SheepdogClient
from sheepdog_backend.export.tgt import Tgtadm, TgtTargets, backing_path
from sheepdog_backend.gateway import Gateway
from tests.iscsi_tools import qemu_io_path
from tests.realsheep import SheepCluster, free_port, require
from tests.tgtd import TgtDaemon

MiB = 1 << 20
OBJ = 4 * MiB
BLOCK = 64 * 1024
OBJECTS = 8
IQN = "iqn.2010-10.org.openstack:coherence-"
_MISMATCH = re.compile(r"Pattern verification failed at offset (\d+)")


@pytest.fixture(scope="module")
def sheep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SheepCluster]:
    require("sheep")
    with SheepCluster(tmp_path_factory.mktemp("coherence") / "sheep", nodes=1) as cluster:
        yield cluster


@pytest.fixture
def tgtd(tmp_path: Path) -> Iterator[TgtDaemon]:
    with TgtDaemon(tmp_path / "tgtd") as daemon:
        yield daemon


def _lu(targets: TgtTargets, daemon: TgtDaemon, name: str, gateway: Gateway,
        vdi: str) -> str:
    """A target of ``vdi`` through ``gateway``, open to every initiator; its URL."""
    iqn = IQN + name
    targets.create(iqn, backing_path("127.0.0.1", gateway.port or 0, vdi))
    return f"iscsi://{daemon.portal}/{iqn}/1"


def _write(url: str, *commands: str) -> None:
    argv = [qemu_io_path(), "-f", "raw"]
    for command in commands:
        argv += ["-c", command]
    proc = subprocess.run([*argv, url], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0 and "failed" not in proc.stdout, proc.stdout + proc.stderr


def _blocks(side: str) -> list[tuple[int, int]]:
    """(offset, pattern) of each side's block in each object: A the first
    64 KiB, B the last."""
    at = 0 if side == "A" else OBJ - BLOCK
    return [(i * OBJ + at, (0xA0 if side == "A" else 0xB0) + i) for i in range(OBJECTS)]


def _lost(client: SheepdogClient, vdi: str, blocks: list[tuple[int, int]]) -> list[int]:
    return [off for off, pattern in blocks
            if client.read(vdi, off, BLOCK) != bytes([pattern]) * BLOCK]


def _two_lus(sheep: SheepCluster, tgtd: TgtDaemon, vdi: str
             ) -> Iterator[tuple[str, str, Gateway]]:
    targets = TgtTargets(Tgtadm(control_port=tgtd.control_port))
    with Gateway(sheep.gateways, port=free_port()) as gw_a, \
            Gateway(sheep.gateways, port=free_port()) as gw_b:
        url_b = _lu(targets, tgtd, "b", gw_b, vdi)  # B opens first: its inode is older
        url_a = _lu(targets, tgtd, "a", gw_a, vdi)
        try:
            yield url_a, url_b, gw_b
        finally:
            for name in ("a", "b"):
                targets.remove(IQN + name)


def test_a_stale_lu_does_not_replace_objects_the_other_lu_allocated(
        sheep: SheepCluster, tgtd: TgtDaemon) -> None:
    with SheepdogClient(sheep.gateways) as client:
        client.create_vdi("co-data", 64 * MiB)
        for url_a, url_b, gw_b in _two_lus(sheep, tgtd, "co-data"):
            _write(url_a, *(f"write -P {p} {off} 64k" for off, p in _blocks("A")))
            _write(url_b, *(f"write -P {p} {off} 64k" for off, p in _blocks("B")))
            turned = gw_b.stats()["creates_as_writes"]
        assert _lost(client, "co-data", _blocks("A")) == []
        assert _lost(client, "co-data", _blocks("B")) == []
        assert turned == OBJECTS  # B's creates were written into A's objects


def test_a_stale_lu_does_not_replace_copy_on_write_objects_after_a_snapshot(
        sheep: SheepCluster, tgtd: TgtDaemon) -> None:
    with SheepdogClient(sheep.gateways) as client:
        client.create_vdi("co-cow", 64 * MiB)
        client.write("co-cow", 0, b"\x11" * (OBJECTS * OBJ))  # every object allocated
        for url_a, url_b, gw_b in _two_lus(sheep, tgtd, "co-cow"):
            client.snapshot_vdi("co-cow", "before")
            last = 12 * OBJ  # B reloads its inode (its write is refused) before A's copies
            _write(url_b, f"write -P 7 {last} 4k")
            _write(url_a, *(f"write -P {p} {off} 64k" for off, p in _blocks("A")))
            _write(url_b, *(f"write -P {p} {off} 64k" for off, p in _blocks("B")))
            turned = gw_b.stats()["creates_as_writes"]
        assert _lost(client, "co-cow", _blocks("A")) == []
        assert _lost(client, "co-cow", _blocks("B")) == []
        assert turned == OBJECTS
        middle = client.read("co-cow", 2 * MiB, BLOCK)  # copied from the snapshot
        assert middle == b"\x11" * BLOCK


def _read_back(url: str, blocks: list[tuple[int, int]]) -> list[int]:
    """The offsets whose 64 KiB do not read back as their pattern through the LU."""
    argv = [qemu_io_path(), "-f", "raw", "-r"]
    for off, pattern in blocks:
        argv += ["-c", f"read -P {pattern} {off} 64k"]
    proc = subprocess.run([*argv, url], capture_output=True, text=True, timeout=120,
                          check=False)
    bad = [int(m.group(1)) for m in _MISMATCH.finditer(proc.stdout + proc.stderr)]
    assert bad or (proc.returncode == 0 and proc.stdout.count("read ") == len(blocks)), \
        proc.stdout + proc.stderr
    return bad


@pytest.mark.parametrize("kind", ["new-objects", "clone", "snapshot"])
def test_a_lu_of_a_shared_volume_reads_what_the_other_host_wrote_since_it_opened(
        sheep: SheepCluster, tgtd: TgtDaemon, kind: str) -> None:
    """B, the destination of a live migration, opened before A's last writes:
    it must read them, not zeros (objects A allocated since), not the parent's
    bytes (objects A copied from a snapshot since), not the old objects (a
    snapshot since)."""
    name = f"rd-{kind}"
    with SheepdogClient(sheep.gateways) as client:
        if kind == "clone":
            client.create_vdi("rd-base", 64 * MiB)
            client.write("rd-base", 0, b"\x33" * (OBJECTS * OBJ))
            client.snapshot_vdi("rd-base", "image")
            client.clone_vdi("rd-base", "image", name)
        else:
            client.create_vdi(name, 64 * MiB)
        if kind == "snapshot":
            client.write(name, 0, b"\x44" * (OBJECTS * OBJ))
        client.set_export_hosts(name, 2)  # as the export layer does for a second host
        for url_a, url_b, gw_b in _two_lus(sheep, tgtd, name):
            assert _read_back(url_b, [(0, 0x44 if kind == "snapshot" else
                                       0x33 if kind == "clone" else 0)]) == []
            if kind == "snapshot":
                client.snapshot_vdi(name, "since")
            _write(url_a, *(f"write -P {p} {off} 64k" for off, p in _blocks("A")))
            stale = _read_back(url_b, _blocks("A"))
            reloads = gw_b.stats()["lu_reloads"]
        assert stale == [], f"{len(stale)} of {OBJECTS} blocks read stale through B's LU"
        assert _lost(client, name, _blocks("A")) == []
        assert reloads >= 1
