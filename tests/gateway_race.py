"""The snapshot race through tgt, shared by the gateway tests and benchmark.

``run_race`` exports a volume through the driver (tgt's LU on the local
gateway), starts QEMU 7.2's qemu-io writing ``writes`` 64 KiB blocks, each
with its own byte pattern at its own offset (spread over many 4 MiB objects,
so most writes create an object), while a loop snapshots the volume through
the gateway every ``interval`` seconds until the writer exits; then every
block qemu-io acknowledged is read back from the cluster (the working VDI, as
a re-opened LU would see it) and compared whole.
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sheepdog_backend.client import SheepdogClient
from sheepdog_backend.gateway import Gateway
from tests.iscsi_tools import image_opts, qemu_io_path

BLOCK = 64 * 1024
OBJECT = 4 << 20


@dataclass
class RaceResult:
    acknowledged: int = 0
    failed_writes: int = 0
    snapshots: int = 0
    snapshot_errors: list[str] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    longest_snapshot: float = 0.0  # one snapshot request, end to end
    longest_gate_wait: float = 0.0  # longest a write was held by a snapshot
    seconds: float = 0.0
    gateway_stats: dict[str, Any] = field(default_factory=dict)


def layout(writes: int, objects: int) -> list[int]:
    """Block i's offset: round-robin over ``objects`` objects, so the first
    ``objects`` writes each create one."""
    per = max(1, -(-writes // objects))
    assert per * BLOCK <= OBJECT
    return [(i % objects) * OBJECT + (i // objects) * BLOCK for i in range(writes)]


def pattern(i: int) -> int:
    return 1 + i % 251


def run_race(info: dict[str, Any], *, initiator: str, name: str, snapshot_via: str,
             check_client: SheepdogClient, gateway: Gateway | None, writes: int, objects: int,
             interval: float = 0.1, max_snapshots: int = 2000,
             timeout: float = 600.0) -> RaceResult:
    offsets = layout(writes, objects)
    argv = [qemu_io_path(), "--object",
            f"secret,id=sd-chap,data={info['data'].get('auth_password', '')}",
            "--image-opts", image_opts(info, initiator=initiator)]
    for i, off in enumerate(offsets):
        argv += ["-c", f"write -P {pattern(i)} {off} {BLOCK}"]
    result = RaceResult()
    stop = threading.Event()

    def snapshots() -> None:
        with SheepdogClient([snapshot_via]) as snapper:
            n = 0
            while not stop.is_set() and n < max_snapshots:
                n += 1
                start = time.monotonic()
                try:
                    snapper.snapshot_vdi(name, f"race-{n}")
                    result.snapshots += 1
                except Exception as exc:  # report, keep going
                    result.snapshot_errors.append(f"{type(exc).__name__}: {exc}")
                result.longest_snapshot = max(result.longest_snapshot,
                                              time.monotonic() - start)
                stop.wait(interval)

    snapper = threading.Thread(target=snapshots, name="race-snapshots")
    began = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        snapper.start()
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stop.set()
        snapper.join(60)
    result.seconds = time.monotonic() - began
    acked = [line for line in out.splitlines() if line.startswith("wrote 65536/65536")]
    result.acknowledged = len(acked)
    result.failed_writes = out.count("write failed")
    ack_offsets = {int(line.split(" at offset ")[1].split()[0]) for line in acked}
    for i, off in enumerate(offsets):
        if off not in ack_offsets:
            continue
        if check_client.read(name, off, BLOCK) != bytes([pattern(i)]) * BLOCK:
            result.lost.append(off)
    if gateway is None:  # the control run: tgt straight to a node
        return result
    stats = gateway.stats()
    result.gateway_stats = stats
    result.longest_gate_wait = max((v["max_gate_wait"] for v in stats["vdis"].values()),
                                   default=0.0)
    return result
