"""The iSCSI benchmarks' shared setup: one real sheep node and a tgtd of our
own, a driver exporting through it, and attaching a volume's LU for QEMU.

How it works: ``sheep_and_tgtd(tmp)`` starts a one-node real Sheepdog cluster
(``tests/realsheep.py``) and a ``tgtd`` (``tests/tgtd.py``), both stopped by
their pids when the ``with`` block ends, whatever happens; when a program is
missing it raises ``Unavailable`` with the reason (the benchmarks then exit 0
saying so).  ``iscsi_options`` is the driver configuration that exports
through that tgtd (CHAP on); ``attached(driver, volume)`` exports a volume's
LU and yields the QEMU ``--image-opts`` target and the ``--object`` secret,
detaching afterwards (``exported`` yields the connection info itself).  Used
by one thread.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sheepdog_backend.driver import attach  # noqa: E402
from sheepdog_backend.driver.base import Connector, Volume  # noqa: E402
from sheepdog_backend.driver.sheepdog import SheepdogDriver  # noqa: E402

QEMU_IMG, QEMU_IO = "/usr/bin/qemu-img", "/usr/bin/qemu-io"
CONNECTOR = Connector(host="bench", initiator=None)


class Unavailable(Exception):
    """A program the benchmark needs is missing (the message says which)."""


@dataclass
class Setup:
    cluster: Any  # tests.realsheep.SheepCluster
    tgtd: Any  # tests.tgtd.TgtDaemon

    @property
    def gateways(self) -> list[str]:
        return list(self.cluster.gateways)

    def iscsi_options(self) -> dict[str, Any]:
        """Driver options exporting through this tgtd, CHAP on (no gateways:
        the caller says which the driver and the exports use)."""
        return {"sheepdog_attach_protocol": "iscsi", "target_port": self.tgtd.portal_port,
                "sheepdog_tgt_control_port": self.tgtd.control_port,
                "sheepdog_export_chap_key": "bench-key"}


def require_qemu(*programs: str) -> None:
    for program in programs:
        if not os.path.exists(program):
            raise Unavailable(f"{program} (Debian's qemu-utils) not installed")


@contextlib.contextmanager
def sheep_and_tgtd(tmp: str | os.PathLike[str]) -> Iterator[Setup]:
    """A one-node real sheep and a tgtd, both stopped when the block ends."""
    try:
        import _pytest.outcomes

        from tests.realsheep import SheepCluster
        from tests.tgtd import TgtDaemon
    except ImportError as exc:
        raise Unavailable(str(exc)) from exc
    with contextlib.ExitStack() as stack:
        try:
            cluster = SheepCluster(Path(tmp) / "sheep", nodes=1).start()
            stack.callback(cluster.stop)
            tgtd = TgtDaemon(Path(tmp) / "tgtd").start()
            stack.callback(tgtd.stop)
        except (_pytest.outcomes.Skipped, RuntimeError) as exc:
            raise Unavailable(str(exc)) from exc
        yield Setup(cluster, tgtd)


@contextlib.contextmanager
def exported(driver: SheepdogDriver, volume: Volume) -> Iterator[dict[str, Any]]:
    """Export ``volume`` and yield its connection info; the export is dropped
    afterwards."""
    info = attach.initialize_connection(driver.core, volume, CONNECTOR)
    try:
        yield info
    finally:
        attach.terminate_connection(driver.core, volume, CONNECTOR)


@contextlib.contextmanager
def attached(driver: SheepdogDriver, volume: Volume) -> Iterator[tuple[str, str]]:
    """Export ``volume`` and yield (QEMU target image-opts, secret object);
    the export is dropped afterwards."""
    with exported(driver, volume) as info:
        data = info["data"]
        target = (f"driver=iscsi,transport=tcp,portal={data['target_portal']},"
                  f"target={data['target_iqn']},lun=1,user={data['auth_username']},"
                  "password-secret=chap")
        yield target, f"secret,id=chap,data={data['auth_password']}"


def timed_run(argv: list[str], **kw: Any) -> float:
    """Seconds ``argv`` ran (stdout discarded unless redirected); RuntimeError
    when it failed (non-zero exit, or QEMU printing 'failed')."""
    kw.setdefault("stdout", subprocess.PIPE)
    start = time.perf_counter()
    proc = subprocess.run(argv, stderr=subprocess.PIPE, timeout=600, check=False, **kw)
    took = time.perf_counter() - start
    out = proc.stdout.decode(errors="replace") if isinstance(proc.stdout, bytes) else ""
    if proc.returncode != 0 or "failed" in out:
        raise RuntimeError(f"{' '.join(argv[:3])} failed: "
                           f"{proc.stderr.decode(errors='replace')[-500:]!r}")
    return took


def qemu_write(secret: str, target: str, src: Path) -> float:
    """``qemu-img convert -n -m 16 -W`` of ``src`` onto the LU; seconds."""
    return timed_run([QEMU_IMG, "convert", "--object", secret, "-n", "-m", "16", "-W",
                      "-f", "raw", "--target-image-opts", str(src), target])


def qemu_read(secret: str, target: str, out: Path, mib: int) -> float:
    """``qemu-img dd bs=4M`` of the LU's first ``mib`` MiB into ``out`` (convert
    would copy the whole LU); seconds."""
    return timed_run([QEMU_IMG, "dd", "--image-opts", "--object", secret, "-O", "raw",
                      "bs=4M", f"count={mib // 4}", f"if={target}", f"of={out}"])
