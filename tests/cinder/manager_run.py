"""Drive SheepdogCinderDriver through Cinder's own VolumeManager, as cinder-volume does.

Run as a program (tests/cinder/test_volume_manager.py starts it):
``python manager_run.py CINDER_CONF [--no-monkey-patch]``.  Like cinder-volume it
monkey-patches with eventlet first (Cinder's own ``monkey_patch.patch()``), then
reads the cinder.conf (sqlite database made by ``cinder-manage db sync``,
``fake://`` transport), builds the VolumeManager for backend ``sheepdog``, runs
``init_host`` and takes volumes through create, snapshot, clone from snapshot
and from volume, extend, revert, a delete refused while snapshots exist, and
deletes.  It prints one JSON object: what the database and the storage said
after each step.  The test asserts on it.
"""

from __future__ import annotations

import sys

if "--no-monkey-patch" not in sys.argv:
    from cinder import monkey_patch

    monkey_patch.patch()

import json
from typing import Any

from cinder import context, objects
from cinder import rpc as cinder_rpc
from cinder.common import config  # noqa: F401
from oslo_config import cfg

CONF = cfg.CONF
BACKEND = "sheepdog"
HOST = f"testhost@{BACKEND}"
GiB = 1 << 30


def main(conf_file: str) -> dict[str, Any]:
    CONF(["--config-file", conf_file], project="cinder")
    objects.register_all()
    cinder_rpc.init(CONF)
    from cinder import coordination
    from cinder.volume import manager

    coordination.COORDINATOR.start()  # file:// locks under state_path, as cinder-volume

    out: dict[str, Any] = {"monkey_patched": _patched()}
    mgr = manager.VolumeManager(service_name=BACKEND, host=HOST)
    mgr.init_host(service_id=None)
    drv = mgr.driver
    out["driver"] = type(drv).__module__ + "." + type(drv).__name__
    out["initialized"] = bool(drv.initialized)
    out["stats"] = {k: mgr.last_capabilities.get(k) if mgr.last_capabilities else None
                    for k in ("volume_backend_name", "storage_protocol", "driver_version")}
    core = drv.core
    data = core.data_access()

    ctx = context.RequestContext(user_id="u-sheepdog", project_id="p-sheepdog",
                                 is_admin=True)
    vtype = objects.VolumeType.get_by_name_or_id(ctx, "__DEFAULT__")

    def new_volume(size: int, **kw: Any) -> Any:
        vol = objects.Volume(ctx, size=size, host=f"{HOST}#{BACKEND}",
                             status="creating", attach_status="detached",
                             volume_type_id=vtype.id, user_id=ctx.user_id,
                             project_id=ctx.project_id, availability_zone="nova", **kw)
        vol.create()
        return vol

    def state(vol: Any) -> dict[str, Any]:
        vol = objects.Volume.get_by_id(context.get_admin_context(read_deleted="yes"), vol.id)
        from sheepdog_backend.driver.base import Volume

        name = vol.provider_location or vol.name
        exists = data.exists(Volume(id=vol.id, size=max(1, vol.size), name=name))
        return {"status": vol.status, "size": vol.size, "deleted": bool(vol.deleted),
                "provider_location": vol.provider_location, "vdi_exists": exists}

    def read(vol: Any, length: int) -> str:
        from sheepdog_backend.driver.base import Volume

        return bytes(data.read(Volume(id=vol.id, size=vol.size, name=vol.provider_location),
                               0, length)).decode()

    def write(vol: Any, text: str) -> None:
        from sheepdog_backend.driver.base import Volume

        data.write(Volume(id=vol.id, size=vol.size, name=vol.provider_location), 0,
                   text.encode())

    steps: dict[str, Any] = {}
    vol = new_volume(1)
    mgr.create_volume(ctx, vol)
    vol.refresh()
    steps["create"] = state(vol)
    write(vol, "first")

    snap = objects.Snapshot(ctx, volume_id=vol.id, cgsnapshot_id=None,
                            status="creating", progress="0%", volume_size=vol.size,
                            user_id=ctx.user_id, project_id=ctx.project_id)
    snap.create()
    mgr.create_snapshot(ctx, snap)
    snap.refresh()
    steps["snapshot"] = {"status": snap.status, "provider_location": snap.provider_location}
    write(vol, "later")

    from_snap = new_volume(2, snapshot_id=snap.id)
    mgr.create_volume(ctx, from_snap)
    from_snap.refresh()
    steps["from_snapshot"] = dict(state(from_snap), data=read(from_snap, 5))

    from_vol = new_volume(1, source_volid=vol.id)
    mgr.create_volume(ctx, from_vol)
    from_vol.refresh()
    steps["from_volume"] = dict(state(from_vol), data=read(from_vol, 5))

    vol.status = "extending"
    vol.save()
    mgr.extend_volume(ctx, vol, 3, reservations=[])
    vol.refresh()
    steps["extend"] = dict(state(vol), size_bytes=data.size_bytes(
        __import__("sheepdog_backend.driver.base", fromlist=["Volume"]).Volume(
            id=vol.id, size=vol.size, name=vol.provider_location)))

    vol.status = "reverting"
    vol.save()
    snap.status = "restoring"
    snap.save()
    mgr.revert_to_snapshot(ctx, vol, snap)
    vol.refresh()
    steps["revert"] = dict(state(vol), data=read(vol, 5))

    vol.status = "deleting"
    vol.save()
    mgr.delete_volume(ctx, vol)  # refused: it still has a snapshot
    vol.refresh()
    steps["delete_busy"] = state(vol)

    snap.refresh()
    snap.status = "deleting"
    snap.save()
    mgr.delete_snapshot(ctx, snap)
    steps["delete_snapshot"] = {"status": objects.Snapshot.get_by_id(
        context.get_admin_context(read_deleted="yes"), snap.id).status}
    for key, v in (("delete", vol), ("delete_from_snapshot", from_snap),
                   ("delete_from_volume", from_vol)):
        v.refresh()
        v.status = "deleting"
        v.save()
        mgr.delete_volume(ctx, v)
        steps[key] = state(v)
    out["steps"] = steps
    out["left"] = [v["name"] for v in core.list_volumes()]
    drv.close()
    coordination.COORDINATOR.stop()
    return out


def _patched() -> bool:
    import socket

    import eventlet.patcher

    return bool(eventlet.patcher.is_monkey_patched("socket")) and "green" in \
        socket.socket.__module__


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1])))
