"""Consistency check (and repair) of a stopped embedded server's data directory.

How it works: ``check_data_dir`` scans ``<data_dir>`` without changing it:
the journal, the file names in ``obj/``, every inode's header and the
allocated extents of its slot array (inode files are sparse, so this reads
only the slots ever written).  From the slots it builds the set of data
objects some inode names; then it reports, as ``Finding``s:

* ``pending-journal`` / ``torn-journal``: a transaction record the next start
  replays (complete) or discards (torn); ``stray-temp``: a temp file of an
  interrupted create the next start removes;
* ``orphan-object``: a data object no inode's slot names (nothing can read
  it; it only takes space), e.g. left by a crash between a client's create
  and its slot write;
* ``stale-slots``: a deleted inode whose slots still name objects (DEL_VDI
  clears them, so something wrote into a deleted inode);
* ``missing-object``: a live inode's slot names an object that is not on
  disk (data lost; reads of it fail with NO_OBJ) - reported, never "fixed";
* ``bad-slot``: a slot holding a value that is no VDI id (reported only);
* ``unknown-file``: a file in ``obj/`` that is not an object - left alone.

``repair=True`` opens the directory as the server would (``ServerState``:
journal replay, temp files removed), clears stale slots in one journalled
transaction per inode, removes orphans through the server's own garbage
collector (which re-checks every reference on disk before it unlinks, so a
repair can never remove an object that some slot names), then checks again;
the report lists what was repaired and what is left.

Hyper volumes (store_policy 1, B-tree index) are skipped: their data
objects are named by B-tree nodes, not slots.

The directory must not be served meanwhile: ``require_stopped`` takes the
data directory lock (dirlock.py) that EmbeddedServer holds while serving.
Single-threaded; nothing is shared.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from sheepdog_backend.protocol.constants import (
    SD_INODE_DATA_INDEX,
    SD_INODE_GREF_OFFSET,
    SD_INODE_HEADER_SIZE,
    SD_INODE_INDEX_OFFSET,
    SD_NR_VDIS,
)
from sheepdog_backend.protocol.inode import InodeHeader
from sheepdog_backend.protocol.oid import (
    ObjectKind,
    object_kind,
    oid_is_valid,
    oid_to_index,
    oid_to_vid,
    vid_to_data_oid,
    vid_to_vdi_oid,
)
from sheepdog_backend.server.dirlock import DataDirLock
from sheepdog_backend.server.slots import nonzero_slots
from sheepdog_backend.server.store import JOURNAL, OBJ_DIR, Transaction, oid_name

TEMP_PREFIX = ".tmp-"

REPAIRABLE = frozenset({"pending-journal", "torn-journal", "stray-temp", "orphan-object",
                        "stale-slots"})


@dataclass(frozen=True)
class Finding:
    kind: str
    detail: str
    oid: int | None = None

    @property
    def repairable(self) -> bool:
        return self.kind in REPAIRABLE

    def __str__(self) -> str:
        where = f" {oid_name(self.oid)}" if self.oid is not None else ""
        return f"{self.kind}{where}: {self.detail}"


@dataclass
class CheckReport:
    data_dir: str
    inodes: int = 0
    deleted_inodes: int = 0
    data_objects: int = 0
    findings: list[Finding] = field(default_factory=list)
    repaired: list[Finding] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.findings

    def count(self, kind: str) -> int:
        return sum(1 for f in self.findings if f.kind == kind)


def _scan(data_dir: str, report: CheckReport) -> None:
    obj_dir = os.path.join(data_dir, OBJ_DIR)
    journal_temps: set[str] = set()
    journal = os.path.join(data_dir, JOURNAL)
    if os.path.exists(journal):
        with open(journal, "rb") as f:
            raw = f.read()
        if raw:
            txn = Transaction.decode(raw)
            if txn is None:
                report.findings.append(Finding(
                    "torn-journal", f"{len(raw)}-byte record that fails its checksum "
                    "(a transaction never acknowledged; discarded at start)"))
            else:
                journal_temps = {name for name, _ in txn.renames}
                report.findings.append(Finding(
                    "pending-journal", f"complete record: {len(txn.renames)} renames, "
                    f"{len(txn.writes)} writes, {len(txn.unlinks)} unlinks (replayed at start)"))
    names = sorted(os.listdir(obj_dir)) if os.path.isdir(obj_dir) else []
    on_disk: set[int] = set()
    for name in names:
        if name.startswith(TEMP_PREFIX):
            if name not in journal_temps:
                report.findings.append(Finding("stray-temp", f"{name} (removed at start)"))
            continue
        try:
            oid = int(name, 16) if len(name) == 16 else -1
        except ValueError:
            oid = -1
        if oid < 0 or not oid_is_valid(oid):
            report.findings.append(Finding("unknown-file", f"{name} is not an object"))
            continue
        on_disk.add(oid)
    referenced: set[int] = set()
    hyper: set[int] = set()
    for oid in sorted(on_disk):
        if object_kind(oid) is not ObjectKind.INODE:
            continue
        vid = oid_to_vid(oid)
        fd = os.open(os.path.join(obj_dir, oid_name(oid)), os.O_RDONLY)
        try:
            raw = os.pread(fd, SD_INODE_HEADER_SIZE, 0)
            header = InodeHeader.decode(raw + bytes(SD_INODE_HEADER_SIZE - len(raw)))
            report.inodes += 1
            report.deleted_inodes += header.is_deleted
            if header.store_policy:
                hyper.add(vid)
                continue
            stale = 0
            for idx, holder in nonzero_slots(fd):
                if holder >= SD_NR_VDIS or idx >= SD_INODE_DATA_INDEX:
                    report.findings.append(Finding(
                        "bad-slot", f"slot {idx} of VDI {vid:#x} holds {holder:#x}, "
                        "which is no VDI id", oid))
                    continue
                data = vid_to_data_oid(holder, idx)
                referenced.add(data)
                if header.is_deleted:
                    stale += 1
                elif data not in on_disk:
                    report.findings.append(Finding(
                        "missing-object", f"slot {idx} of VDI {vid:#x} "
                        f"({header.name.decode('utf-8', 'replace')!r}) names it; "
                        "its data is lost", data))
            if stale:
                report.findings.append(Finding(
                    "stale-slots", f"deleted VDI {vid:#x} still names {stale} objects", oid))
        finally:
            os.close(fd)
    for oid in sorted(on_disk):
        if object_kind(oid) is not ObjectKind.DATA or oid_to_vid(oid) in hyper:
            continue
        report.data_objects += 1
        if oid not in referenced:
            vid = oid_to_vid(oid)
            owner = ("no inode" if vid_to_vdi_oid(vid) not in on_disk
                     else f"VDI {vid:#x}")
            report.findings.append(Finding(
                "orphan-object", f"index {oid_to_index(oid)} of {owner}; no slot names it",
                oid))


def _repair(data_dir: str, report: CheckReport) -> None:
    from sheepdog_backend.server.state import ServerState

    state = ServerState(data_dir, sync=True)  # replays the journal, drops temp files
    for finding in report.findings:
        if finding.kind in ("pending-journal", "torn-journal", "stray-temp"):
            report.repaired.append(finding)
    with state.meta_lock:
        for finding in report.findings:
            if finding.kind != "stale-slots" or finding.oid is None:
                continue
            vid = oid_to_vid(finding.oid)
            slots = state.read_slots(vid, 0, SD_INODE_DATA_INDEX)
            used = [i for i, v in enumerate(slots) if v]
            if not used:
                continue
            txn = Transaction()
            txn.writes.append((finding.oid, SD_INODE_INDEX_OFFSET + 4 * used[0],
                               bytes(4 * (used[-1] - used[0] + 1))))
            txn.writes.append((finding.oid, SD_INODE_GREF_OFFSET + 8 * used[0],
                               bytes(8 * (used[-1] - used[0] + 1))))
            state.store.commit(txn)
            state.collect([(slots[i], i) for i in used])
            report.repaired.append(finding)
        orphans = [f for f in report.findings if f.kind == "orphan-object" and f.oid is not None]
        state.collect([(oid_to_vid(f.oid), oid_to_index(f.oid))  # type: ignore[arg-type]
                       for f in orphans])
        for finding in orphans:
            assert finding.oid is not None
            if not state.store.exists(finding.oid):
                report.repaired.append(finding)


def check_data_dir(data_dir: str | os.PathLike[str], *, repair: bool = False,
                   require_stopped: bool = True) -> CheckReport:
    """Check (and with ``repair`` fix) a data directory; see the module doc."""
    path = os.fspath(data_dir)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no data directory at {path}")
    lock = DataDirLock(path) if require_stopped else None
    if lock is not None:
        lock.acquire()
    try:
        report = CheckReport(path)
        _scan(path, report)
        if repair and report.findings:
            _repair(path, report)
            after = CheckReport(path, repaired=report.repaired)
            _scan(path, after)
            report = after
        return report
    finally:
        if lock is not None:
            lock.release()
