"""Sparse export: read_to_file(sparse=True) and the driver's
copy_volume_to_image leave holes where the volume is unallocated or zero, and
the bytes read back are the volume's, on the embedded server and a real sheep."""

from __future__ import annotations

import io
import os
import pathlib
import subprocess
from collections.abc import Iterator

import pytest

from sheepdog_backend.client import RetryPolicy, SheepdogClient
from sheepdog_backend.client.io import SPARSE_BLOCK, _sparse_emitter, is_zero
from sheepdog_backend.driver.base import BackendConfiguration, GiB, Volume
from sheepdog_backend.driver.sheepdog import SheepdogDriver
from sheepdog_backend.exception import InvalidInput
from sheepdog_backend.protocol.constants import Opcode
from sheepdog_backend.protocol.header import Request
from sheepdog_backend.testing.fixtures import EmbeddedServer
from tests.realsheep import SheepCluster
from tests.unit.client.loopback import FaultProxy

MiB = 1 << 20
OBJ = 4 * MiB


def data_extents(path: pathlib.Path) -> list[tuple[int, int]]:
    """(start, end) of the file's data regions, by SEEK_DATA/SEEK_HOLE."""
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, end))
            pos = end
    finally:
        os.close(fd)
    return out


@pytest.fixture
def holes_supported(tmp_path: pathlib.Path) -> None:
    probe = tmp_path / "probe"
    with open(probe, "wb") as f:
        f.seek(8 * MiB)
        f.write(b"x")
    if data_extents(probe) == [(0, 8 * MiB + 1)] or os.stat(probe).st_blocks * 512 >= 8 * MiB:
        pytest.skip(f"the filesystem of {tmp_path} does not keep holes")
    probe.unlink()


@pytest.fixture
def client(embedded_server: EmbeddedServer) -> Iterator[SheepdogClient]:
    with SheepdogClient(embedded_server.gateways, retry=RetryPolicy(attempts=2)) as c:
        yield c


def pattern(n: int, seed: int) -> bytes:
    return bytes((i * 7 + seed) % 251 + 1 for i in range(256)) * (n // 256)


def layout_volume(client: SheepdogClient, name: str) -> dict[int, bytes]:
    """A 32 MiB VDI: object 0 full, object 2 holding data only in its first
    and last 64 KiB (zeros between, written explicitly), object 5 written
    with all zeros (allocated: the all-zero write is not thin at offset 1),
    everything else unallocated."""
    client.create_vdi(name, 32 * MiB)
    marks = {0: pattern(OBJ, 1), 2 * OBJ: pattern(64 * 1024, 2) + bytes(OBJ - 128 * 1024)
             + pattern(64 * 1024, 3)}
    for off, data in marks.items():
        client.write(name, off, data)
    client.write(name, 5 * OBJ, b"\x01")
    client.write(name, 5 * OBJ, b"\x00")  # allocated, reads zero
    return marks


def test_sparse_read_to_file_leaves_holes_and_reads_back(
        client: SheepdogClient, tmp_path: pathlib.Path, holes_supported: None) -> None:
    layout_volume(client, "sp")
    out = tmp_path / "out.raw"
    with open(out, "w+b") as f:
        assert client.read_to_file("sp", f, sparse=True) == 32 * MiB
        assert f.tell() == 32 * MiB
    assert out.read_bytes() == client.read("sp", 0, 32 * MiB)
    assert out.stat().st_size == 32 * MiB
    extents = data_extents(out)
    allocated = sum(e - s for s, e in extents)
    # object 0 (4 MiB) and the two 64 KiB ends of object 2; the filesystem may
    # round extents out to its own block size
    assert 4 * MiB + 128 * 1024 <= allocated <= 4 * MiB + 128 * 1024 + 64 * 1024 * len(extents)
    assert not any(s < 5 * OBJ + OBJ and e > 5 * OBJ for s, e in extents), \
        "an allocated all-zero object was written"


def test_sparse_replaces_the_file_from_its_position(
        client: SheepdogClient, tmp_path: pathlib.Path) -> None:
    layout_volume(client, "sp2")
    out = tmp_path / "out.raw"
    out.write_bytes(b"H" * 100 + b"\xff" * (40 * MiB))  # longer, non-zero tail
    with open(out, "r+b") as f:
        f.seek(100)
        assert client.read_to_file("sp2", f, sparse=True, length=9 * MiB) == 9 * MiB
    got = out.read_bytes()
    assert len(got) == 100 + 9 * MiB
    assert got[:100] == b"H" * 100
    assert got[100:] == client.read("sp2", 0, 9 * MiB), "old bytes showed through a hole"


def test_sparse_needs_a_seekable_target(client: SheepdogClient) -> None:
    client.create_vdi("sp3", 8 * MiB)

    class Pipe(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, b: object) -> int:
            raise AssertionError("nothing may be written")

    with pytest.raises(InvalidInput, match="seekable"):
        client.read_to_file("sp3", Pipe(), sparse=True)  # type: ignore[arg-type]


def test_plain_read_to_file_still_writes_zeros(client: SheepdogClient) -> None:
    layout_volume(client, "sp4")
    sink = io.BytesIO()
    assert client.read_to_file("sp4", sink) == 32 * MiB
    assert sink.getvalue() == client.read("sp4", 0, 32 * MiB)


@pytest.mark.parametrize("blocks", ["D", "Z", "DZ", "ZD", "DZD", "ZDZZD", "DDZZ"])
def test_sparse_emitter_runs(blocks: str) -> None:
    """Data blocks reach the sink (one call per run), zero blocks are skipped,
    in order; a tail shorter than a block counts like a block."""
    parts = [pattern(SPARSE_BLOCK, i + 1) if c == "D" else bytes(SPARSE_BLOCK)
             for i, c in enumerate(blocks)]
    data = b"".join(parts)[:-100]  # a short last block
    out = bytearray()
    calls = []

    def sink(b: bytes | memoryview) -> None:
        calls.append("w")
        out.extend(b)

    def skip(n: int) -> None:
        calls.append("s")
        out.extend(bytes(n))

    _sparse_emitter(sink, skip)(data)
    assert bytes(out) == data
    runs = [c for i, c in enumerate(blocks) if i == 0 or blocks[i - 1] != c]
    assert calls == ["w" if c == "D" else "s" for c in runs]


def test_is_zero() -> None:
    assert is_zero(b"") and is_zero(bytes(9 * MiB))
    assert not is_zero(bytes(9 * MiB - 1) + b"\x01")
    assert not is_zero(memoryview(b"\x00\x02"))


@pytest.fixture
def driver(embedded_server: EmbeddedServer) -> Iterator[SheepdogDriver]:
    drv = SheepdogDriver(BackendConfiguration(
        {"sheepdog_gateways": embedded_server.gateways}), backend_name="sparse")
    drv.do_setup()
    yield drv
    drv.close()


def test_driver_export_is_sparse(driver: SheepdogDriver, tmp_path: pathlib.Path,
                                 holes_supported: None) -> None:
    v = Volume(id="x", size=1, name="sparse-vol")
    driver.create_volume(v)
    driver.data_access().write(v, 300 * MiB, pattern(OBJ, 5))
    out = tmp_path / "img.raw"
    driver.copy_volume_to_image(v, str(out))
    assert out.stat().st_size == GiB
    assert data_extents(out) == [(300 * MiB, 304 * MiB)]
    with open(out, "rb") as f:
        f.seek(300 * MiB)
        assert f.read(OBJ) == pattern(OBJ, 5)


def test_real_sheep_export_is_sparse_and_matches_dog(
        real_sheep: SheepCluster, tmp_path: pathlib.Path, holes_supported: None) -> None:
    """dog vdi write puts data in objects 1 and 3 of a real node; our export
    equals dog vdi read byte for byte and holds only those objects."""
    real_sheep.run_dog("vdi", "create", "rs", "1G")
    data = pattern(OBJ, 9)
    real_sheep.run_dog("vdi", "write", "rs", str(OBJ), str(OBJ), input=data)
    real_sheep.run_dog("vdi", "write", "rs", str(3 * OBJ), str(OBJ), input=data)
    drv = SheepdogDriver(BackendConfiguration({"sheepdog_gateways": real_sheep.gateways}),
                         backend_name="real")
    try:
        out = tmp_path / "rs.raw"
        drv.copy_volume_to_image(Volume(id="rs", size=1, name="rs"), str(out))
    finally:
        drv.close()
    assert data_extents(out) == [(OBJ, 2 * OBJ), (3 * OBJ, 4 * OBJ)]
    dog_out = tmp_path / "dog.raw"
    with open(dog_out, "wb") as f:
        subprocess.run([real_sheep.dog, "vdi", "read", "rs", "0", str(8 * OBJ),
                        "-a", real_sheep.nodes[0].host, "-p", str(real_sheep.nodes[0].port)],
                       stdout=f, check=True, timeout=60)
    with open(out, "rb") as f:
        assert f.read(8 * OBJ) == dog_out.read_bytes()
    assert out.stat().st_size == GiB


def test_sparse_export_retried_after_a_cut_is_whole(tmp_path: pathlib.Path) -> None:
    """The connection is cut before the second data read: the retry rewinds,
    truncates and rewrites, and the file is the volume, no more, no less."""
    seen = {"data_reads": 0}

    def rule(req: Request, n: int) -> str:
        oid = getattr(req.body, "oid", 0)
        if req.opcode == Opcode.READ_OBJ and oid >> 56 == 0:
            seen["data_reads"] += 1
            if seen["data_reads"] == 2:
                return "cut_before"
        return "pass"

    with EmbeddedServer(tmp_path / "srv") as server, FaultProxy(server.addresses[0]) as proxy, \
            SheepdogClient([proxy.address], retry=RetryPolicy(attempts=3)) as c:
        layout_volume(c, "cut")
        want = c.read("cut", 0, 32 * MiB)
        proxy.rule = rule
        out = tmp_path / "out.raw"
        with open(out, "w+b") as f:
            f.write(b"P" * 10)
            assert c.read_to_file("cut", f, sparse=True) == 32 * MiB
        assert seen["data_reads"] >= 4, "the cut did not happen mid-export"
        got = out.read_bytes()
        assert got[:10] == b"P" * 10 and got[10:] == want
