"""Object store: sparse files, atomic creates, journal replay and torn records."""

from __future__ import annotations

import os
from pathlib import Path

from sheepdog_backend.server.store import JOURNAL, ClusterConfig, ObjectStore, Transaction

INODE = (1 << 63) | (5 << 32)
DATA = (5 << 32) | 1


def test_objects_are_sparse_and_zero_filled(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path, sync=True)
    store.create(INODE, 12_587_576, [(0, b"name")])
    st = os.stat(store.path(INODE))
    assert st.st_size == 12_587_576 and st.st_blocks * 512 < 1 << 20
    assert store.read(INODE, 0, 6) == b"name\0\0"
    assert store.read(INODE, 12_587_570, 10) == bytes(10)
    assert store.read(DATA, 0, 1) is None
    assert sorted(store.oids()) == [INODE]


def test_cow_copy_keeps_holes(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path, sync=False)
    store.create(DATA, 1 << 22, [(3 << 20, b"tail")])
    store.create(DATA + 1, 1 << 22, [(0, b"head")], cow_from=DATA)
    assert store.read(DATA + 1, 0, 4) == b"head"
    assert store.read(DATA + 1, 3 << 20, 4) == b"tail"
    assert os.stat(store.path(DATA + 1)).st_blocks * 512 < 1 << 21


def test_complete_journal_is_replayed(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path, sync=False)
    store.create(INODE, 8192, [(0, b"old header")])
    store.create(DATA, 4096, [])
    staged = store.stage(DATA + 1, 4096, [(0, b"staged")])
    txn = Transaction()
    txn.renames.append((staged, DATA + 1))
    txn.writes.append((INODE, 0, b"new header"))
    txn.unlinks.append(DATA)
    (tmp_path / JOURNAL).write_bytes(txn.encode())  # "crash" right after the journal write
    again = ObjectStore(tmp_path, sync=False)
    assert again.read(INODE, 0, 10) == b"new header"
    assert again.read(DATA + 1, 0, 6) == b"staged"
    assert not again.exists(DATA)
    assert (tmp_path / JOURNAL).read_bytes() == b""


def test_torn_journal_is_discarded_with_its_temp_files(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path, sync=False)
    store.create(INODE, 8192, [(0, b"old header")])
    staged = store.stage(DATA, 4096, [(0, b"x")])
    txn = Transaction()
    txn.renames.append((staged, DATA))
    txn.writes.append((INODE, 0, b"new header"))
    record = txn.encode()
    (tmp_path / JOURNAL).write_bytes(record[:-5])
    again = ObjectStore(tmp_path, sync=False)
    assert again.read(INODE, 0, 10) == b"old header"
    assert not again.exists(DATA)
    assert [n for n in os.listdir(again.obj_dir) if n.startswith(".")] == []


def test_config_round_trip(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path, sync=True)
    assert not store.load_config().formatted
    config = ClusterConfig(ctime=7, epoch=1, nr_copies=2, block_size_shift=22, store="plain")
    store.save_config(config)
    assert ObjectStore(tmp_path, sync=True).load_config() == config
