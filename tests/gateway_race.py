"""The snapshot race through tgt, shared by the gateway tests and benchmark.

``run_race`` exports a volume through the driver (tgt's LU on the local
gateway) and runs QEMU 7.2's qemu-io writing ``writes`` 64 KiB blocks, each
with its own byte pattern at its own offset (spread over many 4 MiB objects,
so most writes create an object), while a loop snapshots the volume through
the gateway every ``interval`` seconds whenever qemu-io is running; then
every block qemu-io acknowledged is read back from the cluster (the working
VDI, as a re-opened LU would see it) and compared whole.

How many snapshots land during the writes depends on the machine: a fast
write path finishes a fixed list of writes before the snapshots the test
needs have happened.  So the writer runs in rounds: each round is one qemu-io
run over the same offsets with patterns of its own (``pattern(i, round)``
differs from the round before), read back and checked before the next round
starts (a later round would overwrite a lost block).  After each round the
race stops if it has seen what it needs - ``min_snapshots`` snapshots taken
while qemu-io ran and ``min_refused`` writes the gateway refused READONLY -
or once ``time_limit`` seconds have passed, and then ``short`` says what was
missing.  Without those (the default) it is one round, as the benchmark and
the control run (``max_snapshots=0``) use it.

The guest's stall: qemu-io prints each write's time (its ops/sec figure has
four digits), so ``longest_write`` is the longest a guest write took while
snapshots ran; the same run with ``max_snapshots=0`` on a fresh volume is the
control (``with_control``).  With the gateway's request trace on
(``Gateway(trace=N)``), ``split_stall`` splits the longest write into the
requests tgt made for it (within its round, where each block is written
once): the gate's hold, the tries the cluster refused (READONLY: the volume
was snapshotted), tgt's reload between tries (LOCK_VDI and its inode read),
the data write that stuck, the inode slot write, and what was spent outside
the gateway (QEMU, iSCSI, tgt).
"""

from __future__ import annotations

import itertools
import re
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sheepdog_backend.client import SheepdogClient
from sheepdog_backend.gateway import Gateway
from sheepdog_backend.gateway.stats import TraceEntry
from sheepdog_backend.protocol.constants import SD_INODE_INDEX_OFFSET, Opcode
from sheepdog_backend.protocol.oid import is_data_obj, is_vdi_obj, oid_to_index
from tests.iscsi_tools import image_opts, qemu_io_path

BLOCK = 64 * 1024
OBJECT = 4 << 20
_WROTE = re.compile(r"wrote 65536/65536 bytes at offset (\d+)\n"
                    r"64 KiB, 1 ops; [^(\n]*\([^)\n]* and ([\d.]+) ops/sec\)")


@dataclass
class RaceResult:
    acknowledged: int = 0
    failed_writes: int = 0
    snapshots: int = 0
    snapshot_errors: list[str] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    longest_snapshot: float = 0.0  # one snapshot request, end to end
    longest_gate_wait: float = 0.0  # longest a write was held by a snapshot
    longest_snapshot_call: float = 0.0  # longest NEW_VDI the cluster took
    longest_write: float = 0.0  # the guest's longest write (qemu-io's time)
    median_write: float = 0.0
    control_longest_write: float = 0.0  # the same writes, no snapshot (with_control)
    control_median_write: float = 0.0
    stall: dict[str, float] = field(default_factory=dict)  # split_stall of the longest
    timed_writes: int = 0  # acknowledged writes whose time qemu-io's output gave
    seconds: float = 0.0
    rounds: int = 0  # qemu-io runs over the whole list of writes
    attempted: int = 0  # writes asked of qemu-io: rounds x writes
    refused_writes: int = 0  # answered READONLY by the gateway's guard during the run
    short: str = ""  # what the run still lacked when time_limit ended it
    gateway_stats: dict[str, Any] = field(default_factory=dict)


def layout(writes: int, objects: int) -> list[int]:
    """Block i's offset: round-robin over ``objects`` objects, so the first
    ``objects`` writes each create one."""
    per = max(1, -(-writes // objects))
    assert per * BLOCK <= OBJECT
    return [(i % objects) * OBJECT + (i // objects) * BLOCK for i in range(writes)]


def pattern(i: int, round_: int = 0) -> int:
    """Block i's byte in a round: 1..251, never the one it had the round before."""
    return 1 + (i + 97 * round_) % 251


def write_times(out: str) -> dict[int, float]:
    """offset -> seconds of each write qemu-io acknowledged."""
    return {int(m.group(1)): 1.0 / float(m.group(2)) for m in _WROTE.finditer(out)}


def _covers_slot(entry: TraceEntry, idx: int) -> bool:
    slot = SD_INODE_INDEX_OFFSET + 4 * idx
    return entry.opcode == Opcode.WRITE_OBJ and entry.oid is not None \
        and is_vdi_obj(entry.oid) and entry.offset <= slot < entry.offset + entry.length


def split_stall(entries: list[TraceEntry], offset: int, guest: float) -> dict[str, float]:
    """Split the guest write of the block at ``offset`` (each block is written
    once, so its object index and offset name its requests) into its parts."""
    idx, in_obj = offset // OBJECT, offset % OBJECT
    tries = sorted((e for e in entries if e.oid is not None and is_data_obj(e.oid)
                    and oid_to_index(e.oid) == idx and e.offset == in_obj
                    and e.opcode in (Opcode.CREATE_AND_WRITE_OBJ, Opcode.WRITE_OBJ)),
                   key=lambda e: e.start)
    if not tries:
        return {"guest": guest}
    final = tries[-1]
    slot = min((e for e in entries if e.start >= final.end and _covers_slot(e, idx)),
               key=lambda e: e.start, default=None)
    end = slot.end if slot is not None else final.end
    overlapping = [e.seconds - e.waited for e in entries if e.opcode == Opcode.NEW_VDI
                   and e.start < final.end and e.end > tries[0].start]
    return {
        "guest": guest,
        "tries": float(len(tries)),
        "gate_wait": sum(e.waited for e in tries),
        "refused_tries": sum(e.seconds - e.waited for e in tries[:-1]),
        "tgt_reload": sum(b.start - a.end for a, b in itertools.pairwise(tries)),
        "data_write": final.seconds - final.waited,
        "slot_write": slot.seconds if slot is not None else 0.0,
        "outside_gateway": guest - (end - tries[0].start),
        "snapshot_call": max(overlapping, default=0.0),  # NEW_VDI it collided with
    }


def with_control(result: RaceResult, control: RaceResult) -> RaceResult:
    """``result`` with the longest and median write of a run without snapshots."""
    result.control_longest_write = control.longest_write
    result.control_median_write = control.median_write
    return result


def _refused(gateway: Gateway | None) -> int:
    return int(gateway.stats()["refused_writes"]) if gateway is not None else 0


def run_race(info: dict[str, Any], *, initiator: str | None, name: str, snapshot_via: str,
             check_client: SheepdogClient, gateway: Gateway | None, writes: int, objects: int,
             interval: float = 0.1, max_snapshots: int = 2000,
             timeout: float = 600.0, min_snapshots: int = 0, min_refused: int = 0,
             time_limit: float = 120.0) -> RaceResult:
    """The race (see the module's docstring).  ``timeout`` bounds each qemu-io
    run; no round starts after ``time_limit`` seconds."""
    offsets = layout(writes, objects)
    base = [qemu_io_path(), "--object",
            f"secret,id=sd-chap,data={info['data'].get('auth_password', '')}",
            "--image-opts", image_opts(info, initiator=initiator)]
    result = RaceResult()
    stop = threading.Event()
    writing = threading.Event()  # set while a round's qemu-io runs

    def snapshots() -> None:
        with SheepdogClient([snapshot_via]) as snapper:
            n = 0
            while n < max_snapshots:
                writing.wait()
                if stop.is_set():
                    return
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

    def missing() -> list[str]:
        lack = []
        if result.snapshots < min_snapshots:
            lack.append(f"{result.snapshots} snapshots while qemu-io wrote "
                        f"(wanted {min_snapshots})")
        if result.refused_writes < min_refused:
            lack.append(f"{result.refused_writes} writes refused READONLY by the gateway "
                        f"(wanted {min_refused})")
        return lack

    snapper = threading.Thread(target=snapshots, name="race-snapshots")
    began = time.monotonic()
    refused_before = _refused(gateway)
    times: list[tuple[float, int, float, float]] = []  # (seconds, offset, round's span)
    snapper.start()
    try:
        while True:
            round_ = result.rounds
            argv = list(base)
            for i, off in enumerate(offsets):
                argv += ["-c", f"write -P {pattern(i, round_)} {off} {BLOCK}"]
            round_began = time.monotonic()
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
            writing.set()
            try:
                out, _ = proc.communicate(timeout=timeout)
            finally:
                writing.clear()
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            round_ended = time.monotonic()
            result.rounds += 1
            result.attempted += writes
            times += [(t, off, round_began, round_ended)
                      for off, t in write_times(out).items()]
            acked = [line for line in out.splitlines() if line.startswith("wrote 65536/65536")]
            result.acknowledged += len(acked)
            result.failed_writes += out.count("write failed")
            # Checked before the next round overwrites them.
            ack_offsets = {int(line.split(" at offset ")[1].split()[0]) for line in acked}
            for i, off in enumerate(offsets):
                if off in ack_offsets and check_client.read(name, off, BLOCK) != \
                        bytes([pattern(i, round_)]) * BLOCK:
                    result.lost.append(off)
            result.refused_writes = _refused(gateway) - refused_before
            lack = missing()
            if not lack:
                break
            if time.monotonic() - began >= time_limit:
                result.short = (f"after {time.monotonic() - began:.0f} s and {result.rounds} "
                                f"rounds of {writes} writes: " + ", ".join(lack))
                break
    finally:
        stop.set()
        writing.set()  # lets the snapshot loop see stop
        snapper.join(60)
    result.seconds = time.monotonic() - began
    result.timed_writes = len(times)
    if times:
        result.longest_write = max(t for t, *_ in times)
        result.median_write = statistics.median(t for t, *_ in times)
    if gateway is None:  # the control run: tgt straight to a node
        return result
    stats = gateway.stats()
    result.gateway_stats = stats
    result.longest_gate_wait = max((v["max_gate_wait"] for v in stats["vdis"].values()),
                                   default=0.0)
    result.longest_snapshot_call = stats["max_snapshot_call"]
    if gateway.trace is not None and times:
        worst, off, start, end = max(times)
        ours = [e for e in gateway.trace.entries() if start <= e.start <= end]  # its round's
        result.stall = split_stall(ours, off, worst)
    return result
