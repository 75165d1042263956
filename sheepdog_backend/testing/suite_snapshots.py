"""Conformance tests: snapshots, clones, extend and revert."""

from __future__ import annotations

from sheepdog_backend.driver.base import (
    VolumeDataAccess,
    VolumeDriver,
)
from sheepdog_backend.exception import (
    InvalidInput,
    SnapshotNotFound,
    VolumeIsBusy,
    VolumeNotFound,
)
from sheepdog_backend.testing.resources import (
    GIB,
    KIB,
    PATTERN_CHUNKS,
    ResourceTracker,
    check_pattern,
    check_zeros,
    write_pattern,
)
from sheepdog_backend.testing.suite_base import (
    expect_ok,
    refused,
    requires,
)


class SnapshotTests:
    """Snapshots, clones (from snapshots and volumes), extend and revert."""

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
        with refused(VolumeNotFound, "create_snapshot of a missing volume"):
            driver.create_snapshot(snap)
        assert not data.snapshot_exists(snap)

    @requires("snapshots")
    def test_volume_with_snapshots_refuses_deletion(
            self, driver: VolumeDriver, data: VolumeDataAccess,
            resources: ResourceTracker) -> None:
        vol = resources.create_volume()
        written = write_pattern(data, vol, "busy")
        snap = resources.create_snapshot(vol)
        with refused(VolumeIsBusy, "delete_volume of a volume with a snapshot"):
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
        driver.delete_snapshot(snap)  # clones made from it keep their data
        assert not data.snapshot_exists(snap)
        expect_ok(check_pattern(data, second, at_snap))
        expect_ok(check_pattern(data, clone, clone_now))

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
    def test_clone_from_snapshot_to_smaller_size_rejected(
            self, driver: VolumeDriver, data: VolumeDataAccess,
            resources: ResourceTracker) -> None:
        src = resources.create_volume(2)
        snap = resources.create_snapshot(src)
        clone = resources.volume(size=1)
        with refused(InvalidInput, "create_volume_from_snapshot of a 2 GiB snapshot at 1 GiB"):
            driver.create_volume_from_snapshot(clone, snap)
        assert not data.exists(clone)

    @requires("snapshots", "clone")
    def test_clone_from_missing_snapshot_fails(
            self, driver: VolumeDriver, data: VolumeDataAccess,
            resources: ResourceTracker) -> None:
        src = resources.create_volume()
        clone = resources.volume()
        with refused(SnapshotNotFound, "create_volume_from_snapshot of a missing snapshot"):
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
        with refused(VolumeNotFound, "create_cloned_volume of a missing volume"):
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
        with refused(InvalidInput, "extend_volume from 2 GiB to 1 GiB"):
            driver.extend_volume(vol, 1)
        assert data.size_bytes(vol) == 2 * GIB
        expect_ok(check_pattern(data, vol, written))

    @requires("extend")
    def test_extend_missing_volume_fails(self, driver: VolumeDriver,
                                         resources: ResourceTracker) -> None:
        with refused(VolumeNotFound, "extend_volume of a missing volume"):
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
        with refused(SnapshotNotFound, "revert_to_snapshot to a missing snapshot"):
            driver.revert_to_snapshot(vol, resources.snapshot(vol))
