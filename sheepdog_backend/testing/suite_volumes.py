"""Conformance tests: volume life cycle, sizes, names, connection info, stats."""

from __future__ import annotations

import pytest

from sheepdog_backend.driver.base import (
    ALL_CAPABILITIES,
    Volume,
    VolumeDataAccess,
    VolumeDriver,
)
from sheepdog_backend.exception import (
    InvalidInput,
    SheepdogError,
    VolumeNotFound,
)
from sheepdog_backend.testing.resources import (
    GIB,
    KIB,
    MIB,
    PATTERN_CHUNKS,
    ResourceTracker,
    check_pattern,
    check_zeros,
    write_pattern,
)
from sheepdog_backend.testing.suite_base import (
    CONNECTOR,
    MAX_NAME_BYTES,
    REQUIRED_STATS_KEYS,
    expect_ok,
    refused,
)


class VolumeTests:
    """Create/delete, sizes, names, data hook, connection info and stats."""

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
        with refused(SheepdogError, "create_volume again with another size"):
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
        with refused(InvalidInput, f"create_volume with a {kind} name"):
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
        with refused(VolumeNotFound, "initialize_connection of a missing volume"):
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
