"""Two cinder-volume services of one Cinder cluster on the same volumes
(issue 26, 2): ``[DEFAULT] cluster = aa`` in both, one sqlite database for
every process, each service with the driver on one embedded server and one
private tgtd (both on this host, so central exports work from either).

Every process is Cinder's own code, monkey-patched as Cinder runs it: two
cinder-volume services (cluster_service.py, built as ``cinder.cmd.volume``
builds them) and Cinder's API and scheduler (cluster_run.py), which drives
them as users and an operator would.  Their RPC goes through a broker of the
test's (bus.py; there is no RabbitMQ here), which hands a cluster's messages
to its services in turn, as RabbitMQ does.  As Cinder's A/A testing guide
asks, each service has its own ``lock_path`` and ``state_path``; the
``[coordination]`` backend, Cinder's DLM for its manager's locks, is a
file:// directory they share (all run on one host).  Leases last 3 s
(``sheepdog_lease_duration``) and a service counts as down 4 s after its
last heartbeat (``service_down_time``, heartbeats every second), so the
killed service's work is taken over within seconds.  Skips, saying why,
without Cinder, tgt or qemu-io with iSCSI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sheepdog_backend.testing.fixtures import EmbeddedServer
from tests.cinder.conftest import CINDER_MISSING, ROOT, iscsi_lines, write_cinder_conf
from tests.cinder.shared_db import share
from tests.iscsi_tools import qemu_io_path
from tests.realsheep import free_port
from tests.tgtd import TgtDaemon

pytestmark = pytest.mark.skipif(bool(CINDER_MISSING), reason=CINDER_MISSING or "-")

HERE = Path(__file__).parent
TIMEOUT = 300.0  # seconds for the whole run (the machine is shared)
CLUSTER = "aa"
# a dead service's lease is taken over within 3.5 s of the next holder's first look
LEASES = """sheepdog_lease_duration = 3
sheepdog_lease_renew_interval = 1
sheepdog_lease_wait = 60
"""
WARNING = f"serves cluster {CLUSTER}@sheepdog with central iSCSI exports"


def process_conf(tmp: Path, name: str, dlm: Path) -> Path:
    """What differs per process (its host, locks and state), and what every
    process of the cluster must agree on."""
    conf = tmp / f"{name}.conf"
    conf.write_text(f"""[DEFAULT]
host = {name}
cluster = {CLUSTER}
state_path = {tmp / name / 'state'}
report_interval = 1
service_down_time = 4
quota_volumes = 100
quota_snapshots = 100
[oslo_concurrency]
lock_path = {tmp / name / 'locks'}
[coordination]
backend_url = file://{dlm}
""")
    return conf


def start(args: list[str], log: Path, *, answer: bool = False) -> subprocess.Popen[str]:
    """A child whose output goes to ``log`` (``answer``: its stdout to us)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
    with log.open("w") as sink:
        return subprocess.Popen(args, cwd=ROOT, env=env, text=True,
                                stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE if answer else sink,
                                stderr=sink if answer else subprocess.STDOUT)


def tail(path: Path, n: int = 6000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory, synced_db: Path) -> Iterator[
        dict[str, Any]]:
    qemu_io_path()  # skips without qemu-io (iSCSI) and libiscsi-bin
    tmp = tmp_path_factory.mktemp("aa")
    server = EmbeddedServer(tmp / "sheep", ports=[free_port()])  # tgt: port <= 9999
    server.start()
    procs: list[subprocess.Popen[str]] = []
    logs = [tmp / "api.log", tmp / "host-a.log", tmp / "host-b.log"]
    try:
        with TgtDaemon(tmp / "tgtd") as tgtd:
            base = write_cinder_conf(tmp, server.gateways, iscsi_lines(tgtd) + LEASES)
            shutil.copyfile(synced_db, tmp / "cinder.sqlite")
            share(tmp / "cinder.sqlite")
            spec = {"services": 2, "gateways": server.gateways,
                    "tgt_control_port": tgtd.control_port,
                    "conf": [str(base), str(process_conf(tmp, "api", tmp / "dlm"))]}
            api = start([sys.executable, str(HERE / "cluster_run.py"), json.dumps(spec)],
                        logs[0], answer=True)
            procs.append(api)
            assert api.stdout is not None
            first = api.stdout.readline()
            assert first.startswith("PORT "), (first, tail(logs[0]))
            for name, log in zip(("host-a", "host-b"), logs[1:], strict=True):
                procs.append(start([sys.executable, str(HERE / "cluster_service.py"),
                                    first.split()[1], str(base),
                                    str(process_conf(tmp, name, tmp / "dlm"))], log))
            try:
                out, _ = api.communicate(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                out = ""
            lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
            assert api.returncode == 0 and lines, (out[-2000:], *map(tail, logs))
            (tmp / "result.json").write_text(lines[-1][len("RESULT "):])  # to read on failure
            found = json.loads(lines[-1][len("RESULT "):])
            found["warned"] = [WARNING in tail(log, 1 << 20) for log in logs[1:]]
            yield found
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
            if proc.stdout is not None:
                proc.stdout.close()
        server.stop()


def test_both_services_start_in_one_cluster(outcome: dict[str, Any]) -> None:
    assert outcome["hosts"] == ["host-a@sheepdog", "host-b@sheepdog"]
    assert outcome["ready"] == [True, True]  # Cinder accepted the driver in a cluster
    assert outcome["cluster"] == f"{CLUSTER}@sheepdog"
    # central iSCSI exports in a cluster: each service says what that means
    assert outcome["warned"] == [True, True]


def test_creates_spread_over_both(outcome: dict[str, Any]) -> None:
    assert outcome["creates"] == ["available"] * 5
    assert sorted(outcome["create_by"]) == ["host-a@sheepdog", "host-b@sheepdog"]


def test_one_volume_from_both_services(outcome: dict[str, Any]) -> None:
    both = outcome["both"]
    # four snapshots and two clones of one volume, handled by both services at once
    assert sorted(outcome["snapshot_by"]) == ["host-a@sheepdog", "host-b@sheepdog"]
    assert both["snapshots"] == ["available"] * 4
    assert both["clones"] == ["available"] * 2
    assert both["tags_on_cluster"] is True  # each findable by its tag, nothing else
    assert both["snapshot_bytes"] == [True] * 4
    assert both["clone_bytes"] == [True] * 2
    mix = both["mix"]
    assert mix == {"deleted_snapshots": ["deleted"] * 2, "deleted_clone": ["deleted"],
                   "reverted": ["available"], "from_snapshot": ["available"] * 2,
                   "extended": ["available"], "kept_snapshots": ["available"] * 2}
    assert both["reverted_bytes"] is True
    assert both["from_snapshot_bytes"] == [True, True]
    assert both["extended_size"] == [3, 3 << 30]
    # the deleted snapshots are gone, and the revert's backup snapshot too
    assert both["tags_after"] is True
    assert both["clone_gone"] is True


def test_attach_on_one_service_detach_on_the_other(outcome: dict[str, Any]) -> None:
    att = outcome["attach"]
    assert att["by"] == {"attachment_update": {"host-a@sheepdog": 1},
                         "attachment_delete": {"host-b@sheepdog": 1}}
    assert att["acl"] == ["iqn.1993-08.org.debian:01:compute-1"]
    assert "wrote 65536/65536" in att["guest"], att["guest"]
    assert att["bytes"] is True  # the guest's write is on the cluster
    assert (att["target_after"], att["record_after"]) == (False, False)
    assert (att["status"], att["attach_status"]) == ("available", "detached")


def test_killed_service_work_finished_by_the_other(outcome: dict[str, Any]) -> None:
    kill = outcome["kill"]
    # held mid-delete and mid-clone when killed: Cinder's rows say so
    assert kill["killed_at"] == ["deleting", "creating"]
    assert kill["workers"] == ["creating", "deleting"]
    # the operator's cleanup went to the cluster; the other service took it
    assert kill["cleaning"] == ["host-a@sheepdog"] and kill["unavailable"] == []
    assert kill["by"]["do_cleanup"] == {"host-b@sheepdog": 1}
    assert kill["cleaned"] == ["deleted", "error"]  # as Cinder's _do_cleanup decides
    assert kill["workers_after"] == 0
    assert kill["doomed_gone"] is True
    # the user deletes the failed clone; the source's next snapshot takes over
    # the dead service's lease and drops the temporary snapshot it left
    assert kill["after"] == ["deleted", "available"]
    assert kill["source_tags"] is True
    assert kill["source_bytes"] is True


def test_nothing_left_anywhere(outcome: dict[str, Any]) -> None:
    end = outcome["end"]
    assert end["deleted"] and set(end["deleted"]) == {"deleted"}
    assert end["snapshots"] == [] and end["workers"] == 0
    assert end["vdis"] == []  # no VDI, snapshot or temporary clone
    assert end["leases"] == []  # no lease held
    assert end["names"] == 10  # every volume's lease was looked at
