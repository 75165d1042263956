"""SheepdogDriver, loaded through its stevedore entry point from an ini file,
against the embedded server: every method and every documented error."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from sheepdog_backend.driver.base import Connector, Snapshot, Volume
from sheepdog_backend.driver.loader import load_backend
from sheepdog_backend.driver.sheepdog import SheepdogDriver
from sheepdog_backend.exception import (
    InvalidBackingImage,
    InvalidInput,
    NoGatewayAvailable,
    SnapshotNotFound,
    VdiExists,
    VolumeIsBusy,
    VolumeNotFound,
    WaitForFormat,
)
from sheepdog_backend.testing.fixtures import EmbeddedServer

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
CONNECTOR = Connector(host="test-host", ip="127.0.0.1")


def write_ini(path: pathlib.Path, gateways: str, extra: str = "") -> str:
    path.write_text(f"[DEFAULT]\nenabled_backends = sd\n\n[sd]\nvolume_driver = sheepdog\n"
                    f"sheepdog_gateways = {gateways}\nsheepdog_retry_attempts = 2\n"
                    f"sheepdog_retry_deadline = 5\nsheepdog_connect_timeout = 2\n{extra}")
    return str(path)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    srv = EmbeddedServer(tmp_path_factory.mktemp("sheep") / "data", ports=(0, 0))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def driver(server: EmbeddedServer,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[SheepdogDriver]:
    ini = write_ini(tmp_path_factory.mktemp("ini") / "sd.conf", ",".join(server.gateways))
    drv = load_backend(ini)
    assert isinstance(drv, SheepdogDriver), "the entry point must give the Sheepdog driver"
    drv.do_setup()
    drv.check_for_setup_error()
    yield drv
    drv.close()


def vol(size: int = 1, label: str = "v") -> Volume:
    name = f"{label}-{uuid.uuid4().hex[:8]}"
    return Volume(id=name, size=size, name=name)


def snap_of(volume: Volume, tag: str = "s1") -> Snapshot:
    return Snapshot(id=tag, volume=volume, name=tag)


def fill(length: int, seed: int) -> bytes:
    return bytes((seed + i * 7) % 251 + 1 for i in range(length))


OFFSETS = (0, 4 * MiB - 1000, 300 * MiB)


def write_marks(drv: SheepdogDriver, volume: Volume, seed: int) -> dict[int, bytes]:
    data = drv.data_access()
    marks = {off: fill(8 * KiB, seed + off % 97) for off in OFFSETS}
    for off, payload in marks.items():
        data.write(volume, off, payload)
    return marks


def assert_marks(drv: SheepdogDriver, volume: Volume, marks: dict[int, bytes]) -> None:
    data = drv.data_access()
    for off, payload in marks.items():
        assert data.read(volume, off, len(payload)) == payload, f"bytes differ at {off}"


def snapshot_tags(drv: SheepdogDriver, volume: Volume) -> list[str]:
    return [s["tag"] for s in drv.list_snapshots(volume)]


# -- setup ---------------------------------------------------------------------


def test_setup_error_when_unreachable(tmp_path: pathlib.Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    drv = load_backend(write_ini(tmp_path / "x.conf", f"127.0.0.1:{port}"))
    try:
        with pytest.raises(NoGatewayAvailable, match=f"127.0.0.1:{port}"):
            drv.check_for_setup_error()
    finally:
        drv.close()


def test_setup_error_when_not_formatted(tmp_path: pathlib.Path) -> None:
    with EmbeddedServer(tmp_path / "raw", format=False) as srv:
        drv = load_backend(write_ini(tmp_path / "x.conf", srv.gateways[0]))
        try:
            with pytest.raises(WaitForFormat, match="not formatted"):
                drv.check_for_setup_error()
        finally:
            drv.close()


# -- volumes -------------------------------------------------------------------


def test_create_delete_idempotent(driver: SheepdogDriver) -> None:
    data = driver.data_access()
    v = vol(2)
    driver.create_volume(v)
    assert data.exists(v) and data.size_bytes(v) == 2 * GiB
    marks = write_marks(driver, v, 1)
    driver.create_volume(v)  # retried create: same size succeeds, data kept
    assert_marks(driver, v, marks)
    with pytest.raises(VdiExists, match="already exists"):
        driver.create_volume(Volume(id=v.id, size=3, name=v.name))
    assert data.size_bytes(v) == 2 * GiB
    driver.delete_volume(v)
    assert not data.exists(v)
    driver.delete_volume(v)  # already gone


def test_unnamed_volume_uses_template(driver: SheepdogDriver) -> None:
    v = Volume(id=uuid.uuid4().hex, size=1)
    driver.create_volume(v)
    try:
        names = [x["name"] for x in driver.list_volumes()]
        assert f"volume-{v.id}" in names
        s = Snapshot(id="abc", volume=v)
        driver.create_snapshot(s)
        assert snapshot_tags(driver, v) == ["snapshot-abc"]
        driver.delete_snapshot(s)
    finally:
        driver.delete_volume(v)


@pytest.mark.parametrize("size", [0, -1, 1.5, True, "1"])
def test_bad_sizes_rejected(driver: SheepdogDriver, size: object) -> None:
    v = Volume(id="bad-size", size=size, name=f"bad-size-{uuid.uuid4().hex[:6]}")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        driver.create_volume(v)
    assert not driver.data_access().exists(Volume(id=v.id, size=1, name=v.name))


def test_bad_names_rejected(driver: SheepdogDriver) -> None:
    for name in ("x" * 256, "a\0b"):
        with pytest.raises(InvalidInput):
            driver.create_volume(Volume(id="n", size=1, name=name))
    with pytest.raises(InvalidInput):
        driver.create_snapshot(Snapshot(id="s", volume=vol(), name="t" * 256))


def test_extend(driver: SheepdogDriver) -> None:
    data = driver.data_access()
    v = vol(1)
    driver.create_volume(v)
    marks = write_marks(driver, v, 2)
    driver.extend_volume(v, 3)
    assert data.size_bytes(v) == 3 * GiB
    assert_marks(driver, v, marks)
    assert data.read(v, 3 * GiB - 4096, 4096) == bytes(4096)
    data.write(v, 3 * GiB - 4096, b"z" * 4096)
    assert data.read(v, 3 * GiB - 4096, 4096) == b"z" * 4096
    driver.extend_volume(v, 3)  # same size: nothing to do
    with pytest.raises(InvalidInput, match="only grow"):
        driver.extend_volume(v, 2)
    assert data.size_bytes(v) == 3 * GiB
    with pytest.raises(VolumeNotFound):
        driver.extend_volume(vol(), 2)
    driver.delete_volume(v)


# -- snapshots, clones, revert -------------------------------------------------------


def test_snapshot_lifecycle_and_busy_delete(driver: SheepdogDriver) -> None:
    data = driver.data_access()
    v = vol()
    driver.create_volume(v)
    marks = write_marks(driver, v, 3)
    s = snap_of(v)
    driver.create_snapshot(s)
    driver.create_snapshot(s)  # retried: already there
    assert data.snapshot_exists(s) and snapshot_tags(driver, v) == ["s1"]
    with pytest.raises(VolumeIsBusy, match="snapshot"):
        driver.delete_volume(v)
    assert data.exists(v)
    assert_marks(driver, v, marks)
    driver.delete_snapshot(s)
    assert not data.snapshot_exists(s)
    driver.delete_snapshot(s)  # already gone
    driver.delete_snapshot(snap_of(vol()))  # volume never existed
    with pytest.raises(VolumeNotFound):
        driver.create_snapshot(snap_of(vol()))
    driver.delete_volume(v)
    assert not data.exists(v)


def test_clone_from_snapshot(driver: SheepdogDriver) -> None:
    data = driver.data_access()
    src = vol(2)
    driver.create_volume(src)
    marks = write_marks(driver, src, 4)
    s = snap_of(src)
    driver.create_snapshot(s)
    write_marks(driver, src, 50)  # after the snapshot: must not reach the clone
    same = vol(2)
    driver.create_volume_from_snapshot(same, s)
    driver.create_volume_from_snapshot(same, s)  # retried: identical clone exists
    assert data.size_bytes(same) == 2 * GiB
    assert_marks(driver, same, marks)
    bigger = vol(5)
    driver.create_volume_from_snapshot(bigger, s)
    assert data.size_bytes(bigger) == 5 * GiB
    assert_marks(driver, bigger, marks)
    assert data.read(bigger, 4 * GiB, 4096) == bytes(4096)
    smaller = vol(1)
    with pytest.raises(InvalidInput, match="smaller than the snapshot"):
        driver.create_volume_from_snapshot(smaller, s)
    assert not data.exists(smaller)
    with pytest.raises(SnapshotNotFound):
        driver.create_volume_from_snapshot(vol(2), snap_of(src, "nope"))
    with pytest.raises(VdiExists):  # the name is taken by a volume of another size
        driver.create_volume_from_snapshot(Volume(id="x", size=3, name=same.name), s)
    for v in (same, bigger):
        driver.delete_volume(v)
    driver.delete_snapshot(s)
    driver.delete_volume(src)


def test_cloned_volume_leaves_no_temporary_snapshot(driver: SheepdogDriver) -> None:
    data = driver.data_access()
    src = vol(1)
    driver.create_volume(src)
    marks = write_marks(driver, src, 5)
    clone = vol(2)
    driver.create_cloned_volume(clone, src)
    assert data.size_bytes(clone) == 2 * GiB
    assert_marks(driver, clone, marks)
    assert snapshot_tags(driver, src) == []
    write_marks(driver, clone, 60)
    assert_marks(driver, src, marks)  # independent
    driver.delete_volume(src)  # not kept busy by the clone
    with pytest.raises(VolumeNotFound):
        driver.create_cloned_volume(vol(), src)
    with pytest.raises(VdiExists):
        driver.create_cloned_volume(clone, clone)
    driver.delete_volume(clone)


def test_cloned_volume_cleans_up_after_failure(driver: SheepdogDriver) -> None:
    src = vol(1)
    driver.create_volume(src)
    huge = Volume(id="huge", size=1 << 22, name=f"huge-{uuid.uuid4().hex[:6]}")  # 4 PiB
    with pytest.raises(Exception):  # noqa: B017 - any refusal; what matters is the cleanup
        driver.create_cloned_volume(huge, src)
    assert snapshot_tags(driver, src) == [], "the temporary snapshot was left behind"
    assert not driver.data_access().exists(huge)
    driver.delete_volume(src)


def test_revert(driver: SheepdogDriver) -> None:
    data = driver.data_access()
    v = vol(1)
    driver.create_volume(v)
    marks = write_marks(driver, v, 6)
    s = snap_of(v)
    driver.create_snapshot(s)
    write_marks(driver, v, 70)
    data.write(v, 600 * MiB, b"late" * 1024)
    driver.extend_volume(v, 2)
    driver.revert_to_snapshot(v, s)
    assert_marks(driver, v, marks)
    assert data.read(v, 600 * MiB, 4096) == bytes(4096)
    assert data.size_bytes(v) == 2 * GiB, "revert keeps the grown size"
    assert data.snapshot_exists(s)
    with pytest.raises(SnapshotNotFound):
        driver.revert_to_snapshot(v, snap_of(v, "nope"))
    with pytest.raises(VolumeNotFound):
        driver.revert_to_snapshot(vol(), s)
    driver.delete_snapshot(s)
    driver.delete_volume(v)


# -- backing references ----------------------------------------------------------------


@pytest.fixture(scope="module")
def base(driver: SheepdogDriver) -> Iterator[tuple[Volume, Snapshot, dict[int, bytes]]]:
    src = Volume(id="base", size=1, name=f"base-{uuid.uuid4().hex[:6]}")
    driver.create_volume(src)
    marks = write_marks(driver, src, 7)
    s = snap_of(src, "gold")
    driver.create_snapshot(s)
    yield src, s, marks
    driver.delete_snapshot(s)
    driver.delete_volume(src)


def _addr(server: EmbeddedServer, i: int = 0) -> tuple[str, int]:
    return server.addresses[i]


@pytest.mark.parametrize("form", ["uri", "uri-second-gateway", "uri-localhost", "uri-no-host",
                                  "uri-snapid", "legacy", "legacy-short"])
def test_backing_accepted(driver: SheepdogDriver, server: EmbeddedServer, form: str,
                          base: tuple[Volume, Snapshot, dict[int, bytes]]) -> None:
    src, s, marks = base
    host, port = _addr(server)
    snap_id = driver.describe_snapshot(s)["snap_id"]
    ref = {
        "uri": f"sheepdog://{host}:{port}/{src.name}#gold",
        "uri-second-gateway": f"sheepdog://{host}:{_addr(server, 1)[1]}/{src.name}#gold",
        "uri-localhost": f"sheepdog://localhost:{port}/{src.name}#gold",
        "uri-no-host": f"sheepdog:///{src.name}#gold",
        "uri-snapid": f"sheepdog://{host}:{port}/{src.name}#{snap_id}",
        "legacy": f"sheepdog:{host}:{port}:{src.name}:gold",
        "legacy-short": f"sheepdog:{src.name}:gold",
    }[form]
    v = vol(2)
    driver.create_volume(v, backing=ref)
    assert driver.data_access().size_bytes(v) == 2 * GiB
    assert_marks(driver, v, marks)
    driver.delete_volume(v)


def test_backing_glance_form_needs_a_snapshot(driver: SheepdogDriver,
                                              server: EmbeddedServer) -> None:
    host, port = _addr(server)
    image = Volume(id="img", size=1, name=f"glance-{uuid.uuid4().hex[:6]}")
    driver.create_volume(image)
    ref = f"sheepdog://{host}:{port}:{image.name}"
    v = vol()
    with pytest.raises(InvalidBackingImage, match="working VDI with no snapshot"):
        driver.create_volume(v, backing=ref)
    assert not driver.data_access().exists(v)
    old = write_marks(driver, image, 8)
    driver.create_snapshot(snap_of(image, "one"))
    new = write_marks(driver, image, 9)
    driver.create_snapshot(snap_of(image, "two"))  # the newest snapshot is the base
    driver.create_volume(v, backing=ref)
    assert_marks(driver, v, new)
    assert old != new
    driver.delete_volume(v)
    for tag in ("one", "two"):
        driver.delete_snapshot(snap_of(image, tag))
    driver.delete_volume(image)


REJECTED = {
    "path": ("{path}", "file path"),
    "file-url": ("file://{path}", "scheme 'file'"),
    "rbd": ("rbd:volumes/{vdi}@gold", "scheme 'rbd'"),
    "http": ("http://{host}:{port}/{vdi}.img", "scheme 'http'"),
    "malformed-port": ("sheepdog://{host}:port/{vdi}#gold", "not a number"),
    "malformed-empty": ("sheepdog://", "no image name"),
    "working-vdi": ("sheepdog://{host}:{port}/{vdi}", "without a snapshot tag"),
    "working-vdi-legacy": ("sheepdog:{host}:{port}:{vdi}", "without a snapshot tag"),
    "working-vdi-snapid": ("sheepdog://{host}:{port}/{vdi}#{working_snapid}",
                           "is a working VDI|no snapshot"),
    "other-host": ("sheepdog://127.0.0.254:{port}/{vdi}#gold", "not a gateway of this"),
    "other-port": ("sheepdog://{host}:{free_port}/{vdi}#gold", "not a gateway of this"),
    "other-legacy": ("sheepdog:127.0.0.254:{port}:{vdi}:gold", "not a gateway of this"),
    "missing-tag": ("sheepdog://{host}:{port}/{vdi}#nope", "no snapshot"),
    "missing-vdi": ("sheepdog://{host}:{port}/absent-{vdi}#gold", "no snapshot"),
    "glance-missing": ("sheepdog://{host}:{port}:absent-{vdi}", "no VDI"),
}


@pytest.mark.parametrize("kind", sorted(REJECTED))
def test_backing_rejected(driver: SheepdogDriver, server: EmbeddedServer, kind: str,
                          base: tuple[Volume, Snapshot, dict[int, bytes]],
                          tmp_path: pathlib.Path) -> None:
    import socket

    src, _s, _m = base
    host, port = _addr(server)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free_port = sock.getsockname()[1]
    working = driver.describe_volume(src)["snap_id"]
    template, why = REJECTED[kind]
    ref = template.format(path=tmp_path / "base.img", vdi=src.name, host=host, port=port,
                          free_port=free_port, working_snapid=working)
    v = vol()
    before = len(driver.list_volumes())
    with pytest.raises(InvalidBackingImage, match=why):
        driver.create_volume(v, backing=ref)
    assert not driver.data_access().exists(v)
    assert len(driver.list_volumes()) == before, "nothing may be created"


# -- connection, stats --------------------------------------------------------------------


def test_connection_info(driver: SheepdogDriver, server: EmbeddedServer) -> None:
    v = vol()
    driver.create_volume(v)
    info = driver.initialize_connection(v, CONNECTOR)
    assert info["driver_volume_type"] == "sheepdog"
    data = info["data"]
    assert data["name"] == v.name
    assert sorted(zip(data["hosts"], data["ports"], strict=True)) == sorted(
        (h, str(p)) for h, p in server.addresses)
    assert all(isinstance(p, str) for p in data["ports"])
    assert data["access_mode"] == "rw" and data["discard"] is True
    driver.terminate_connection(v, CONNECTOR)
    driver.terminate_connection(v, None)
    assert driver.data_access().exists(v)
    with pytest.raises(VolumeNotFound):
        driver.initialize_connection(vol(), CONNECTOR)
    driver.delete_volume(v)


def test_one_gateway_down(tmp_path: pathlib.Path) -> None:
    """The healthy gateway comes first in connection info, and stats still answer
    (capacity 'unknown' while a listed node cannot be reached)."""
    with EmbeddedServer(tmp_path / "d", ports=(0, 0)) as srv:
        drv = load_backend(write_ini(tmp_path / "x.conf", ",".join(srv.gateways)))
        try:
            v = vol()
            drv.create_volume(v)
            srv.stop_listener(0)
            for _ in range(3):  # let the client notice the dead gateway
                drv.data_access().exists(v)
            info = drv.initialize_connection(v, CONNECTOR)
            assert info["data"]["ports"][0] == str(srv.addresses[1][1])
            stats = drv.get_volume_stats(refresh=True)
            assert stats["total_volumes"] == 1
            for key in ("total_capacity_gb", "free_capacity_gb"):
                assert stats[key] == "unknown" or stats[key] > 0, stats[key]
        finally:
            drv.close()


def test_stats(driver: SheepdogDriver) -> None:
    stats = driver.get_volume_stats(refresh=True)
    for key in ("volume_backend_name", "vendor_name", "driver_version", "storage_protocol",
                "total_capacity_gb", "free_capacity_gb", "provisioned_capacity_gb",
                "thin_provisioning_support", "max_over_subscription_ratio",
                "reserved_percentage", "total_volumes", "multiattach",
                "online_extend_support"):
        assert key in stats, key
    assert stats["storage_protocol"] == "sheepdog" and stats["volume_backend_name"] == "sd"
    assert 0 <= stats["free_capacity_gb"] <= stats["total_capacity_gb"]
    assert stats["total_capacity_gb"] > 0
    v = vol(3)
    driver.create_volume(v)
    cached = driver.get_volume_stats()
    fresh = driver.get_volume_stats(refresh=True)
    assert fresh["total_volumes"] == stats["total_volumes"] + 1
    assert fresh["provisioned_capacity_gb"] == stats["provisioned_capacity_gb"] + 3
    assert cached["total_volumes"] in (stats["total_volumes"], fresh["total_volumes"])
    again = driver.get_volume_stats()
    assert again == fresh  # cached until refreshed
    driver.delete_volume(v)


# -- manage -------------------------------------------------------------------------------


def test_manage_existing(driver: SheepdogDriver) -> None:
    data = driver.data_access()
    name = f"external-{uuid.uuid4().hex[:6]}"
    driver.client.create_vdi(name, GiB + GiB // 2)  # 1.5 GiB, made outside the driver
    managed_one = Volume(id=uuid.uuid4().hex, size=1)
    driver.create_volume(managed_one)
    listed = {v["reference"]["source-name"]: v for v in driver.get_manageable_volumes()}
    assert listed[name]["safe_to_manage"] and listed[name]["size"] == 2
    ours = listed[f"volume-{managed_one.id}"]
    assert not ours["safe_to_manage"] and ours["cinder_id"] == managed_one.id
    ref = {"source-name": name}
    target = Volume(id="adopted", size=1)
    assert driver.manage_existing_get_size(target, ref) == 2
    update = driver.manage_existing(target, ref)
    assert update == {"name": name, "size": 2}
    adopted = Volume(id="adopted", size=2, name=name)
    assert data.size_bytes(adopted) == 2 * GiB
    driver.unmanage(adopted)
    assert data.exists(adopted)
    for bad in ({"source-id": "x"}, {"source-name": ""}, "name"):
        with pytest.raises(InvalidInput):
            driver.manage_existing(target, bad)  # type: ignore[arg-type]
    with pytest.raises(VolumeNotFound):
        driver.manage_existing_get_size(target, {"source-name": "absent-" + name})
    driver.delete_volume(adopted)
    driver.delete_volume(managed_one)


# -- images ---------------------------------------------------------------------------------


def _raw_image(path: pathlib.Path, size: int, marks: dict[int, bytes]) -> None:
    with open(path, "wb") as fh:
        fh.truncate(size)
        for off, payload in marks.items():
            fh.seek(off)
            fh.write(payload)


def test_image_round_trip_overwrites_old_data(driver: SheepdogDriver,
                                              tmp_path: pathlib.Path) -> None:
    data = driver.data_access()
    v = vol(1)
    driver.create_volume(v)
    data.write(v, 100 * MiB, b"old!" * 4096)  # where the image holds zeros
    marks = {0: fill(4096, 1), 5 * MiB + 17: fill(70000, 2), GiB - 4096: fill(4096, 3)}
    image = tmp_path / "in.raw"
    _raw_image(image, GiB, marks)
    driver.copy_image_to_volume(v, str(image))
    assert_marks(driver, v, marks)
    assert data.read(v, 100 * MiB, 16 * KiB) == bytes(16 * KiB), "old data survived import"
    out = tmp_path / "out.raw"
    driver.copy_volume_to_image(v, str(out))
    assert out.stat().st_size == GiB
    with open(out, "rb") as fh:
        for off, payload in marks.items():
            fh.seek(off)
            assert fh.read(len(payload)) == payload
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".export-")]
    with pytest.raises(VolumeNotFound):
        driver.copy_volume_to_image(vol(), str(tmp_path / "x.raw"))
    driver.delete_volume(v)


def test_image_too_large_or_unsafe_is_refused(driver: SheepdogDriver,
                                              tmp_path: pathlib.Path) -> None:
    from tests.unit.driver.test_images import qcow2_header

    v = vol(1)
    driver.create_volume(v)
    marks = write_marks(driver, v, 11)
    big = tmp_path / "big.raw"
    _raw_image(big, GiB + 512, {})
    with pytest.raises(InvalidInput, match="needs"):
        driver.copy_image_to_volume(v, str(big))
    for name, header in (("backing.qcow2", qcow2_header(backing_offset=512)),
                         ("datafile.qcow2", qcow2_header(incompatible=1 << 2))):
        path = tmp_path / name
        path.write_bytes(header)
        with pytest.raises(InvalidBackingImage, match="unsafe"):
            driver.copy_image_to_volume(v, str(path))
    assert_marks(driver, v, marks)  # nothing was written
    driver.delete_volume(v)


def test_qcow2_image_is_converted(driver: SheepdogDriver, tmp_path: pathlib.Path) -> None:
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        print("SKIP reason: qemu-img (qemu-utils) is not installed")
        pytest.skip("qemu-img (qemu-utils) is not installed")
    marks = {0: fill(4096, 4), 9 * MiB: fill(20000, 5)}
    raw = tmp_path / "src.raw"
    _raw_image(raw, 64 * MiB, marks)
    qcow = tmp_path / "src.qcow2"
    subprocess.run([qemu_img, "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw),
                    str(qcow)], check=True, timeout=60)
    v = vol(1)
    driver.create_volume(v)
    driver.copy_image_to_volume(v, str(qcow))
    assert_marks(driver, v, marks)
    assert driver.data_access().read(v, 1 * MiB, 4096) == bytes(4096)
    driver.delete_volume(v)


@pytest.mark.parametrize("extra,copies,policy,shift", [
    ("sheepdog_copies = 2\nsheepdog_block_size_shift = 23\n", 2, 0, 23),
    ("sheepdog_erasure_code = 2:1\n", 3, 0x11, 22),
    ("", 1, 0, 22),  # the cluster's defaults (formatted with 1 copy)
])
def test_redundancy_and_object_size_options(server: EmbeddedServer, tmp_path: pathlib.Path,
                                            extra: str, copies: int, policy: int,
                                            shift: int) -> None:
    drv = load_backend(write_ini(tmp_path / "r.conf", server.gateways[0], extra))
    try:
        v = vol()
        drv.create_volume(v)
        info = drv.describe_volume(v)
        assert (info["copies"], info["copy_policy"], info["block_size_shift"]) == (
            copies, policy, shift)
        drv.delete_volume(v)
    finally:
        drv.close()
