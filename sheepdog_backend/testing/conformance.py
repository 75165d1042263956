"""Driver conformance suite: ``DriverConformanceTests``.

How it works: the class holds pytest tests that drive a ``VolumeDriver`` only
through its public methods and check data only through the driver's test hook
``driver.data_access()``.  It is not collected on its own (``__test__`` is
False); a subclass named ``Test...`` is collected automatically and must
provide a ``driver`` fixture that returns a set-up driver, e.g.::

    class TestMyDriver(DriverConformanceTests):
        @pytest.fixture(scope="class")
        def driver(self):
            drv = load_backend("my.ini")
            yield drv
            drv.close()

Every test registers what it creates with a ``ResourceTracker`` that deletes
it all at teardown, pass or fail.  A test needing a capability the driver does
not declare (``driver.capabilities`` vs ``ALL_CAPABILITIES``) is skipped with
"declared unsupported: <capability>" and the pytest plugin reports it as GAP,
never as a pass.  Volumes are 1 GiB (thin) and data checks write a few hundred
KiB at several offsets, including 4 MiB object boundaries.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from sheepdog_backend.driver.base import (
    ALL_CAPABILITIES,
    Connector,
    Volume,
    VolumeDataAccess,
    VolumeDriver,
)
from sheepdog_backend.exception import (
    InvalidBackingImage,
    InvalidInput,
    SheepdogError,
    SnapshotNotFound,
    VolumeIsBusy,
    VolumeNotFound,
)
from sheepdog_backend.testing.plugin import CAPABILITY_MARKER, GAP_PROPERTY
from sheepdog_backend.testing.resources import (
    GIB,
    KIB,
    MIB,
    PATTERN_CHUNKS,
    ResourceTracker,
    apply_model_update,
    check_pattern,
    check_zeros,
    new_run_id,
    pattern_bytes,
    write_pattern,
)

GAP_REASON_PREFIX = "declared unsupported: "
MAX_NAME_BYTES = 255
CONNECTOR = Connector(host="conformance-host", ip="127.0.0.1",
                      initiator="iqn.2024-01.org.example:conformance")
REQUIRED_STATS_KEYS = (
    "volume_backend_name", "vendor_name", "driver_version", "storage_protocol",
    "total_capacity_gb", "free_capacity_gb", "provisioned_capacity_gb", "total_volumes",
)
# Address no cluster under test lives at (loopback, so nothing leaves the machine).
FOREIGN_HOST = "127.0.0.254"
IMAGE_SIZE = 24 * MIB
# Unique per process: every name the suite makes starts with sdconf-<RUN_ID>-.
RUN_ID = new_run_id()


def requires(*capabilities: str) -> pytest.MarkDecorator:
    """Mark a test as needing driver capabilities (a missing one is a GAP)."""
    unknown = set(capabilities) - ALL_CAPABILITIES
    if unknown:
        raise ValueError(f"unknown capabilities {sorted(unknown)}")
    marker: pytest.MarkDecorator = getattr(pytest.mark, CAPABILITY_MARKER)
    return marker(*capabilities)


def declare_gap(node: pytest.Item, missing: list[str]) -> None:
    """Skip the running test as a declared gap (reported as GAP, not pass)."""
    names = ", ".join(sorted(missing))
    node.user_properties.append((GAP_PROPERTY, names))
    pytest.skip(GAP_REASON_PREFIX + names)


def expect_ok(problems: list[str]) -> None:
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def free_loopback_port(exclude: set[str]) -> int:
    """A port nothing listens on right now and that is not in ``exclude``."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if str(port) not in exclude:
            return port


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class DriverConformanceTests:
    """The VolumeDriver contract as tests; subclass it and provide ``driver``."""

    __test__: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__test__" not in cls.__dict__:
            cls.__test__ = True

    # ------------------------------------------------------------------ fixtures

    @pytest.fixture(autouse=True)
    def _declared_capabilities(self, request: pytest.FixtureRequest,
                               driver: VolumeDriver) -> None:
        needed: set[str] = set()
        for mark in request.node.iter_markers(CAPABILITY_MARKER):
            needed.update(mark.args)
        missing = sorted(needed - set(driver.capabilities))
        if missing:
            declare_gap(request.node, missing)

    @pytest.fixture
    def data(self, request: pytest.FixtureRequest, driver: VolumeDriver) -> VolumeDataAccess:
        if "data_access" not in driver.capabilities:
            declare_gap(request.node, ["data_access"])
        return driver.data_access()

    @pytest.fixture
    def resources(self, driver: VolumeDriver,
                  data: VolumeDataAccess) -> Iterator[ResourceTracker]:
        tracker = ResourceTracker(driver, RUN_ID, data)
        yield tracker
        expect_ok(tracker.cleanup())

    @staticmethod
    def cluster_address(driver: VolumeDriver, volume: Volume) -> tuple[str, str, set[str]]:
        """(host, port) of the first gateway the driver names, and all its ports."""
        info = driver.initialize_connection(volume, CONNECTOR)
        hosts, ports = info["data"]["hosts"], info["data"]["ports"]
        return str(hosts[0]), str(ports[0]), {str(p) for p in ports}

    # --------------------------------------------------------------- basics

    def test_capabilities_are_known(self, driver: VolumeDriver) -> None:
        caps = driver.capabilities
        assert isinstance(caps, (frozenset, set)), f"capabilities is {type(caps).__name__}"
        assert set(caps) <= ALL_CAPABILITIES, (
            f"unknown capabilities {sorted(set(caps) - ALL_CAPABILITIES)}")
        assert isinstance(driver.VERSION, str) and driver.VERSION

    def test_create_and_delete_twice(self, driver: VolumeDriver, data: VolumeDataAccess,
                                     resources: ResourceTracker) -> None:
        vol = resources.volume()
        assert not data.exists(vol)
        driver.create_volume(vol)
        assert data.exists(vol)
        driver.delete_volume(vol)
        assert not data.exists(vol), "the volume still exists after delete_volume"
        driver.delete_volume(vol)  # already gone: must succeed
        assert not data.exists(vol)

    def test_size_is_exact(self, driver: VolumeDriver, data: VolumeDataAccess,
                           resources: ResourceTracker) -> None:
        for size in (1, 3):
            vol = resources.create_volume(size)
            assert data.size_bytes(vol) == size * GIB

    def test_new_volume_reads_zeros(self, data: VolumeDataAccess,
                                    resources: ResourceTracker) -> None:
        vol = resources.create_volume()
        for offset, length in PATTERN_CHUNKS:
            expect_ok(check_zeros(data, vol, offset, length))

    def test_data_hook_round_trip(self, data: VolumeDataAccess,
                                  resources: ResourceTracker) -> None:
        vol = resources.create_volume()
        written = write_pattern(data, vol, "round-trip")
        expect_ok(check_pattern(data, vol, written))
        expect_ok(check_zeros(data, vol, 256 * MIB, 64 * KIB))

    def test_create_again_same_size_keeps_data(
            self, driver: VolumeDriver, data: VolumeDataAccess,
            resources: ResourceTracker) -> None:
        vol = resources.create_volume()
        written = write_pattern(data, vol, "again")
        driver.create_volume(vol)  # a retried create whose reply was lost
        assert data.size_bytes(vol) == GIB
        expect_ok(check_pattern(data, vol, written))

    def test_create_again_other_size_fails(
            self, driver: VolumeDriver, data: VolumeDataAccess,
            resources: ResourceTracker) -> None:
        vol = resources.create_volume()
        written = write_pattern(data, vol, "other-size")
        with pytest.raises(SheepdogError):
            driver.create_volume(Volume(id=vol.id, size=2, name=vol.name))
        assert data.size_bytes(vol) == GIB
        expect_ok(check_pattern(data, vol, written))

    def test_names_at_the_length_limit(self, driver: VolumeDriver, data: VolumeDataAccess,
                                       resources: ResourceTracker) -> None:
        name = resources.unique_name("max").ljust(MAX_NAME_BYTES, "m")
        vol = resources.create_volume(name=name)
        assert data.exists(vol) and data.size_bytes(vol) == GIB
        written = write_pattern(data, vol, "max-name")
        expect_ok(check_pattern(data, vol, written))
        info = driver.initialize_connection(vol, CONNECTOR)
        assert info["data"]["name"] == name, "connection info does not name the VDI in full"

    @pytest.mark.parametrize("kind", ["ascii-256", "utf8-256-bytes"])
    def test_names_over_the_limit_rejected(self, kind: str, driver: VolumeDriver,
                                           data: VolumeDataAccess,
                                           resources: ResourceTracker) -> None:
        base = resources.unique_name("long")
        if kind == "ascii-256":
            name = base.ljust(MAX_NAME_BYTES + 1, "l")
        else:  # fewer than 256 characters, 256 bytes: the limit is in bytes
            rest = MAX_NAME_BYTES + 1 - len(base)
            name = base + "l" * (rest % 2) + "\u00e9" * (rest // 2)
        assert len(name.encode()) == MAX_NAME_BYTES + 1
        vol = resources.volume(name=name, invalid=True)
        truncated = resources.volume(name=name.encode()[:MAX_NAME_BYTES].decode(
            errors="ignore"))
        with pytest.raises(InvalidInput):
            driver.create_volume(vol)
        assert not data.exists(truncated), "a truncated name was created instead"

    def test_connection_info_shape(self, driver: VolumeDriver, data: VolumeDataAccess,
                                   resources: ResourceTracker) -> None:
        vol = resources.create_volume(name=resources.unique_name("conn"))
        info = driver.initialize_connection(vol, CONNECTOR)
        assert isinstance(info, dict) and set(info) >= {"driver_volume_type", "data"}
        assert isinstance(info["driver_volume_type"], str) and info["driver_volume_type"]
        conn = info["data"]
        assert isinstance(conn, dict) and set(conn) >= {"name", "hosts", "ports"}
        assert conn["name"] == vol.name
        hosts, ports = conn["hosts"], conn["ports"]
        assert isinstance(hosts, list) and hosts, "hosts must be a non-empty list"
        assert all(isinstance(h, str) and h for h in hosts), f"hosts {hosts!r}"
        assert isinstance(ports, list) and len(ports) == len(hosts), (
            f"ports {ports!r} must be a list as long as hosts {hosts!r}")
        assert all(isinstance(p, str) and p.isdigit() and 0 < int(p) < 65536
                   for p in ports), f"ports must be strings of port numbers: {ports!r}"
        driver.terminate_connection(vol, CONNECTOR)
        driver.terminate_connection(vol, None)  # force-detach of every connector
        assert data.exists(vol), "terminate_connection must not touch the volume"

    def test_connection_to_missing_volume_fails(self, driver: VolumeDriver,
                                                resources: ResourceTracker) -> None:
        with pytest.raises(VolumeNotFound):
            driver.initialize_connection(resources.volume(), CONNECTOR)

    def test_stats_keys_and_movement(self, driver: VolumeDriver,
                                     resources: ResourceTracker) -> None:
        before = driver.get_volume_stats(refresh=True)
        missing = [k for k in REQUIRED_STATS_KEYS if k not in before]
        assert not missing, f"stats lack {missing}"
        for key in ("total_capacity_gb", "free_capacity_gb", "provisioned_capacity_gb"):
            value = before[key]
            assert isinstance(value, (int, float)) or value in ("unknown", "infinite"), (
                f"{key} = {value!r}")
        resources.create_volume()
        after = driver.get_volume_stats(refresh=True)
        assert after["total_volumes"] >= before["total_volumes"] + 1, (
            f"total_volumes did not move: {before['total_volumes']} -> "
            f"{after['total_volumes']}")
        assert after["provisioned_capacity_gb"] >= before["provisioned_capacity_gb"] + 1, (
            f"provisioned_capacity_gb did not move: {before['provisioned_capacity_gb']} -> "
            f"{after['provisioned_capacity_gb']}")
        cached = driver.get_volume_stats(refresh=False)
        assert set(cached) >= set(REQUIRED_STATS_KEYS)

    # ------------------------------------------------------------ snapshots

    @requires("snapshots")
    def test_snapshot_and_delete_twice(self, driver: VolumeDriver, data: VolumeDataAccess,
                                       resources: ResourceTracker) -> None:
        vol = resources.create_volume()
        written = write_pattern(data, vol, "snap")
        snap = resources.snapshot(vol)
        assert not data.snapshot_exists(snap)
        driver.create_snapshot(snap)
        assert data.snapshot_exists(snap)
        driver.delete_snapshot(snap)
        assert not data.snapshot_exists(snap), "the snapshot still exists after delete"
        driver.delete_snapshot(snap)  # already gone: must succeed
        driver.delete_snapshot(resources.snapshot(resources.volume()))  # never existed
        expect_ok(check_pattern(data, vol, written))

    @requires("snapshots")
    def test_snapshot_of_missing_volume_fails(self, driver: VolumeDriver,
                                              data: VolumeDataAccess,
                                              resources: ResourceTracker) -> None:
        snap = resources.snapshot(resources.volume())
        with pytest.raises(VolumeNotFound):
            driver.create_snapshot(snap)
        assert not data.snapshot_exists(snap)

    @requires("snapshots")
    def test_volume_with_snapshots_refuses_deletion(
            self, driver: VolumeDriver, data: VolumeDataAccess,
            resources: ResourceTracker) -> None:
        vol = resources.create_volume()
        written = write_pattern(data, vol, "busy")
        snap = resources.create_snapshot(vol)
        with pytest.raises(VolumeIsBusy):
            driver.delete_volume(vol)
        assert data.exists(vol) and data.snapshot_exists(snap)
        expect_ok(check_pattern(data, vol, written))
        driver.delete_snapshot(snap)
        driver.delete_volume(vol)
        assert not data.exists(vol)

    @requires("snapshots", "clone")
    def test_clone_from_snapshot_identical_and_independent(
            self, driver: VolumeDriver, data: VolumeDataAccess,
            resources: ResourceTracker) -> None:
        src = resources.create_volume()
        at_snap = write_pattern(data, src, "before-snap")
        snap = resources.create_snapshot(src)
        src_now = write_pattern(data, src, "after-snap")  # must not reach the clone
        clone = resources.volume()
        driver.create_volume_from_snapshot(clone, snap)
        assert data.size_bytes(clone) == GIB
        expect_ok(check_pattern(data, clone, at_snap))
        clone_now = write_pattern(data, clone, "clone-write", PATTERN_CHUNKS[:3])
        expect_ok(check_pattern(data, src, src_now))
        src_later = write_pattern(data, src, "src-write", PATTERN_CHUNKS[2:])
        expect_ok(check_pattern(data, clone, clone_now))
        expect_ok(check_pattern(data, clone, {o: at_snap[o] for o, _ in PATTERN_CHUNKS[3:]}))
        expect_ok(check_pattern(data, src, src_later))
        second = resources.volume()
        driver.create_volume_from_snapshot(second, snap)
        expect_ok(check_pattern(data, second, at_snap))  # the snapshot is untouched

    @requires("snapshots", "clone")
    def test_clone_from_snapshot_to_larger_size(
            self, driver: VolumeDriver, data: VolumeDataAccess,
            resources: ResourceTracker) -> None:
        src = resources.create_volume()
        written = write_pattern(data, src, "grow-clone")
        snap = resources.create_snapshot(src)
        clone = resources.volume(size=2)
        driver.create_volume_from_snapshot(clone, snap)
        assert data.size_bytes(clone) == 2 * GIB
        expect_ok(check_pattern(data, clone, written))
        expect_ok(check_zeros(data, clone, GIB, 64 * KIB))
        tail = write_pattern(data, clone, "tail", [(2 * GIB - 64 * KIB, 64 * KIB)])
        expect_ok(check_pattern(data, clone, tail))

    @requires("snapshots", "clone")
    def test_clone_from_missing_snapshot_fails(
            self, driver: VolumeDriver, data: VolumeDataAccess,
            resources: ResourceTracker) -> None:
        src = resources.create_volume()
        clone = resources.volume()
        with pytest.raises(SnapshotNotFound):
            driver.create_volume_from_snapshot(clone, resources.snapshot(src))
        assert not data.exists(clone)

    @requires("clone")
    def test_clone_of_volume_identical_and_independent(
            self, driver: VolumeDriver, data: VolumeDataAccess,
            resources: ResourceTracker) -> None:
        src = resources.create_volume()
        written = write_pattern(data, src, "clone-src")
        clone = resources.volume()
        driver.create_cloned_volume(clone, src)
        assert data.size_bytes(clone) == GIB
        expect_ok(check_pattern(data, clone, written))
        clone_now = write_pattern(data, clone, "clone-side")
        expect_ok(check_pattern(data, src, written))
        src_now = write_pattern(data, src, "src-side", PATTERN_CHUNKS[1:2])
        expect_ok(check_pattern(data, clone, clone_now))
        expect_ok(check_pattern(data, src, src_now))
        driver.delete_volume(src)  # the clone must not keep the source busy
        assert not data.exists(src)
        expect_ok(check_pattern(data, clone, clone_now))

    @requires("clone")
    def test_clone_of_missing_volume_fails(self, driver: VolumeDriver, data: VolumeDataAccess,
                                           resources: ResourceTracker) -> None:
        clone = resources.volume()
        with pytest.raises(VolumeNotFound):
            driver.create_cloned_volume(clone, resources.volume())
        assert not data.exists(clone)

    # ------------------------------------------------------- extend / revert

    @requires("extend")
    def test_extend_keeps_data_and_reads_zeros_beyond(
            self, driver: VolumeDriver, data: VolumeDataAccess,
            resources: ResourceTracker) -> None:
        vol = resources.create_volume()
        written = write_pattern(data, vol, "extend")
        driver.extend_volume(vol, 2)
        assert data.size_bytes(vol) == 2 * GIB
        expect_ok(check_pattern(data, vol, written))
        expect_ok(check_zeros(data, vol, GIB, 256 * KIB))
        expect_ok(check_zeros(data, vol, 2 * GIB - 64 * KIB, 64 * KIB))
        tail = write_pattern(data, vol, "extended-tail", [(2 * GIB - 64 * KIB, 64 * KIB)])
        expect_ok(check_pattern(data, vol, tail))

    @requires("extend")
    def test_extend_to_smaller_size_rejected(
            self, driver: VolumeDriver, data: VolumeDataAccess,
            resources: ResourceTracker) -> None:
        vol = resources.create_volume(2)
        written = write_pattern(data, vol, "shrink")
        with pytest.raises(InvalidInput):
            driver.extend_volume(vol, 1)
        assert data.size_bytes(vol) == 2 * GIB
        expect_ok(check_pattern(data, vol, written))

    @requires("extend")
    def test_extend_missing_volume_fails(self, driver: VolumeDriver,
                                         resources: ResourceTracker) -> None:
        with pytest.raises(VolumeNotFound):
            driver.extend_volume(resources.volume(), 2)

    @requires("snapshots", "revert")
    def test_revert_to_snapshot(self, driver: VolumeDriver, data: VolumeDataAccess,
                                resources: ResourceTracker) -> None:
        vol = resources.create_volume()
        at_snap = write_pattern(data, vol, "revert-a", PATTERN_CHUNKS[:4])
        snap = resources.create_snapshot(vol)
        write_pattern(data, vol, "revert-b")
        driver.revert_to_snapshot(vol, snap)
        assert data.size_bytes(vol) == GIB
        expect_ok(check_pattern(data, vol, at_snap))
        offset, length = PATTERN_CHUNKS[4]
        expect_ok(check_zeros(data, vol, offset, length))  # written only after the snapshot
        assert data.snapshot_exists(snap), "revert must keep the snapshot"
        again = write_pattern(data, vol, "after-revert", PATTERN_CHUNKS[:1])
        expect_ok(check_pattern(data, vol, again))
        with pytest.raises(SnapshotNotFound):
            driver.revert_to_snapshot(vol, resources.snapshot(vol))

    # ------------------------------------------------------------- backing

    @requires("backing_images", "snapshots")
    def test_backing_snapshot_reference_accepted(
            self, driver: VolumeDriver, data: VolumeDataAccess,
            resources: ResourceTracker) -> None:
        src = resources.create_volume(name=resources.unique_name("base"))
        written = write_pattern(data, src, "backing")
        snap = resources.snapshot(src, name=resources.unique_name("tag"))
        driver.create_snapshot(snap)
        host, port, _ = self.cluster_address(driver, src)
        vol = resources.volume()
        driver.create_volume(vol, backing=f"sheepdog://{url_host(host)}:{port}/"
                                          f"{src.name}#{snap.name}")
        expect_ok(check_pattern(data, vol, written))

    BACKING_KINDS: ClassVar[tuple[str, ...]] = (
        "path", "file-url", "rbd", "http", "sheepdog-empty", "sheepdog-no-vdi",
        "sheepdog-bad-port", "sheepdog-legacy-short", "working-vdi", "working-vdi-legacy",
        "other-cluster-host", "other-cluster-port", "other-cluster-legacy",
    )

    @requires("backing_images", "snapshots")
    @pytest.mark.parametrize("kind", BACKING_KINDS)
    def test_backing_reference_rejected(self, kind: str, driver: VolumeDriver,
                                        data: VolumeDataAccess,
                                        resources: ResourceTracker) -> None:
        src = resources.create_volume(name=resources.unique_name("src"))
        snap = resources.snapshot(src, name=resources.unique_name("tag"))
        driver.create_snapshot(snap)
        host, port, ports = self.cluster_address(driver, src)
        addr = f"{url_host(host)}:{port}"
        other_port = free_loopback_port(ports)
        ref = {
            "path": f"/var/lib/images/{src.name}.img",
            "file-url": f"file:///var/lib/images/{src.name}.img",
            "rbd": f"rbd:volumes/{src.name}@{snap.name}",
            "http": f"http://127.0.0.1:{other_port}/{src.name}.img",
            "sheepdog-empty": "sheepdog://",
            "sheepdog-no-vdi": f"sheepdog://{addr}/#{snap.name}",
            "sheepdog-bad-port": f"sheepdog://{url_host(host)}:notaport/{src.name}#{snap.name}",
            "sheepdog-legacy-short": f"sheepdog:{src.name}",
            "working-vdi": f"sheepdog://{addr}/{src.name}",
            "working-vdi-legacy": f"sheepdog:{host}:{port}:{src.name}",
            "other-cluster-host": f"sheepdog://{FOREIGN_HOST}:{port}/{src.name}#{snap.name}",
            "other-cluster-port": f"sheepdog://{url_host(host)}:{other_port}/"
                                  f"{src.name}#{snap.name}",
            "other-cluster-legacy": f"sheepdog:{FOREIGN_HOST}:{port}:{src.name}:{snap.name}",
        }[kind]
        vol = resources.volume()
        with pytest.raises(InvalidBackingImage):
            driver.create_volume(vol, backing=ref)
        assert not data.exists(vol), f"a volume was created from {ref!r}"

    # -------------------------------------------------------------- manage

    @requires("manage")
    def test_manage_existing_adopts_and_unmanage_leaves_vdi(
            self, driver: VolumeDriver, data: VolumeDataAccess,
            resources: ResourceTracker) -> None:
        external = resources.create_volume(name=resources.unique_name("ext"))
        written = write_pattern(data, external, "manage")
        ref = {"source-name": external.name}
        listed = [v for v in driver.get_manageable_volumes()
                  if v.get("reference") == ref]
        assert listed, f"get_manageable_volumes does not list {ref}"
        adopted = resources.volume()
        assert driver.manage_existing_get_size(adopted, ref) == 1
        update = driver.manage_existing(adopted, ref)
        assert update is None or isinstance(update, dict)
        managed = apply_model_update(adopted, update)
        resources.track(managed)
        assert data.exists(managed), "the managed volume does not resolve to a VDI"
        assert data.size_bytes(managed) == GIB
        expect_ok(check_pattern(data, managed, written))
        driver.unmanage(managed)
        assert data.exists(managed), "unmanage must leave the VDI in place"
        expect_ok(check_pattern(data, managed, written))

    @requires("manage")
    @pytest.mark.parametrize("kind", ["missing-vdi", "no-source-name"])
    def test_manage_bad_reference_fails(self, kind: str, driver: VolumeDriver,
                                        data: VolumeDataAccess,
                                        resources: ResourceTracker) -> None:
        ref: dict[str, Any] = ({"source-name": resources.unique_name("absent")}
                               if kind == "missing-vdi" else {"source-id": "x"})
        vol = resources.volume()
        with pytest.raises((VolumeNotFound, InvalidInput)):
            driver.manage_existing_get_size(vol, ref)
        with pytest.raises((VolumeNotFound, InvalidInput)):
            driver.manage_existing(vol, ref)
        assert not data.exists(vol)

    # -------------------------------------------------------------- images

    @requires("image_transfer")
    def test_image_import_and_export_round_trip(
            self, driver: VolumeDriver, data: VolumeDataAccess,
            resources: ResourceTracker, tmp_path: Any) -> None:
        image = tmp_path / "in.raw"  # a raw image smaller than the volume
        chunks = [c for c in PATTERN_CHUNKS if c[0] + c[1] <= IMAGE_SIZE]
        expected: dict[int, bytes] = {}
        with open(image, "wb") as fh:
            fh.truncate(IMAGE_SIZE)
            for offset, length in chunks:
                expected[offset] = pattern_bytes(f"image@{offset}", length)
                fh.seek(offset)
                fh.write(expected[offset])
        vol = resources.create_volume()
        driver.copy_image_to_volume(vol, str(image))
        expect_ok(check_pattern(data, vol, expected))
        expect_ok(check_zeros(data, vol, IMAGE_SIZE, 64 * KIB))
        expect_ok(check_zeros(data, vol, 256 * MIB, 64 * KIB))
        exported = tmp_path / "out.raw"
        driver.copy_volume_to_image(vol, str(exported))
        assert exported.stat().st_size == GIB
        with open(exported, "rb") as fh:
            for offset, want in expected.items():
                fh.seek(offset)
                got = fh.read(len(want))
                assert got == want, f"exported image differs at offset {offset}"
            fh.seek(256 * MIB)
            assert fh.read(64 * KIB) == bytes(64 * KIB)
