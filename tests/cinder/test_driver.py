"""SheepdogCinderDriver with Cinder's own objects against the embedded server:
the lifecycle, Cinder's exceptions, names, manage/unmanage and stats."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from sheepdog_backend.exception import SheepdogError
from tests.cinder.conftest import CINDER_MISSING, CinderBackend

pytestmark = pytest.mark.skipif(bool(CINDER_MISSING), reason=CINDER_MISSING or "-")

GiB = 1 << 30


def test_cinder_loads_it_by_class_path_with_only_our_options(backend: CinderBackend) -> None:
    from cinder.volume import driver as cinder_driver
    from oslo_config import cfg

    drv = backend.driver
    assert isinstance(drv, cinder_driver.VolumeDriver)
    assert drv.host == f"testhost@{backend.group}"
    ours = {opt.dest for opt in drv.get_driver_options()}
    assert ours and all(name.startswith("sheepdog_") for name in ours)
    cinder_names = {opt.dest for opt in cinder_driver.volume_opts}
    assert not ours & cinder_names, "re-declares Cinder's options"
    # registered on [backend_defaults] and readable through the backend's configuration
    assert cfg.CONF.backend_defaults.sheepdog_store_port == 7000
    assert backend.configuration.sheepdog_gateways == drv.core.gateways


def test_lifecycle_with_data(backend: CinderBackend) -> None:
    from cinder import exception

    drv, be = backend.driver, backend
    vol = be.created(1)
    assert vol.provider_location == vol.name == f"volume-{vol.id}"
    be.write(vol, 4 * (1 << 20) - 3, b"across-objects")
    snap = be.snapshot(vol)
    snap.update(drv.create_snapshot(snap))
    assert snap.provider_location == f"snapshot-{snap.id}"
    be.write(vol, 4 * (1 << 20) - 3, b"AFTER-SNAPSHOT")

    from_snap = be.volume(2)
    from_snap.update(drv.create_volume_from_snapshot(from_snap, snap))
    assert be.read(from_snap, 4 * (1 << 20) - 3, 14) == b"across-objects"
    assert be.size_bytes(from_snap) == 2 * GiB

    clone = be.volume(1)
    clone.update(drv.create_cloned_volume(clone, vol))
    assert be.read(clone, 4 * (1 << 20) - 3, 14) == b"AFTER-SNAPSHOT"

    drv.extend_volume(vol, 3)
    assert be.size_bytes(vol) == 3 * GiB
    vol.size = 3
    drv.revert_to_snapshot(be.ctx, vol, snap)
    assert be.read(vol, 4 * (1 << 20) - 3, 14) == b"across-objects"
    assert be.size_bytes(vol) == 3 * GiB  # a revert keeps the grown size

    info = drv.initialize_connection(vol, {"host": "compute-1", "ip": "127.0.0.1"})
    assert info["driver_volume_type"] == "sheepdog"
    assert info["data"]["name"] == vol.provider_location
    assert drv.create_export(be.ctx, vol, {"host": "compute-1"}) is None
    drv.ensure_export(be.ctx, vol)
    drv.terminate_connection(vol, None)  # a force-detach passes no connector
    with pytest.raises(exception.InvalidConnectorException):
        drv.initialize_connection(vol, None)
    drv.remove_export(be.ctx, vol)

    drv.delete_snapshot(snap)
    drv.delete_snapshot(snap)  # already gone: still fine
    for v in (vol, from_snap, clone):
        drv.delete_volume(v)
        drv.delete_volume(v)  # idempotent
    assert be.vdis() == []


def test_volume_with_snapshots_is_busy_and_kept(backend: CinderBackend) -> None:
    from cinder import exception

    drv, be = backend.driver, backend
    vol = be.created(1)
    be.write(vol, 0, b"keep me")
    snap = be.snapshot(vol)
    snap.update(drv.create_snapshot(snap))
    with pytest.raises(exception.VolumeIsBusy) as err:
        drv.delete_volume(vol)
    assert vol.provider_location in str(err.value) and "snapshot" in str(err.value)
    assert be.read(vol, 0, 7) == b"keep me"
    drv.delete_snapshot(snap)
    drv.delete_volume(vol)
    assert be.vdis() == []


def test_errors_are_cinders_never_sheepdog_errors(backend: CinderBackend) -> None:
    from cinder import exception

    drv, be = backend.driver, backend
    ghost = be.volume(1)
    with pytest.raises(exception.VolumeNotFound) as nf:
        drv.extend_volume(ghost, 2)
    assert ghost.id in str(nf.value.kwargs["volume_id"]) or ghost.name in str(nf.value)
    vol = be.created(1)
    missing = be.snapshot(vol)
    with pytest.raises(exception.SnapshotNotFound):
        drv.create_volume_from_snapshot(be.volume(1), missing)
    with pytest.raises(exception.SnapshotNotFound):
        drv.revert_to_snapshot(be.ctx, vol, missing)
    with pytest.raises(exception.InvalidInput):
        drv.extend_volume(vol, 0)
    # the same VDI name asked for with another size: a storage conflict
    with pytest.raises(exception.VolumeBackendAPIException) as conflict:
        drv.create_volume(be.volume(2, id=vol.id))
    assert not isinstance(conflict.value, SheepdogError)
    assert isinstance(conflict.value.__cause__, SheepdogError)
    assert be.size_bytes(vol) == GiB  # nothing changed
    drv.delete_volume(vol)


def test_storage_down_is_a_backend_error(backend: CinderBackend,
                                         embedded_server: object) -> None:
    from cinder import exception

    from tests.cinder.conftest import CinderBackend as Backend

    dead = Backend(["127.0.0.1:9"], sheepdog_retry_attempts=1, sheepdog_retry_deadline=1.0,
                   sheepdog_connect_timeout=0.5)
    try:
        dead.driver.do_setup(dead.ctx)  # must not fail only because the storage is down
        with pytest.raises(exception.VolumeBackendAPIException, match=r"127\.0\.0\.1:9"):
            dead.driver.check_for_setup_error()
        with pytest.raises(exception.VolumeBackendAPIException):
            dead.driver.create_volume(dead.volume(1))
    finally:
        dead.close()


def test_names_follow_cinder_after_migration_and_template(backend: CinderBackend) -> None:
    drv, be = backend.driver, backend
    # A migrated volume: Cinder swapped _name_id, so volume.name names the new VDI.
    name_id = str(uuid.uuid4())
    migrated = be.volume(1, _name_id=name_id)
    migrated.update(drv.create_volume(migrated))
    assert migrated.provider_location == f"volume-{name_id}"
    assert be.vdis() == [f"volume-{name_id}"]
    be.write(migrated, 0, b"migrated")
    # provider_location wins over the name from then on
    migrated._name_id = None
    assert be.read(migrated, 0, 8) == b"migrated"
    drv.extend_volume(migrated, 2)
    assert be.size_bytes(migrated) == 2 * GiB
    # a volume without provider_location (made by an older release) resolves by name
    legacy = be.volume(1, _name_id=name_id)
    assert be.read(legacy, 0, 8) == b"migrated"
    # [DEFAULT] volume_name_template is Cinder's and is followed
    be.set(volume_name_template="cinder-vol-%s")
    templated = be.volume(1)
    templated.update(drv.create_volume(templated))
    assert templated.provider_location == f"cinder-vol-{templated.id}"
    drv.delete_volume(migrated)
    drv.delete_volume(templated)
    assert be.vdis() == []


def test_manage_keeps_the_vdi_name(backend: CinderBackend) -> None:
    from cinder import exception

    from sheepdog_backend.driver.base import Volume

    drv, be = backend.driver, backend
    drv.core.client.create_vdi("legacy disk", GiB + 5, copies=0, copy_policy=0)
    drv.core.data_access().write(Volume(id="x", size=2, name="legacy disk"), 0, b"old data")
    vol = be.volume(1)
    ref = {"source-name": "legacy disk"}
    assert drv.manage_existing_get_size(vol, ref) == 2  # rounded up
    vol.update(drv.manage_existing(vol, ref))
    vol.size = 2
    assert vol.provider_location == "legacy disk"
    assert be.read(vol, 0, 8) == b"old data"
    assert be.size_bytes(vol) == 2 * GiB
    snap = be.snapshot(vol)
    snap.update(drv.create_snapshot(snap))
    drv.delete_snapshot(snap)
    drv.unmanage(vol)
    assert be.vdis() == ["legacy disk"]  # unmanage keeps the VDI and its data
    for bad in ({"source-name": "no such vdi"}, {}, {"source-id": 3}, {"source-name": ""}):
        with pytest.raises(exception.ManageExistingInvalidReference):
            drv.manage_existing_get_size(be.volume(1), bad)
        with pytest.raises(exception.ManageExistingInvalidReference):
            drv.manage_existing(be.volume(1), bad)
    assert be.vdis() == ["legacy disk"]
    drv.delete_volume(vol)
    assert be.vdis() == []


def test_manageable_volumes_paginated(backend: CinderBackend) -> None:
    drv, be = backend.driver, backend
    for name, size in (("aaa", 3), ("bbb", 1), ("ccc", 2)):
        drv.core.client.create_vdi(name, size * GiB, copies=0, copy_policy=0)
    mine = be.created(4)
    other = be.volume(1, id=str(uuid.uuid4()))  # named like a Cinder volume, not ours
    drv.core.client.create_vdi(other.name, GiB, copies=0, copy_policy=0)

    everything = drv.get_manageable_volumes([mine], None, 1000, 0, ["size"], ["asc"])
    by_name = {e["reference"]["source-name"]: e for e in everything}
    assert [e["size"] for e in everything] == sorted(e["size"] for e in everything)
    assert by_name["aaa"]["safe_to_manage"] is True and by_name["aaa"]["size"] == 3
    assert by_name[mine.name]["safe_to_manage"] is False
    assert by_name[mine.name]["cinder_id"] == mine.id
    assert by_name[mine.name]["reason_not_safe"] == "already managed"
    assert by_name[other.name]["safe_to_manage"] is False
    assert isinstance(by_name["aaa"]["extra_info"], str)

    page = drv.get_manageable_volumes([mine], None, 2, 1, ["size"], ["desc"])
    assert [e["size"] for e in page] == [3, 2]
    after = drv.get_manageable_volumes([mine], {"source-name": "aaa"}, 10, 0, ["size"],
                                        ["desc"])
    assert [e["size"] for e in after] == [2, 1, 1]


def test_manage_existing_snapshot(backend: CinderBackend) -> None:
    from cinder import exception

    drv, be = backend.driver, backend
    vol = be.created(1)
    drv.core.client.snapshot_vdi(vol.provider_location, "made-by-dog")
    listed = drv.get_manageable_snapshots([], None, 10, 0, ["size"], ["asc"])
    assert [(e["reference"], e["source_reference"], e["safe_to_manage"]) for e in listed] == [
        ({"source-name": "made-by-dog"}, {"source-name": vol.provider_location}, True)]
    snap = be.snapshot(vol)
    ref = {"source-name": "made-by-dog"}
    assert drv.manage_existing_snapshot_get_size(snap, ref) == 1
    snap.update(drv.manage_existing_snapshot(snap, ref))
    assert snap.provider_location == "made-by-dog"
    listed = drv.get_manageable_snapshots([snap], None, 10, 0, ["size"], ["asc"])
    assert listed[0]["cinder_id"] == snap.id and listed[0]["safe_to_manage"] is False
    with pytest.raises(exception.ManageExistingInvalidReference):
        drv.manage_existing_snapshot(be.snapshot(vol), {"source-name": "nope"})
    clone = be.volume(1)
    clone.update(drv.create_volume_from_snapshot(clone, snap))
    drv.delete_snapshot(snap)
    drv.delete_volume(clone)
    drv.delete_volume(vol)
    assert be.vdis() == []


def test_stats_in_cinders_keys_and_types(backend: CinderBackend) -> None:
    drv, be = backend.driver, backend
    be.set(volume_backend_name="sheep-fast", reserved_percentage=7,
           max_over_subscription_ratio="auto")
    vol = be.created(2)
    stats = drv.get_volume_stats(refresh=True)
    assert stats["volume_backend_name"] == "sheep-fast"
    assert stats["storage_protocol"] == "sheepdog"
    assert stats["vendor_name"] == "Open Source"
    assert isinstance(stats["driver_version"], str)
    for key in ("total_capacity_gb", "free_capacity_gb", "provisioned_capacity_gb"):
        assert isinstance(stats[key], float), key
    assert 0 < stats["free_capacity_gb"] <= stats["total_capacity_gb"]
    assert stats["provisioned_capacity_gb"] == 2.0 and stats["total_volumes"] == 1
    assert stats["reserved_percentage"] == 7
    assert stats["max_over_subscription_ratio"] == "auto"
    assert stats["thin_provisioning_support"] is True
    assert stats["QoS_support"] is False and stats["multiattach"] is False
    assert stats["location_info"].startswith("sheepdog:127.0.0.1:")
    assert drv.get_volume_stats() == stats  # cached
    drv.delete_volume(vol)
    assert drv.get_volume_stats(refresh=True)["total_volumes"] == 0
    # Cinder's own capability report runs over it
    drv.init_capabilities()
    assert drv.capabilities["volume_backend_name"] == "sheep-fast"
    assert drv.capabilities["properties"]["thin_provisioning"]["title"]


def test_terminate_connection_answers_whether_others_share_the_target(
        tmp_path: Path) -> None:
    """Cinder's VolumeManager calls remove_export only when terminate_connection
    answers False: True while another attachment (the same host's too) uses
    the target; a forced or unknown detach ends nothing; remove_export before
    a delete (Cinder knows of no attachment) removes what the record still
    counts."""
    from cinder import objects

    from sheepdog_backend.export import Tgtadm, TgtTargets
    from sheepdog_backend.export.manager import read_record
    from sheepdog_backend.server.embedded import EmbeddedServer
    from tests.realsheep import free_port
    from tests.tgtd import TgtDaemon

    one = {"host": "compute-1", "initiator": "iqn.1993-08.org.debian:01:one"}
    two = {"host": "compute-2", "initiator": "iqn.1993-08.org.debian:01:two"}
    with TgtDaemon(tmp_path / "tgtd") as tgtd, EmbeddedServer(
            tmp_path / "data", ports=[free_port()]) as srv:
        be = CinderBackend(srv.gateways, sheepdog_attach_protocol="iscsi",
                           target_ip_address="127.0.0.1", target_port=tgtd.portal_port,
                           sheepdog_tgt_control_port=tgtd.control_port,
                           sheepdog_export_chap_key="cinder-test-key")
        try:
            drv = be.driver
            drv.do_setup(be.ctx)
            vol = be.created(1)
            for connector in (one, one, two):  # compute-1 has two instances
                drv.create_export(be.ctx, vol, connector)
                iqn = drv.initialize_connection(vol, connector)["data"]["target_iqn"]
            vol.volume_attachment = objects.VolumeAttachmentList(objects=[
                objects.VolumeAttachment(connector=c) for c in (one, one, two)])
            tgt = TgtTargets(Tgtadm(control_port=tgtd.control_port))
            assert drv.terminate_connection(vol, None, force=True) is True
            assert drv.terminate_connection(vol, {"host": "x", "initiator": "iqn.x:y"}) is True
            assert drv.terminate_connection(vol, one) is True
            assert sorted(tgt.find(iqn).acls) == [one["initiator"], two["initiator"]]  # type: ignore[union-attr]
            assert drv.terminate_connection(vol, two) is True
            assert tgt.find(iqn).acls == (one["initiator"],)  # type: ignore[union-attr]
            assert drv.terminate_connection(vol, two) is True  # twice: compute-1 remains
            drv.remove_export(be.ctx, vol)  # a failed attach's clean-up keeps it
            assert tgt.find(iqn) is not None
            assert drv.terminate_connection(vol, one) is False
            assert tgt.find(iqn) is None and read_record(drv.core.client, vol.name) is None
            assert drv.terminate_connection(vol, one) is False
            # an attachment Cinder forgot (a connection refreshed without detach)
            drv.initialize_connection(vol, one)
            vol.volume_attachment = objects.VolumeAttachmentList(objects=[])
            drv.remove_export(be.ctx, vol)  # before delete_volume
            assert tgt.find(iqn) is None and read_record(drv.core.client, vol.name) is None
            drv.delete_volume(vol)
        finally:
            be.close()
