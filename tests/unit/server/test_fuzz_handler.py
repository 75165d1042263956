"""Fuzzing the server's handler with random and mutated requests: every
request gets a Response with a known result code (no exception escapes), none
hangs (hypothesis deadline), and a refused request changes nothing on disk
(except that a refused slot write into a deleted inode collects the objects
it would have linked, which no slot names)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sheepdog_backend.exception import ProtocolError, error_class_for_code
from sheepdog_backend.protocol.constants import Opcode, Result
from sheepdog_backend.protocol.header import Request, decode_request
from sheepdog_backend.protocol.oid import vid_to_data_oid, vid_to_vdi_oid
from sheepdog_backend.server.check import check_data_dir
from sheepdog_backend.server.handler import Handler
from tests.unit.protocol.strategies import requests as random_requests
from tests.unit.server.helpers import (
    lookup,
    new_vdi,
    open_handler,
    read_obj,
    set_slot,
    vdi_op,
    write_data,
    write_obj,
)

FUZZ = settings(max_examples=40, deadline=5000,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
NEVER = {Opcode.MAKE_FS}  # a valid format wipes the store by design


def _populated() -> tuple[Handler, str, dict[str, int]]:
    root = tempfile.mkdtemp(prefix="fuzz-handler-")
    handler = open_handler(Path(root) / "sheep")
    vids: dict[str, int] = {}
    for name in ("a", "b"):
        rsp = handler.handle(new_vdi(name, 64 << 20))
        vids[name] = rsp.body.vdi_id  # type: ignore[union-attr]
    write_data(handler, vids["a"], 0, b"\x11" * 4096)
    write_data(handler, vids["a"], 2, b"\x22" * 4096)
    snap = handler.handle(new_vdi("a", 64 << 20, snapid=1))
    vids["a-snap"] = vids["a"]
    vids["a"] = snap.body.vdi_id  # type: ignore[union-attr]
    write_data(handler, vids["b"], 1, b"\x33" * 4096)
    assert handler.handle(vdi_op(Opcode.DEL_VDI, "b")).ok
    return handler, root, vids


def _seeds(vids: dict[str, int]) -> list[Request]:
    a, snap, b = vids["a"], vids["a-snap"], vids["b"]
    return [
        write_obj(vid_to_data_oid(a, 0), b"\x44" * 512, 512, create=True,
                  cow=vid_to_data_oid(snap, 0)),
        write_obj(vid_to_data_oid(a, 3), b"\x55" * 100, create=True),
        write_obj(vid_to_data_oid(snap, 0), b"\x66" * 10),
        write_obj(vid_to_data_oid(b, 5), b"\x77" * 10, create=True),
        set_slot(a, 3, a), set_slot(b, 1, b), set_slot(snap, 7, snap),
        read_obj(vid_to_data_oid(snap, 2), 4096), read_obj(vid_to_vdi_oid(a), 4664),
        new_vdi("c", 1 << 30), new_vdi("a", 1 << 30, snapid=1), new_vdi("x", 1 << 20, base=snap),
        vdi_op(Opcode.DEL_VDI, "a"), vdi_op(Opcode.LOCK_VDI, "a"), lookup("a", "", 1),
        Request(Opcode.READ_VDIS, data_length=1 << 21),
        Request(Opcode.GET_VDI_COPIES, data_length=1 << 16),
        Request(Opcode.STAT_CLUSTER, data_length=1 << 12),
        Request(Opcode.DISCARD_OBJ, write_obj(vid_to_data_oid(a, 0), b"").body),
    ]


def _fingerprint(root: str) -> dict[str, tuple[int, int, int]]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            st_ = os.stat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (
                st_.st_size, st_.st_mtime_ns, st_.st_ino)
    return out


def _handle_and_check(handler: Handler, root: str, request: Request) -> None:
    if request.opcode in NEVER:
        return
    orphans = {f"sheep/obj/{f.oid:016x}" for f in check_data_dir(
        handler.state.data_dir, require_stopped=False).findings if f.kind == "orphan-object"}
    before = _fingerprint(root)
    response = handler.handle(request)  # must not raise
    assert response.id == request.id and response.opcode == request.opcode
    assert response.result == Result.SUCCESS or error_class_for_code(response.result)
    assert len(response.payload) <= request.data_length
    if response.result != Result.SUCCESS:
        after = _fingerprint(root)
        removed = set(before) - set(after)
        assert removed <= orphans, f"refused {request.opcode!r} removed {removed - orphans}"
        assert {k: v for k, v in after.items() if k in before} == \
            {k: v for k, v in before.items() if k in after}, \
            f"refused {request.opcode!r} ({response.result:#x}) changed the store"
        assert set(after) <= set(before), f"refused {request.opcode!r} created files"


@st.composite
def mutated(draw: st.DrawFn, seeds: list[Request]) -> Request | None:
    raw = bytearray(draw(st.sampled_from(seeds)).encode())
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, min(len(raw), 96) - 1) | st.integers(0, len(raw) - 1))
        raw[pos] = draw(st.integers(0, 255))
    try:
        return decode_request(bytes(raw))
    except ProtocolError:
        return None


def _fresh() -> Iterator[tuple[Handler, str, dict[str, int]]]:
    handler, root, vids = _populated()
    try:
        yield handler, root, vids
    finally:
        shutil.rmtree(root, ignore_errors=True)


_VIDS = _populated()
SEEDS = _seeds(_VIDS[2])
shutil.rmtree(_VIDS[1], ignore_errors=True)


@FUZZ
@given(st.lists(mutated(SEEDS), min_size=1, max_size=4))
def test_mutated_requests_get_typed_answers_and_refusals_change_nothing(
        batch: list[Request | None]) -> None:
    for handler, root, _vids in _fresh():
        for request in batch:
            if request is not None:
                _handle_and_check(handler, root, request)


@FUZZ
@given(st.lists(random_requests(max_payload=5000), min_size=1, max_size=4))
def test_random_requests_get_typed_answers_and_refusals_change_nothing(
        batch: list[Request]) -> None:
    for handler, root, _vids in _fresh():
        for request in batch:
            _handle_and_check(handler, root, decode_request(request.encode()))
