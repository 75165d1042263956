"""Fixtures for the Cinder adapter tests: real Cinder objects, no cinder.tests.

Every test here needs OpenStack Cinder (the ``[cinder]`` extra, Python >= 3.11;
``make test`` installs it); without it they skip saying so.  Each driver gets a
backend section of its own on Cinder's global CONF (Cinder keeps its options
there), and its overrides are cleared afterwards.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sheepdog_backend.server.embedded import EmbeddedServer

try:
    import cinder.volume.driver  # noqa: F401

    CINDER_MISSING = ""
except ImportError as exc:  # pragma: no cover - depends on the environment
    CINDER_MISSING = f"OpenStack Cinder is not installed ({exc}): " + (
        "install the [cinder] extra (pip install -e '.[cinder]'; make test does)"
        if sys.version_info >= (3, 11) else
        f"the [cinder] extra needs Python >= 3.11, this is {sys.version.split()[0]}")

_sections = itertools.count(1)
ROOT = Path(__file__).resolve().parents[2]


def need_cinder() -> None:
    if CINDER_MISSING:
        pytest.skip(CINDER_MISSING)


class CinderBackend:
    """One backend section on Cinder's CONF and the driver Cinder builds for it."""

    def __init__(self, gateways: list[str], **overrides: Any) -> None:
        from cinder import context, objects
        from cinder.volume import configuration, driver
        from oslo_config import cfg
        from oslo_utils import importutils

        objects.register_all()
        self.conf = cfg.CONF
        self.group = f"sheepdog-test-{next(_sections)}"
        self.configuration = configuration.Configuration(driver.volume_opts,
                                                         config_group=self.group)
        self.driver = importutils.import_object(
            "sheepdog_backend.cinder.SheepdogCinderDriver", configuration=self.configuration,
            host=f"testhost@{self.group}", cluster_name=None, is_vol_db_empty=True,
            active_backend_id=None)
        self._overrides: list[tuple[str, str | None]] = []
        self.set(sheepdog_gateways=gateways, **overrides)
        self.ctx = context.get_admin_context()

    def set(self, **values: Any) -> None:
        for name, value in values.items():
            group = None if name in ("volume_name_template", "snapshot_name_template",
                                     "image_conversion_dir") else self.group
            self.conf.set_override(name, value, group=group)
            self._overrides.append((name, group))

    def close(self) -> None:
        self.driver.close()
        for name, group in reversed(self._overrides):
            self.conf.clear_override(name, group=group)

    # -- Cinder's versioned objects, built directly -----------------------

    def volume(self, size: int = 1, **fields: Any) -> Any:
        from cinder import objects

        fields.setdefault("id", str(uuid.uuid4()))
        fields.setdefault("provider_location", None)
        fields.setdefault("_name_id", None)
        fields.setdefault("volume_type", objects.VolumeType(self.ctx, id=str(uuid.uuid4()),
                                                            name="default", extra_specs={}))
        fields.setdefault("glance_metadata", {})
        return objects.Volume(context=self.ctx, size=size, **fields)

    def snapshot(self, volume: Any, **fields: Any) -> Any:
        from cinder import objects

        fields.setdefault("id", str(uuid.uuid4()))
        fields.setdefault("provider_location", None)
        return objects.Snapshot(context=self.ctx, volume=volume, volume_id=volume.id,
                                volume_size=volume.size, **fields)

    def created(self, size: int = 1, **fields: Any) -> Any:
        """A volume the driver created, with the model update applied (as the
        manager does)."""
        vol = self.volume(size, **fields)
        vol.update(self.driver.create_volume(vol) or {})
        return vol

    # -- bytes on the storage (through the core driver's test hook) --------

    def write(self, vol: Any, offset: int, data: bytes) -> None:
        from sheepdog_backend.cinder.translate import core_volume

        self.driver.core.data_access().write(core_volume(vol), offset, data)

    def read(self, vol: Any, offset: int, length: int) -> bytes:
        from sheepdog_backend.cinder.translate import core_volume

        return bytes(self.driver.core.data_access().read(core_volume(vol), offset, length))

    def size_bytes(self, vol: Any) -> int:
        from sheepdog_backend.cinder.translate import core_volume

        return int(self.driver.core.data_access().size_bytes(core_volume(vol)))

    def vdis(self) -> list[str]:
        return sorted(v["name"] for v in self.driver.core.list_volumes())


@pytest.fixture
def backend(embedded_server: EmbeddedServer) -> Iterator[CinderBackend]:
    need_cinder()
    be = CinderBackend(embedded_server.gateways)
    try:
        be.driver.do_setup(be.ctx)
        be.driver.check_for_setup_error()
        yield be
    finally:
        be.close()


# -- Cinder's own services in a child process (test_volume_manager, test_attachments)


def write_cinder_conf(tmp: Path, gateways: list[str], backend: str = "") -> Path:
    """A cinder.conf for one backend ``sheepdog`` (``backend``: more lines for
    its section) on the sqlite database ``tmp/cinder.sqlite``."""
    conf = tmp / "cinder.conf"
    conf.write_text(f"""[DEFAULT]
transport_url = fake://
state_path = {tmp / 'state'}
image_conversion_dir = {tmp / 'conversion'}
enabled_backends = sheepdog
host = testhost
[database]
connection = sqlite:///{tmp / 'cinder.sqlite'}
[oslo_messaging_notifications]
driver = noop
[oslo_concurrency]
lock_path = {tmp / 'locks'}
[sheepdog]
volume_driver = sheepdog_backend.cinder.SheepdogCinderDriver
volume_backend_name = sheepdog
sheepdog_gateways = {",".join(gateways)}
{backend}""")
    return conf


def iscsi_lines(tgtd: Any) -> str:
    """The backend section's lines for central iSCSI exports on ``tgtd``
    (a tests.tgtd.TgtDaemon) with CHAP."""
    return f"""sheepdog_attach_protocol = iscsi
target_helper = tgtadm
target_prefix = iqn.2010-10.org.openstack:
target_ip_address = 127.0.0.1
target_port = {tgtd.portal_port}
use_chap_auth = true
sheepdog_tgt_control_port = {tgtd.control_port}
sheepdog_export_chap_key = test-key-not-secret
"""


def run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=ROOT, check=False)


@pytest.fixture(scope="session")
def synced_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database made by ``cinder-manage db sync`` (offline), once per run;
    each test works on a copy."""
    need_cinder()
    tmp = tmp_path_factory.mktemp("cinder-db")
    conf = tmp / "db.conf"
    conf.write_text(f"[database]\nconnection = sqlite:///{tmp / 'cinder.sqlite'}\n")
    manage = Path(sys.executable).with_name("cinder-manage")
    done = run([str(manage), "--config-file", str(conf), "db", "sync"], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp / "cinder.sqlite").stat().st_size > 0
    return tmp / "cinder.sqlite"
