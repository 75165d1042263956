"""One cinder-volume service of a cluster, as cinder-volume runs it, for
tests/cinder/test_active_active.py.

Run as a program: ``python cluster_service.py BUS_PORT CINDER_CONF...``.  Like
cinder-volume it monkey-patches with eventlet first, reads its config files
(the cluster's cinder.conf, then this service's own: ``host``, ``lock_path``,
``state_path``), and builds and starts the service of backend ``sheepdog``
exactly as ``cinder.cmd.volume`` does (``Service.create(..., coordination=True,
cluster=...)``, then ``start``: init_host with the cleanup of its own
unfinished work, the heartbeat every ``report_interval``).  Its RPC goes
through the test's broker (bus.py), to which it connects first.  Besides
Cinder's RPC it answers one test command, ``hold``: the next call of a
function (``module:Class.method``) in this process tells the broker and
blocks for good, so the test can kill the process there, mid-operation.
"""

from __future__ import annotations

import sys

from cinder import monkey_patch

monkey_patch.patch()

import os  # noqa: E402
import threading  # noqa: E402

from cinder import objects  # noqa: E402
from cinder.cmd import volume as volume_cmd  # noqa: E402,F401  (registers [DEFAULT] cluster)
from cinder.common import config  # noqa: E402,F401
from oslo_config import cfg  # noqa: E402
from oslo_log import log as logging  # noqa: E402

from tests.cinder.bus import ServiceLink, install  # noqa: E402
from tests.cinder.shared_db import begin_immediate  # noqa: E402
from tests.lease_worker import before_first_call  # noqa: E402

CONF = cfg.CONF
BACKEND = "sheepdog"


def hold(link: ServiceLink, target: str) -> None:
    """The next call of ``target`` tells the broker and never returns."""
    def held() -> None:
        link.event("held", what=target)
        threading.Event().wait()  # until the test kills this process
    before_first_call(target, held)


def main(port: int, conf_files: list[str]) -> None:
    objects.register_all()
    begin_immediate()
    CONF([arg for f in conf_files for arg in ("--config-file", f)], project="cinder")
    logging.setup(CONF, "cinder")
    from cinder import service
    from cinder.common import constants

    cluster = f"{CONF.cluster}@{BACKEND}" if CONF.cluster else None
    host = f"{CONF.host}@{BACKEND}"
    link = ServiceLink(port, {"host": host, "cluster": cluster, "pid": os.getpid()})
    install(link.post)  # before Cinder builds its first RPC client
    link.commands["hold"] = lambda target: hold(link, target)
    reader = threading.Thread(target=link.serve_forever, daemon=True)
    reader.start()
    server = service.Service.create(host=host, service_name=BACKEND,
                                    binary=constants.VOLUME_BINARY, coordination=True,
                                    cluster=cluster)
    server.start()
    link.endpoint = server.manager
    link.event("ready", initialized=bool(server.manager.driver.initialized))
    reader.join()  # the broker hung up: the test is over


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
