"""Durable object store for the embedded server: one sparse file per object.

How it works
------------
``<data_dir>/obj/<16 hex digits>`` holds one object, created at its full
nominal size with ``ftruncate`` so that a 12.5 MB inode or a 4 MiB data object
only uses disk blocks for the bytes ever written (sparse file).  Reads use
``pread`` of just the requested range and zero-fill past the end of the file.

Crash safety (``sync=True``; ``sync=False`` skips every fsync, for tests):

* **Create** (CREATE_AND_WRITE_OBJ, new inodes): the whole object is written to
  ``obj/.tmp-*``, fsynced, renamed over the final name, then the directory is
  fsynced.  A crash leaves either the old object or the new one, never a mix.
  The directory fsync is group-committed (``GroupSync``): a create returns
  only after a directory fsync that *started after its rename*, so it is as
  durable as with its own fsync, but creates running concurrently (the server
  runs a connection's pipelined I/O in parallel) share one.  Creating a new
  object in place (no temp file) was measured and not adopted: on ext4 the
  cost of a small create is the new file's own fsync (allocating an inode),
  not the rename or the directory fsync (benchmarks/bench_server.py), and in
  place a torn never-acknowledged object would be visible by its oid.
* **Removes** (REMOVE_OBJ, garbage collection): unlink, then one directory
  fsync per batch (a deleted VDI's objects share one).  A crash before it
  can only bring back an unreferenced object, never lose data.
* **Data writes** (WRITE_OBJ to data/vmstate/attr objects, and inode writes
  that lie entirely in the slot array without touching the header): ``pwrite``
  then ``fsync`` before the caller replies.  A torn write here is an
  unacknowledged write, which the protocol allows to be lost or partial.
* **Transactions** (anything touching an inode header, or several regions
  that must change together: a slot write plus the ``gref`` reset, a snapshot
  that freezes the old inode and creates the new one, DEL_VDI): a redo record
  listing renames, writes and unlinks is written to ``<data_dir>/journal``
  and fsynced; then the operations are applied and fsynced; then the journal
  is truncated to zero and fsynced.  On start a complete record (its SHA-256
  checks) is replayed: every step is idempotent (rename only if the temp file
  still exists, rewrite the same bytes, unlink if present) and nothing written
  after the transaction can be reverted, because the next transaction only
  starts after the journal has been emptied and non-journalled writes never
  touch regions a transaction wrote before they are acknowledged.  A torn
  record (crash while writing it) fails its checksum and is discarded: that
  transaction was never acknowledged.  So an inode header is never torn:
  a pwrite of 4,664 bytes is not atomic on any filesystem we know of, but the
  journal makes it redoable.
* Left-over ``.tmp-*`` files not named by a valid journal record are removed on
  start.

Every write that lands in an inode's slot array (``write``, ``stage``,
journal replay through ``write``) is reported to ``self.slots`` (slots.py),
the reverse index garbage collection uses; it is rebuilt from disk on start.

The cluster configuration lives in ``cluster.json``, replaced atomically
(temp file, fsync, rename, directory fsync).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass

from sheepdog_backend.server.slots import SlotIndex, inode_vid

OBJ_DIR = "obj"
JOURNAL = "journal"
CONFIG = "cluster.json"
_TMP_PREFIX = ".tmp-"
_JOURNAL_MAGIC = b"SDJ1"
_COPY_CHUNK = 1 << 20


def oid_name(oid: int) -> str:
    return f"{oid:016x}"


@dataclass
class ClusterConfig:
    """What MAKE_FS sets; ctime 0 means never formatted."""

    ctime: int = 0
    epoch: int = 0
    epoch_time: int = 0
    nr_copies: int = 0
    copy_policy: int = 0
    block_size_shift: int = 0
    flags: int = 0x0004  # AUTO_VNODES, what an unformatted sheep reports
    store: str = ""

    @property
    def formatted(self) -> bool:
        return self.ctime != 0


@dataclass
class Transaction:
    """Operations that must happen all together or not at all."""

    renames: list[tuple[str, int]]  # (temp file name in obj/, target oid)
    writes: list[tuple[int, int, bytes]]  # (oid, offset, data)
    unlinks: list[int]

    def __init__(self) -> None:
        self.renames = []
        self.writes = []
        self.unlinks = []

    def encode(self) -> bytes:
        meta = {
            "renames": [[name, oid_name(oid)] for name, oid in self.renames],
            "writes": [[oid_name(oid), off, len(data)] for oid, off, data in self.writes],
            "unlinks": [oid_name(oid) for oid in self.unlinks],
        }
        head = json.dumps(meta).encode()
        body = _JOURNAL_MAGIC + struct.pack("<I", len(head)) + head
        body += b"".join(data for _, _, data in self.writes)
        return body + hashlib.sha256(body).digest()

    @classmethod
    def decode(cls, raw: bytes) -> Transaction | None:
        """The transaction in a journal, or None when empty or torn."""
        if len(raw) < 40 or raw[:4] != _JOURNAL_MAGIC:
            return None
        body, digest = raw[:-32], raw[-32:]
        if hashlib.sha256(body).digest() != digest:
            return None
        (hlen,) = struct.unpack_from("<I", body, 4)
        meta = json.loads(body[8:8 + hlen])
        txn = cls()
        pos = 8 + hlen
        txn.renames = [(name, int(oid, 16)) for name, oid in meta["renames"]]
        for oid, off, length in meta["writes"]:
            txn.writes.append((int(oid, 16), off, body[pos:pos + length]))
            pos += length
        txn.unlinks = [int(oid, 16) for oid in meta["unlinks"]]
        return txn


class GroupSync:
    """Group commit for one fsync: callers that need it share one run.

    ``sync()`` returns only after a run of ``fn`` that *started after* the
    call began, so everything the caller did before calling is covered.
    While a run is in progress, new callers wait for it and then start one
    more run together: N concurrent creates pay about two directory fsyncs
    instead of N."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn = fn
        self._cond = threading.Condition()
        self._requested = 0  # tickets handed out
        self._done = 0  # every ticket <= this is covered by a finished run
        self._running = False

    def sync(self) -> None:
        with self._cond:
            self._requested += 1
            ticket = self._requested
            while self._done < ticket:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                covers = self._requested  # all of them called before this run starts
                self._cond.release()
                try:
                    self._fn()
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._cond.notify_all()
                self._done = max(self._done, covers)


class ObjectStore:
    """Objects on disk, keyed by oid.  Thread-safe; transactions are serialised."""

    def __init__(self, data_dir: str | os.PathLike[str], *, sync: bool = True) -> None:
        self.root = os.fspath(data_dir)
        self.sync = sync
        self.obj_dir = os.path.join(self.root, OBJ_DIR)
        self._journal_path = os.path.join(self.root, JOURNAL)
        self._txn_lock = threading.Lock()
        self._obj_dir_sync = GroupSync(lambda: self._fsync_dir(self.obj_dir))
        self.slots = SlotIndex()  # which inodes may hold a vid in a slot (GC)
        os.makedirs(self.obj_dir, exist_ok=True)
        self.recover()
        self.rebuild_slot_index()

    # -- paths and fsync helpers -------------------------------------------

    def path(self, oid: int) -> str:
        return os.path.join(self.obj_dir, oid_name(oid))

    def _fsync_fd(self, fd: int) -> None:
        if self.sync:
            os.fsync(fd)

    def _fsync_dir(self, path: str) -> None:
        if not self.sync:
            return
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- start-up ------------------------------------------------------------

    def recover(self) -> None:
        """Replay a complete journal record and drop stray temp files."""
        keep: set[str] = set()
        if os.path.exists(self._journal_path):
            with open(self._journal_path, "rb") as f:
                txn = Transaction.decode(f.read())
            if txn is not None:
                keep = {name for name, _ in txn.renames}
                self._apply(txn)
            self._clear_journal()
        for name in os.listdir(self.obj_dir):
            if name.startswith(_TMP_PREFIX) and name not in keep:
                os.unlink(os.path.join(self.obj_dir, name))

    def rebuild_slot_index(self) -> None:
        """Index the slot arrays of every inode on disk (see slots.py)."""
        self.slots.reset()
        for oid in self.oids():
            vid = inode_vid(oid)
            if vid is None:
                continue
            try:
                fd = os.open(self.path(oid), os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                self.slots.scan_fd(vid, fd)
            finally:
                os.close(fd)

    # -- config --------------------------------------------------------------

    def load_config(self) -> ClusterConfig:
        path = os.path.join(self.root, CONFIG)
        if not os.path.exists(path):
            return ClusterConfig()
        with open(path, encoding="utf-8") as f:
            return ClusterConfig(**json.load(f))

    def save_config(self, config: ClusterConfig) -> None:
        path = os.path.join(self.root, CONFIG)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(asdict(config), f)
            f.flush()
            self._fsync_fd(f.fileno())
        os.replace(tmp, path)
        self._fsync_dir(self.root)

    # -- reads ---------------------------------------------------------------

    def exists(self, oid: int) -> bool:
        return os.path.exists(self.path(oid))

    def size(self, oid: int) -> int | None:
        try:
            return os.stat(self.path(oid)).st_size
        except FileNotFoundError:
            return None

    def read(self, oid: int, offset: int, length: int) -> bytes | None:
        """``length`` bytes from ``offset`` (zeros past the end), None if absent."""
        try:
            fd = os.open(self.path(oid), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            data = os.pread(fd, length, offset) if length else b""
        finally:
            os.close(fd)
        if len(data) < length:
            data += bytes(length - len(data))
        return data

    def data_oids(self, vid: int) -> list[int]:
        """The data objects of ``vid`` on disk (one directory listing)."""
        prefix = f"{vid:08x}"  # a data oid is vid << 32 | idx, type bits zero
        out = []
        for name in os.listdir(self.obj_dir):
            if len(name) == 16 and name.startswith(prefix):
                try:
                    out.append(int(name, 16))
                except ValueError:
                    continue
        return out

    def oids(self) -> Iterator[int]:
        for name in os.listdir(self.obj_dir):
            if len(name) == 16 and not name.startswith("."):
                try:
                    yield int(name, 16)
                except ValueError:
                    continue

    # -- creates ---------------------------------------------------------------

    def stage(self, oid: int, size: int, extents: list[tuple[int, bytes]],
              cow_from: int | None = None) -> str:
        """Write a complete new object to a temp file; return its name.

        The object is ``size`` bytes (sparse), optionally initialised from the
        object ``cow_from`` (only its non-zero chunks are copied, so holes stay
        holes), then each (offset, bytes) extent is laid over it."""
        name = f"{_TMP_PREFIX}{oid_name(oid)}-{uuid.uuid4().hex}"
        path = os.path.join(self.obj_dir, name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.ftruncate(fd, size)
            if cow_from is not None:
                self._copy_into(fd, cow_from, size)
            for offset, data in extents:
                if data:
                    _pwrite_all(fd, data, offset)
            self._index_slots(oid, fd, extents, cow_from)
            self._fsync_fd(fd)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        return name

    def _copy_into(self, fd: int, src_oid: int, size: int) -> None:
        src = os.open(self.path(src_oid), os.O_RDONLY)
        try:
            pos = 0
            while pos < size:
                chunk = os.pread(src, min(_COPY_CHUNK, size - pos), pos)
                if not chunk:
                    break
                if chunk.count(0) != len(chunk):
                    _pwrite_all(fd, chunk, pos)
                pos += len(chunk)
        finally:
            os.close(src)

    def _index_slots(self, oid: int, fd: int, extents: list[tuple[int, bytes]],
                     cow_from: int | None) -> None:
        """Report the slots a new inode will hold (before it can become visible)."""
        vid = inode_vid(oid)
        if vid is None:
            return
        if cow_from is not None:
            source = inode_vid(cow_from)
            if source is not None:
                self.slots.inherit(vid, source)
            else:  # a data object copied into an inode: look at what landed
                self.slots.scan_fd(vid, fd)
        for offset, data in extents:
            self.slots.note_fd(vid, fd, offset, len(data))

    def create(self, oid: int, size: int, extents: list[tuple[int, bytes]],
               cow_from: int | None = None, *,
               guard: Callable[[], AbstractContextManager[object]] | None = None) -> None:
        """Create or replace an object atomically (temp file + rename).

        ``guard()`` (if given) is entered around the rename only: it may
        refuse the create by raising, and the staged file is then removed
        (objects.py checks there, under the data gate, that the object's VDI
        can still be written)."""
        name = self.stage(oid, size, extents, cow_from)
        staged = os.path.join(self.obj_dir, name)
        try:
            if guard is None:
                os.replace(staged, self.path(oid))
            else:
                with guard():
                    os.replace(staged, self.path(oid))
        except BaseException:
            try:
                os.unlink(staged)
            except FileNotFoundError:
                pass
            raise
        self._obj_dir_sync.sync()

    # -- in-place writes -------------------------------------------------------

    def write(self, oid: int, offset: int, data: bytes) -> bool:
        """pwrite + fsync into an existing object; False if it does not exist."""
        vid = inode_vid(oid)
        try:
            fd = os.open(self.path(oid), os.O_WRONLY if vid is None else os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            _pwrite_all(fd, data, offset)
            if vid is not None:
                self.slots.note_fd(vid, fd, offset, len(data))
            self._fsync_fd(fd)
        finally:
            os.close(fd)
        return True

    def remove(self, oid: int) -> bool:
        return self.remove_many([oid]) == 1

    def remove_many(self, oids: Iterable[int]) -> int:
        """Unlink objects, then make the removals durable with one directory
        fsync; returns how many existed."""
        removed = 0
        for oid in oids:
            try:
                os.unlink(self.path(oid))
            except FileNotFoundError:
                continue
            removed += 1
        if removed:
            self._obj_dir_sync.sync()
        return removed

    # -- transactions ----------------------------------------------------------

    def commit(self, txn: Transaction) -> None:
        """Apply a transaction atomically with respect to crashes."""
        with self._txn_lock:
            record = txn.encode()
            fd = os.open(self._journal_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _pwrite_all(fd, record, 0)
                self._fsync_fd(fd)
            finally:
                os.close(fd)
            self._fsync_dir(self.root)
            self._apply(txn)
            self._clear_journal()

    def _apply(self, txn: Transaction) -> None:
        touched_dir = False
        for name, oid in txn.renames:
            src = os.path.join(self.obj_dir, name)
            if os.path.exists(src):
                os.replace(src, self.path(oid))
                touched_dir = True
        if touched_dir:
            self._fsync_dir(self.obj_dir)
        for oid, offset, data in txn.writes:
            self.write(oid, offset, data)
        for oid in txn.unlinks:
            try:
                os.unlink(self.path(oid))
                touched_dir = True
            except FileNotFoundError:
                pass
        if txn.unlinks:
            self._fsync_dir(self.obj_dir)

    def _clear_journal(self) -> None:
        fd = os.open(self._journal_path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, 0)
            self._fsync_fd(fd)
        finally:
            os.close(fd)

    # -- format ----------------------------------------------------------------

    def wipe(self) -> None:
        """Remove every object (MAKE_FS)."""
        for name in os.listdir(self.obj_dir):
            os.unlink(os.path.join(self.obj_dir, name))
        self.slots.reset()
        self._fsync_dir(self.obj_dir)


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n
