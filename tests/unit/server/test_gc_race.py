"""Data writes against a VDI's deletion or snapshot: a data object never
outlives the VDI it belongs to, and a snapshot never changes after it is taken.

Issue 9 item 5: concurrent create/write/delete of one name left unreferenced
data objects on disk.  A client creates a data object, then points the slot
at it; when DEL_VDI ran between (or the create's rename landed after the
delete's garbage collection), the object stayed on disk with no slot of any
live inode naming it.  The interleavings are forced here by parking a create
between its staging (temp file written) and its rename."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from sheepdog_backend.protocol.constants import Opcode, Result
from sheepdog_backend.protocol.oid import vid_to_data_oid
from sheepdog_backend.server.check import check_data_dir
from sheepdog_backend.server.handler import Handler
from sheepdog_backend.server.store import ObjectStore
from tests.unit.server.helpers import (
    call,
    new_vdi,
    open_handler,
    read_obj,
    set_slot,
    vdi_op,
    write_data,
    write_obj,
)

WAIT = 10.0
BLOCK = b"\xab" * 4096


@pytest.fixture
def handler(tmp_path: Path) -> Handler:
    return open_handler(tmp_path / "sheep")


def _vid(handler: Handler, name: str, **kw: int) -> int:
    rsp = call(handler, new_vdi(name, **kw))
    assert rsp.ok
    return rsp.body.vdi_id  # type: ignore[union-attr]


def _exists(handler: Handler, vid: int, idx: int) -> bool:
    return handler.state.store.exists(vid_to_data_oid(vid, idx))


def _orphans(handler: Handler) -> list[int]:
    report = check_data_dir(handler.state.data_dir, require_stopped=False)
    return [f.oid for f in report.findings if f.kind == "orphan-object"]


class ParkedStage:
    """Parks the next ``stage`` of ``oid`` after its temp file is complete."""

    def __init__(self, store: ObjectStore, oid: int, monkeypatch: pytest.MonkeyPatch) -> None:
        self.staged = threading.Event()
        self.release = threading.Event()
        original = store.stage

        def stage(o: int, *args: object, **kw: object) -> str:
            name = original(o, *args, **kw)  # type: ignore[arg-type]
            if o == oid and not self.staged.is_set():
                self.staged.set()
                assert self.release.wait(WAIT), "the test never released the create"
            return name

        monkeypatch.setattr(store, "stage", stage)


def _in_thread(handler: Handler, request: object) -> tuple[threading.Thread, list[int]]:
    results: list[int] = []

    def run() -> None:
        results.append(call(handler, request).result)  # type: ignore[arg-type]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, results


def test_create_of_a_deleted_vdis_object_is_refused(handler: Handler) -> None:
    vid = _vid(handler, "vol")
    write_data(handler, vid, 0, BLOCK)
    assert call(handler, vdi_op(Opcode.DEL_VDI, "vol")).ok
    rsp = call(handler, write_obj(vid_to_data_oid(vid, 1), BLOCK, create=True))
    assert rsp.result == Result.NO_VDI
    assert not _exists(handler, vid, 1)
    assert _orphans(handler) == []


def test_create_without_an_inode_is_refused(handler: Handler) -> None:
    rsp = call(handler, write_obj(vid_to_data_oid(0x123456, 3), BLOCK, create=True))
    assert rsp.result == Result.NO_VDI
    assert not _exists(handler, 0x123456, 3)


def test_slot_write_into_a_deleted_inode_is_refused_and_its_object_collected(
        handler: Handler) -> None:
    vid = _vid(handler, "vol")
    assert call(handler, write_obj(vid_to_data_oid(vid, 1), BLOCK, create=True)).ok
    assert call(handler, vdi_op(Opcode.DEL_VDI, "vol")).ok
    rsp = call(handler, set_slot(vid, 1, vid))
    assert rsp.result == Result.NO_VDI
    assert not _exists(handler, vid, 1)
    assert handler.state.read_slots(vid, 1, 1)[0] == 0
    assert _orphans(handler) == []


def test_delete_collects_objects_created_but_never_linked(handler: Handler) -> None:
    """A client that died between its create and its slot write."""
    vid = _vid(handler, "vol")
    write_data(handler, vid, 0, BLOCK)
    assert call(handler, write_obj(vid_to_data_oid(vid, 5), BLOCK, create=True)).ok
    assert call(handler, vdi_op(Opcode.DEL_VDI, "vol")).ok
    assert not _exists(handler, vid, 0)
    assert not _exists(handler, vid, 5)
    assert _orphans(handler) == []


def test_create_racing_a_delete_leaves_no_orphan(handler: Handler,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    vid = _vid(handler, "vol")
    write_data(handler, vid, 0, BLOCK)
    parked = ParkedStage(handler.state.store, vid_to_data_oid(vid, 1), monkeypatch)
    thread, results = _in_thread(handler, write_obj(vid_to_data_oid(vid, 1), BLOCK,
                                                    create=True))
    assert parked.staged.wait(WAIT)
    assert call(handler, vdi_op(Opcode.DEL_VDI, "vol")).ok
    parked.release.set()
    thread.join(WAIT)
    assert results == [Result.NO_VDI]
    assert not _exists(handler, vid, 1)
    assert _orphans(handler) == []


def test_create_racing_a_snapshot_never_changes_the_snapshot(
        handler: Handler, monkeypatch: pytest.MonkeyPatch) -> None:
    vid = _vid(handler, "vol")
    write_data(handler, vid, 0, BLOCK)
    parked = ParkedStage(handler.state.store, vid_to_data_oid(vid, 0), monkeypatch)
    thread, results = _in_thread(handler, write_obj(vid_to_data_oid(vid, 0), b"\x01" * 4096,
                                                    create=True))
    assert parked.staged.wait(WAIT)
    snap = call(handler, new_vdi("vol", snapid=1))
    assert snap.ok
    parked.release.set()
    thread.join(WAIT)
    assert results == [Result.READONLY]
    rsp = call(handler, read_obj(vid_to_data_oid(vid, 0), 4096))
    assert rsp.ok and rsp.payload == BLOCK


def test_write_to_a_deleted_vdis_shared_object_never_reaches_the_sharer(
        handler: Handler) -> None:
    """A VDI derived from a working VDI shares its objects; once that VDI is
    deleted, a stale writer of the old vid must not change the sharer's data."""
    vid = _vid(handler, "vol")
    write_data(handler, vid, 0, BLOCK)
    other = _vid(handler, "other", base=vid)
    assert handler.state.read_slots(other, 0, 1)[0] == vid
    assert call(handler, vdi_op(Opcode.DEL_VDI, "vol")).ok
    assert _exists(handler, vid, 0)  # "other" still reads it
    rsp = call(handler, write_obj(vid_to_data_oid(vid, 0), b"\x02" * 4096))
    assert rsp.result == Result.NO_VDI
    rsp = call(handler, read_obj(vid_to_data_oid(vid, 0), 4096))
    assert rsp.ok and rsp.payload == BLOCK
    assert _orphans(handler) == []
