"""Cinder's API and scheduler, and the broker, for the cinder-volume services
of one cluster (tests/cinder/test_active_active.py).

Run as a program: ``python cluster_run.py SPEC`` (JSON: ``services``, the
number of services to wait for; ``gateways``; ``tgt_control_port``; ``conf``,
the config files).  Monkey-patched like cinder-api and cinder-scheduler, it
prints ``PORT n`` (the broker's, bus.py); the test then starts the
cinder-volume services (cluster_service.py), which connect to it.  Once they
are up and the scheduler has their capabilities it acts as users and an
operator would: through Cinder's API (``cinder.volume.api.API``: create,
snapshot, clone, extend, revert, delete, attachments) and, for a dead
service's work, the scheduler's ``work_cleanup`` (what ``cinder
work-cleanup`` asks for).  It polls the database for statuses as a client
polls the API, writes and reads bytes on the cluster through the driver's
data access (a guest's side), and over iSCSI with qemu-io.  Phases:

* ``both``: both services at once on one volume - four snapshots and two
  clones of it; then a revert to its latest snapshot, two volumes from its
  first, two snapshot deletions, a clone's deletion and another volume's
  extend;
* ``attach``: attached through one service, detached through the other;
* ``kill``: one service held mid-delete and mid-clone (a test hook in it,
  cluster_service.py), then killed (SIGKILL); the operator's cleanup has the
  other finish the delete and fail the create, and the user's next requests
  finish what was left (the dead service's leases taken over);
* ``end``: every volume deleted with its snapshots.

It prints one JSON object (``RESULT ...``); the test asserts on it.
"""

from __future__ import annotations

import sys

from cinder import monkey_patch

monkey_patch.patch()

import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

from cinder import context, objects  # noqa: E402
from cinder import rpc as cinder_rpc  # noqa: E402
from cinder.common import config  # noqa: E402,F401
from oslo_config import cfg  # noqa: E402

from tests.cinder.bus import Broker, install  # noqa: E402
from tests.cinder.shared_db import begin_immediate  # noqa: E402

CONF = cfg.CONF
BACKEND = "sheepdog"
GiB, BLOCK = 1 << 30, 64 << 10
RESTING = {"available", "in-use", "error", "deleted", "error_deleting", "error_extending",
           "error_restoring"}
CLIENT = "sheepdog_backend.client.client:SheepdogClient."
IQN = "iqn.1993-08.org.debian:01:compute-1"


def pattern(seed: int) -> bytes:
    return bytes((seed * 31 + i) % 251 for i in range(BLOCK))


class Cloud:
    """The API, the scheduler and the broker, with a user and an operator."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from cinder import coordination
        from cinder.scheduler import manager as scheduler_manager
        from cinder.volume import api as volume_api

        from sheepdog_backend.driver.base import BackendConfiguration
        from sheepdog_backend.driver.sheepdog import SheepdogDriver

        self.broker = Broker()
        install(self.broker.post)
        coordination.COORDINATOR.start()
        self.broker.scheduler = scheduler_manager.SchedulerManager()
        self.api = volume_api.API()
        self.ctx = context.RequestContext(user_id="u-aa", project_id="p-aa", is_admin=True,
                                          service_roles=["service"])
        self.vtype = objects.VolumeType.get_by_name_or_id(self.ctx, "__DEFAULT__")
        # the guest's view of the bytes, and the observer of what is left
        self.store = SheepdogDriver(BackendConfiguration(
            {"sheepdog_gateways": spec["gateways"], "sheepdog_lease_reuse": 0.0}),
            backend_name="observer")
        self.names: set[str] = set()  # every VDI name Cinder used

    # -- waiting, as a client polls the API --------------------------------

    @staticmethod
    def settle(get: Callable[[str], Any], ids: list[str], timeout: float = 120.0
               ) -> list[str]:
        """The statuses of ``ids`` once none is in a transition."""
        deadline = time.monotonic() + timeout
        while True:
            found = [get(i).status for i in ids]
            if all(s in RESTING for s in found) or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    @staticmethod
    def volume(vid: str) -> Any:
        return objects.Volume.get_by_id(context.get_admin_context(read_deleted="yes"), vid)

    @staticmethod
    def snapshot(sid: str) -> Any:
        return objects.Snapshot.get_by_id(context.get_admin_context(read_deleted="yes"), sid)

    def volumes(self, vols: list[Any]) -> list[str]:
        out = self.settle(self.volume, [v.id for v in vols])
        for v in vols:
            found = self.volume(v.id)
            self.names.add(found.provider_location or found.name)
        return out

    def snapshots(self, snaps: list[Any]) -> list[str]:
        return self.settle(self.snapshot, [s.id for s in snaps])

    @staticmethod
    def workers(timeout: float = 30.0) -> int:
        """The workers table's rows once it is empty (a service removes a
        row just after the status it set), or at the deadline."""
        from cinder.db import api as db

        deadline = time.monotonic() + timeout
        while (rows := len(db.worker_get_all(context.get_admin_context()))) and \
                time.monotonic() < deadline:
            time.sleep(0.1)
        return rows

    # -- the user's requests -----------------------------------------------

    def create(self, size: int = 1, **source: Any) -> Any:
        return self.api.create(self.ctx, size, f"v-{uuid.uuid4().hex[:6]}", "",
                               volume_type=self.vtype, **source)

    def snap(self, vol: Any) -> Any:
        return self.api.create_snapshot(self.ctx, self.volume(vol.id), "s", "")

    # -- the storage ---------------------------------------------------------

    def core(self, vol: Any) -> Any:
        from sheepdog_backend.driver.base import Volume

        vol = self.volume(vol.id)
        return Volume(id=vol.id, size=vol.size, name=vol.provider_location)

    def write(self, vol: Any, seed: int, offsets: tuple[int, ...] = (0, 5 << 20)) -> None:
        for off in offsets:
            self.store.data_access().write(self.core(vol), off, pattern(seed + off))

    def holds(self, vol: Any, seed: int, tag: str = "",
              offsets: tuple[int, ...] = (0, 5 << 20)) -> bool:
        """True when ``vol`` (its snapshot ``tag``) reads what ``write(seed)`` wrote."""
        name = self.volume(vol.id).provider_location
        return all(self.store.client.read(name, off, BLOCK, tag=tag) == pattern(seed + off)
                   for off in offsets)

    def tags(self, vol: Any) -> list[str]:
        """The tags of ``vol``'s snapshots on the cluster ("" for an untagged one)."""
        return sorted(s["tag"] for s in self.store.list_snapshots(self.core(vol)))

    def size(self, vol: Any) -> int:
        return int(self.store.data_access().size_bytes(self.core(vol)))


def both(cloud: Cloud, vols: list[Any]) -> dict[str, Any]:
    """Both services on one volume at once, then a mix of everything."""
    v0, v1 = vols[0], vols[1]
    cloud.write(v0, 1)
    snaps = [cloud.snap(v0) for _ in range(4)]
    clones = [cloud.create(source_volume=cloud.volume(v0.id)) for _ in range(2)]
    out: dict[str, Any] = {"snapshots": cloud.snapshots(snaps), "clones": cloud.volumes(clones)}
    locations = sorted(cloud.snapshot(s.id).provider_location for s in snaps)
    out["tags_on_cluster"] = cloud.tags(v0) == locations  # no temporary or untagged one
    out["snapshot_bytes"] = [cloud.holds(v0, 1, tag) for tag in locations]
    out["clone_bytes"] = [cloud.holds(c, 1) for c in clones]

    cloud.write(v0, 2)
    first = min(snaps, key=lambda s: cloud.snapshot(s.id).created_at)
    latest = cloud.volume(v0.id).get_latest_snapshot()  # what the REST API reverts to
    gone = [s for s in snaps if s.id not in (first.id, latest.id)]
    for s in gone:
        cloud.api.delete_snapshot(cloud.ctx, cloud.snapshot(s.id))
    cloud.api.delete(cloud.ctx, cloud.volume(clones[0].id))
    cloud.api.revert_to_snapshot(cloud.ctx, cloud.volume(v0.id), cloud.snapshot(latest.id))
    made = [cloud.create(2, snapshot=cloud.snapshot(first.id)) for _ in range(2)]
    cloud.api.extend(cloud.ctx, cloud.volume(v1.id), 3)
    out["mix"] = {"deleted_snapshots": cloud.snapshots(gone),
                  "deleted_clone": cloud.volumes(clones[:1]),
                  "reverted": cloud.volumes([v0]), "from_snapshot": cloud.volumes(made),
                  "extended": cloud.volumes([v1]), "kept_snapshots": cloud.snapshots(
                      [first, latest])}
    out["reverted_bytes"] = cloud.holds(v0, 1)
    out["from_snapshot_bytes"] = [cloud.holds(m, 1) and cloud.size(m) == 2 * GiB for m in made]
    out["extended_size"] = (cloud.volume(v1.id).size, cloud.size(v1))
    out["tags_after"] = cloud.tags(v0) == sorted(
        cloud.snapshot(s.id).provider_location for s in (first, latest))
    out["clone_gone"] = cloud.store.client.find_vdi(
        cloud.volume(clones[0].id).provider_location) is None
    return out


def attach(cloud: Cloud, vol: Any, hosts: list[str], control_port: int) -> dict[str, Any]:
    """Attached through hosts[0], written by a guest, detached through hosts[1]."""
    from sheepdog_backend.export import Tgtadm, TgtTargets
    from sheepdog_backend.export.manager import read_record
    from tests.iscsi_tools import qemu_io

    tgt = TgtTargets(Tgtadm(control_port=control_port))
    connector = {"host": "compute-1", "ip": "127.0.0.1", "initiator": IQN,
                 "multipath": False, "platform": "x86_64", "os_type": "linux"}
    cloud.broker.pin(hosts[0])
    att = cloud.api.attachment_create(cloud.ctx, cloud.volume(vol.id), str(uuid.uuid4()),
                                      connector)
    att.update({"attach_status": "attached"})  # os-complete, as the REST API does it
    att.save()
    cinder_vol = cloud.volume(vol.id)
    cinder_vol.update({"status": "in-use", "attach_status": "attached"})
    cinder_vol.save()
    data = dict(att.connection_info)
    info = {"driver_volume_type": data.pop("driver_volume_type"), "data": data}
    target = tgt.find(data["target_iqn"])
    out: dict[str, Any] = {"acl": sorted(target.acls) if target else None}
    guest = qemu_io(info, f"write -P 0x5a 0 {BLOCK}", initiator=IQN)
    out["guest"] = guest.stdout[-500:] + guest.stderr[-500:]
    cloud.broker.pin(hosts[1])
    cloud.api.attachment_delete(cloud.ctx, objects.VolumeAttachment.get_by_id(cloud.ctx,
                                                                              att.id))
    cloud.broker.pin(None)
    after = cloud.volume(vol.id)
    name = after.provider_location
    out.update(status=after.status, attach_status=after.attach_status,
               target_after=tgt.find(data["target_iqn"]) is not None,
               record_after=read_record(cloud.store.client, name) is not None,
               bytes=bytes(cloud.store.client.read(name, 0, BLOCK)) == b"\x5a" * BLOCK,
               by={m: cloud.broker.routed.get(m, {}) for m in ("attachment_update",
                                                              "attachment_delete")})
    return out


def kill(cloud: Cloud, doomed: Any, source: Any, victim: str, cluster: str) -> dict[str, Any]:
    """``victim`` held mid-delete of ``doomed`` and mid-clone of ``source``,
    killed; the operator's cleanup, then the user's requests."""
    from cinder.db import api as db
    from cinder.scheduler import rpcapi as scheduler_rpcapi
    from oslo_utils import timeutils

    broker = cloud.broker
    pid = broker.services[victim]["pid"]
    cloud.write(source, 3)
    broker.pin(victim)
    for step in ("delete_vdi", "clone_vdi"):
        broker.command(victim, "hold", target=CLIENT + step)
    cloud.api.delete(cloud.ctx, cloud.volume(doomed.id))
    broker.wait_event("held", host=victim, what=CLIENT + "delete_vdi")
    clone = cloud.create(source_volume=cloud.volume(source.id))
    broker.wait_event("held", host=victim, what=CLIENT + "clone_vdi")
    os.kill(pid, signal.SIGKILL)
    broker.pin(None)
    broker.wait_event("gone", host=victim)
    admin = context.get_admin_context()
    out: dict[str, Any] = {"killed_at": [cloud.volume(doomed.id).status,
                                         cloud.volume(clone.id).status],
                           "workers": sorted(w.status for w in db.worker_get_all(admin))}
    start = time.monotonic()  # down service_down_time after its last heartbeat
    while objects.Service.get_by_args(admin, victim, "cinder-volume").is_up and \
            time.monotonic() < start + 60:
        time.sleep(0.2)
    out["seen_down_after"] = round(time.monotonic() - start, 1)
    # the operator: cinder work-cleanup --cluster-name CLUSTER (the REST body)
    request = objects.CleanupRequest(cluster_name=cluster, until=timeutils.utcnow())
    cleaning, unavailable = scheduler_rpcapi.SchedulerAPI().work_cleanup(admin, request)
    out["cleaning"] = sorted(s.host for s in cleaning)
    out["unavailable"] = sorted(s.host for s in unavailable)
    out["cleaned"] = [cloud.volumes([doomed])[0], cloud.volumes([clone])[0]]
    out["workers_after"] = cloud.workers()
    out["doomed_gone"] = cloud.store.client.find_vdi(
        cloud.volume(doomed.id).provider_location) is None
    # the user: deletes the volume that failed, snapshots the clone's source
    cloud.api.delete(cloud.ctx, cloud.volume(clone.id))
    snap = cloud.snap(source)
    out["after"] = [cloud.volumes([clone])[0], cloud.snapshots([snap])[0]]
    out["source_tags"] = cloud.tags(source) == [cloud.snapshot(snap.id).provider_location]
    out["source_bytes"] = cloud.holds(source, 3)
    out["by"] = {m: broker.routed.get(m, {}) for m in ("do_cleanup", "delete_volume")}
    return out


def end(cloud: Cloud, vols: list[Any]) -> dict[str, Any]:
    """Every volume deleted with its snapshots; what is left anywhere."""
    from tests.lease_worker import held_leases

    admin = context.get_admin_context()
    left = objects.VolumeList.get_all(admin)
    for vol in left:
        cloud.api.delete(cloud.ctx, vol, cascade=True)
    out: dict[str, Any] = {"deleted": cloud.volumes(list(left)),
                           "snapshots": [s.status for s in objects.SnapshotList.get_all(admin, {})],
                           "workers": cloud.workers()}
    anchor = cloud.store.core.lease_anchor()
    out["vdis"] = [(v.name, v.tag) for v in cloud.store.client.list_vdis()
                   if v.name != anchor]
    deadline = time.monotonic() + 10  # a kept lease goes within sheepdog_lease_reuse
    while (held := held_leases(cloud.store, *sorted(cloud.names))) and \
            time.monotonic() < deadline:
        time.sleep(0.2)
    out["leases"] = held
    out["names"] = len(cloud.names)
    return out


def main(spec: dict[str, Any]) -> dict[str, Any]:
    objects.register_all()
    begin_immediate()
    CONF([arg for f in spec["conf"] for arg in ("--config-file", f)], project="cinder")
    cinder_rpc.init(CONF)
    cloud = Cloud(spec)
    broker = cloud.broker
    print(f"PORT {broker.port}", flush=True)
    broker.accept(spec["services"])
    hosts = sorted(broker.services)
    ready = [broker.wait_event("ready", host=h)["initialized"] for h in hosts]
    broker.scheduler.init_host_with_rpc()  # the volume services' capabilities are in
    cluster = broker.services[hosts[0]]["cluster"]
    out: dict[str, Any] = {"hosts": hosts, "ready": ready, "cluster": cluster}
    seconds = out["seconds"] = {}
    try:
        start = time.monotonic()
        vols = [cloud.create() for _ in range(5)]
        out["creates"] = cloud.volumes(vols)
        out["create_by"] = broker.routed.get("create_volume", {})
        out["both"] = both(cloud, vols)
        out["snapshot_by"] = broker.routed.get("create_snapshot", {})
        seconds["both"] = round(time.monotonic() - start, 1)
        out["attach"] = attach(cloud, vols[4], hosts, int(spec["tgt_control_port"]))
        seconds["attach"] = round(time.monotonic() - start - seconds["both"], 1)
        out["kill"] = kill(cloud, vols[2], vols[3], hosts[0], cluster)
        seconds["kill"] = round(time.monotonic() - start - sum(seconds.values()), 1)
        out["end"] = end(cloud, vols)
        seconds["end"] = round(time.monotonic() - start - sum(seconds.values()), 1)
    finally:
        cloud.store.close()
        from cinder import coordination
        coordination.COORDINATOR.stop()
    return out


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(json.loads(sys.argv[1]))), flush=True)
