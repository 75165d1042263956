"""Nova's attachment flows through Cinder's own API and VolumeManager over iSCSI.

Run as a program (tests/cinder/test_attachments.py starts it):
``python attach_run.py CINDER_CONF TGT_CONTROL_PORT``.  Like cinder-volume it
monkey-patches with eventlet first, builds the VolumeManager for backend
``sheepdog`` (``sheepdog_attach_protocol = iscsi``) and runs ``init_host``.
Cinder's API (``cinder.volume.api.API``) makes, completes and deletes the
attachments as Nova asks it to; its RPC calls to the volume service go straight
to the manager in this process (what the ``fake://`` transport cannot carry),
with a context holding a service token as Nova's.  QEMU 7.2's qemu-io is the
guest on each compute host (its own initiator name); a guest that stays
connected is a ``QemuSession``.  Scenarios:

* live migration: compute-1 attached and writing; compute-2 attached for the
  same instance (``attachment_create`` with its connector, as Nova's
  pre-live-migration does) and connected; the source writes the first 64 KiB
  of unallocated objects, the destination the last 64 KiB of the same ones;
  the source's attachment is deleted; the destination still reads and logs in
  anew.  Then back to compute-1 and rolled back (the new destination's
  attachment deleted first), then the last attachment;
* multiattach: a volume type with ``multiattach="<is> True"``, three instances
  (two on compute-1, one on compute-2) writing disjoint blocks, detached in
  one order, then two more detached in the other;
* a second instance on a volume whose type does not allow multiattach.

It prints one JSON object: what each step saw (qemu-io output, target, ACL,
record, bytes on the cluster).  The test asserts on it.
"""

from __future__ import annotations

import sys

if "--no-monkey-patch" not in sys.argv:
    from cinder import monkey_patch

    monkey_patch.patch()

import json
import uuid
from typing import Any

from cinder import context, objects
from cinder import rpc as cinder_rpc
from cinder.common import config  # noqa: F401
from oslo_config import cfg

CONF = cfg.CONF
BACKEND = "sheepdog"
HOST = f"testhost@{BACKEND}"
IQN = "iqn.1993-08.org.debian:01:compute-%d"
MiB, OBJ, BLOCK = 1 << 20, 4 << 20, 64 << 10


class LocalVolumeRPC:
    """The volume service's RPC calls the API makes, answered by the manager."""

    def __init__(self, manager: Any) -> None:
        self.manager = manager

    def attachment_update(self, ctxt: Any, vref: Any, connector: dict[str, Any],
                          attachment_id: str) -> dict[str, Any]:
        return dict(self.manager.attachment_update(ctxt, vref, connector, attachment_id))

    def attachment_delete(self, ctxt: Any, attachment_id: str, vref: Any) -> None:
        self.manager.attachment_delete(ctxt, attachment_id, vref)


def connector(n: int) -> dict[str, Any]:
    """os-brick's connector properties of compute host ``n``."""
    return {"host": f"compute-{n}", "ip": "127.0.0.1", "initiator": IQN % n,
            "multipath": False, "platform": "x86_64", "os_type": "linux"}


def write(off: int, pattern: int) -> str:
    return f"write -P {pattern} {off} {BLOCK}"


def check(off: int, pattern: int) -> str:
    return f"read -P {pattern} {off} {BLOCK}"


def main(conf_file: str, control_port: int) -> dict[str, Any]:
    CONF(["--config-file", conf_file], project="cinder")
    objects.register_all()
    cinder_rpc.init(CONF)
    from cinder import coordination, exception
    from cinder.volume import api as volume_api
    from cinder.volume import manager, volume_types, volume_utils

    from sheepdog_backend.driver.base import Volume
    from sheepdog_backend.export import Tgtadm, TgtTargets
    from sheepdog_backend.export.manager import read_record
    from tests.iscsi_tools import QemuSession, libiscsi, qemu_io, url

    coordination.COORDINATOR.start()
    mgr = manager.VolumeManager(service_name=BACKEND, host=HOST)
    mgr.init_host(service_id=None)
    api = volume_api.API()
    api.volume_rpcapi = LocalVolumeRPC(mgr)
    drv = mgr.driver
    core = drv.core
    tgt = TgtTargets(Tgtadm(control_port=control_port))
    ctx = context.RequestContext(user_id="u-sheepdog", project_id="p-sheepdog",
                                 is_admin=True, service_roles=["service"])
    out: dict[str, Any] = {"stats": {k: (mgr.last_capabilities or {}).get(k)
                                     for k in ("storage_protocol", "multiattach")}}
    sessions: list[QemuSession] = []

    def volume_type(name: str, specs: dict[str, str]) -> Any:
        volume_types.create(ctx, name, specs)
        return objects.VolumeType.get_by_name_or_id(ctx, name)

    def new_volume(vtype: Any) -> Any:
        vol = objects.Volume(ctx, size=1, host=f"{HOST}#{BACKEND}", status="creating",
                             attach_status="detached", volume_type_id=vtype.id,
                             user_id=ctx.user_id, project_id=ctx.project_id,
                             availability_zone="nova",
                             # what Cinder's create flow derives from the type
                             multiattach=volume_utils.is_multiattach_spec(vtype.extra_specs))
        vol.create()
        mgr.create_volume(ctx, vol)
        vol.refresh()
        return vol

    def attach(vol: Any, instance: str, host: int) -> tuple[Any, dict[str, Any]]:
        """Nova: attachment_create with the host's connector, then os-complete
        (what Cinder's REST controller does for it)."""
        vol.refresh()
        att = api.attachment_create(ctx, vol, instance, connector(host))
        att.update({"attach_status": "attached"})
        att.save()
        vol.refresh()
        vol.update({"status": "in-use", "attach_status": "attached"})
        vol.save()
        data = dict(att.connection_info)
        return att, {"driver_volume_type": data.pop("driver_volume_type"), "data": data}

    def detach(vol: Any, att: Any) -> None:
        api.attachment_delete(ctx, objects.VolumeAttachment.get_by_id(ctx, att.id))
        vol.refresh()

    def state(vol: Any, info: dict[str, Any]) -> dict[str, Any]:
        """The target, its ACL and the record as tgtd and the cluster hold them."""
        target = tgt.find(info["data"]["target_iqn"])
        rec = read_record(core.client, vol.provider_location)
        return {"target": target is not None,
                "acl": sorted(target.acls) if target else [],
                "record": rec is not None, "status": vol.status,
                "attachments": len(vol.volume_attachment)}

    def login(info: dict[str, Any], host: int) -> dict[str, Any]:
        proc = libiscsi("iscsi-inq", url(info), "-i", IQN % host)
        return {"rc": proc.returncode, "err": proc.stderr[-300:]}

    def guest(info: dict[str, Any], host: int, *commands: str) -> str:
        proc = qemu_io(info, *commands, initiator=IQN % host)
        return proc.stdout[-20000:] + proc.stderr[-2000:] + f" rc={proc.returncode}"

    def connected(info: dict[str, Any], host: int) -> QemuSession:
        session = QemuSession(info, initiator=IQN % host)
        sessions.append(session)
        return session

    def on_cluster(vol: Any, offsets: dict[int, int]) -> dict[str, bool]:
        data = core.data_access()
        core_vol = Volume(id=vol.id, size=vol.size, name=vol.provider_location)
        return {str(off): bytes(data.read(core_vol, off, BLOCK)) == bytes([p]) * BLOCK
                for off, p in offsets.items()}

    try:
        default = objects.VolumeType.get_by_name_or_id(ctx, "__DEFAULT__")
        out["migration"] = migration(new_volume(default), attach, detach, state, login,
                                     guest, connected, on_cluster)
        shared = volume_type("shared", {"multiattach": "<is> True"})
        out["multiattach"] = multiattach(new_volume(shared), attach, detach, state, login,
                                         guest, on_cluster)
        single = new_volume(default)
        att, info = attach(single, str(uuid.uuid4()), 1)
        try:
            attach(single, str(uuid.uuid4()), 2)
            out["refused"] = None
        except exception.InvalidVolume as exc:
            out["refused"] = type(exc).__name__
        single.refresh()
        out["refused_state"] = state(single, info)
        detach(single, att)
        out["refused_after"] = state(single, info)
    finally:
        for session in sessions:
            session.close()
        drv.close()
        coordination.COORDINATOR.stop()
    return out


def migration(vol: Any, attach: Any, detach: Any, state: Any, login: Any, guest: Any,
              connected: Any, on_cluster: Any) -> dict[str, Any]:
    """Live migration compute-1 -> compute-2, then back and rolled back."""
    steps: dict[str, Any] = {}
    instance = str(uuid.uuid4())
    src, src_info = attach(vol, instance, 1)
    steps["source_write"] = guest(src_info, 1, write(0, 0x10))
    dst, dst_info = attach(vol, instance, 2)  # pre_live_migration on compute-2
    steps["same_target"] = dst_info["data"]["target_iqn"] == src_info["data"]["target_iqn"]
    dest = connected(dst_info, 2)  # the destination QEMU opens the disk
    steps["dest_open"] = dest.run(check(0, 0x10))
    steps["both_attached"] = state(vol, src_info)
    # the source keeps running: it allocates objects 1..8 after the destination opened
    steps["source_writes"] = guest(src_info, 1, *(write(i * OBJ, 0x20 + i)
                                                  for i in range(1, 9)))
    # the destination writes the same (now allocated) objects through its session
    steps["dest_writes"] = dest.run(*(write(i * OBJ + OBJ - BLOCK, 0x40 + i)
                                      for i in range(1, 9)))
    detach(vol, src)  # post_live_migration: the source's attachment goes
    steps["after_source_delete"] = state(vol, dst_info)
    every = [check(0, 0x10)] + [check(i * OBJ, 0x20 + i) for i in range(1, 9)] + [
        check(i * OBJ + OBJ - BLOCK, 0x40 + i) for i in range(1, 9)]
    steps["dest_session_reads"] = dest.run(*every)
    steps["dest_login_reads"] = guest(dst_info, 2, *every)
    steps["source_login"] = login(src_info, 1)
    dest.close()
    # back to compute-1, rolled back: the new destination's attachment goes first
    back, back_info = attach(vol, instance, 1)
    steps["back_writes"] = guest(back_info, 1, *(write(i * OBJ, 0x60 + i)
                                                 for i in range(9, 13)))
    steps["stay_writes"] = guest(dst_info, 2, *(write(i * OBJ + OBJ - BLOCK, 0x70 + i)
                                                for i in range(9, 13)))
    detach(vol, back)
    steps["after_rollback"] = state(vol, dst_info)
    every += [check(i * OBJ, 0x60 + i) for i in range(9, 13)] + [
        check(i * OBJ + OBJ - BLOCK, 0x70 + i) for i in range(9, 13)]
    steps["stay_reads"] = guest(dst_info, 2, *every)
    steps["back_login"] = login(back_info, 1)
    detach(vol, dst)
    steps["after_last"] = state(vol, dst_info)
    steps["last_login"] = login(dst_info, 2)
    offsets = {0: 0x10, **{i * OBJ: 0x20 + i for i in range(1, 9)},
               **{i * OBJ + OBJ - BLOCK: 0x40 + i for i in range(1, 9)},
               **{i * OBJ: 0x60 + i for i in range(9, 13)},
               **{i * OBJ + OBJ - BLOCK: 0x70 + i for i in range(9, 13)}}
    steps["on_cluster"] = on_cluster(vol, offsets)
    return steps


def multiattach(vol: Any, attach: Any, detach: Any, state: Any, login: Any, guest: Any,
                on_cluster: Any) -> dict[str, Any]:
    """Instances x and z on compute-1, y on compute-2; detached x, y, z; then
    two more (compute-1, compute-2) detached compute-2 first."""
    steps: dict[str, Any] = {"multiattach": bool(vol.multiattach)}
    x, xi = attach(vol, str(uuid.uuid4()), 1)
    y, yi = attach(vol, str(uuid.uuid4()), 2)
    z, zi = attach(vol, str(uuid.uuid4()), 1)
    steps["writes"] = [guest(xi, 1, write(0, 0x31)), guest(yi, 2, write(BLOCK, 0x32)),
                       guest(zi, 1, write(2 * BLOCK, 0x33))]
    steps["three"] = state(vol, xi)
    detach(vol, x)  # compute-1 still has z
    steps["after_x"] = state(vol, zi)
    steps["z_reads"] = guest(zi, 1, check(0, 0x31), check(BLOCK, 0x32), check(2 * BLOCK, 0x33))
    detach(vol, y)  # compute-2 has nothing left
    steps["after_y"] = state(vol, zi)
    steps["y_login"] = login(yi, 2)
    steps["z_login"] = login(zi, 1)
    detach(vol, z)
    steps["after_z"] = state(vol, zi)
    v, vi = attach(vol, str(uuid.uuid4()), 1)
    w, wi = attach(vol, str(uuid.uuid4()), 2)
    steps["more_writes"] = [guest(vi, 1, write(3 * BLOCK, 0x34)),
                            guest(wi, 2, write(4 * BLOCK, 0x35))]
    detach(vol, w)
    steps["after_w"] = state(vol, vi)
    steps["v_reads"] = guest(vi, 1, *(check(i * BLOCK, 0x31 + i) for i in range(5)))
    detach(vol, v)
    steps["after_v"] = state(vol, vi)
    steps["on_cluster"] = on_cluster(vol, {i * BLOCK: 0x31 + i for i in range(5)})
    return steps


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1], int(sys.argv[2]))))
