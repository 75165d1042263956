"""The race harness's stall figures: qemu-io's per-write times and the split
of one guest write into the gateway requests tgt made for it; its rounds'
byte patterns."""

from __future__ import annotations

import pytest

from sheepdog_backend.gateway.stats import TraceEntry
from sheepdog_backend.protocol.constants import SD_INODE_INDEX_OFFSET, Opcode, Result
from sheepdog_backend.protocol.oid import vid_to_data_oid, vid_to_vdi_oid
from tests.gateway_race import BLOCK, OBJECT, pattern, split_stall, write_times

V, W = 0x51E6, 0x51E7


def test_write_times_uses_the_ops_per_second_figure() -> None:
    out = ("wrote 65536/65536 bytes at offset 0\n"
           "64 KiB, 1 ops; 00.01 sec (4.715 MiB/sec and 75.4399 ops/sec)\n"
           "write failed: Input/output error\n"
           "wrote 65536/65536 bytes at offset 4194304\n"
           "64 KiB, 1 ops; 00.11 sec (596.424 KiB/sec and 9.3191 ops/sec)\n"
           "wrote 65536/65536 bytes at offset 8388608\n"  # a second or more: h:mm:ss.ss
           "64 KiB, 1 ops; 0:00:01.05 (60.952 KiB/sec and 0.9524 ops/sec)\n")
    times = write_times(out)
    assert set(times) == {0, OBJECT, 2 * OBJECT}
    assert times[2 * OBJECT] == pytest.approx(1.05, abs=1e-3)
    assert times[0] == pytest.approx(1 / 75.4399)
    assert times[OBJECT] == pytest.approx(0.1073, abs=1e-4)


def _e(start: float, end: float, op: Opcode, oid: int | None, offset: int = 0,
       length: int = BLOCK, result: int = 0, waited: float = 0.0) -> TraceEntry:
    return TraceEntry(start, end, int(op), oid, offset, length, result, waited)


def test_a_write_held_by_a_snapshot_splits_into_its_requests() -> None:
    off = 3 * OBJECT + BLOCK  # object 3, second block
    slot = SD_INODE_INDEX_OFFSET + 4 * 3
    entries = [
        _e(0.000, 0.100, Opcode.NEW_VDI, None, waited=0.002),
        _e(0.010, 0.095, Opcode.CREATE_AND_WRITE_OBJ, vid_to_data_oid(V, 3), BLOCK,
           result=Result.READONLY, waited=0.080),  # held by the gate, then refused
        _e(0.096, 0.097, Opcode.CREATE_AND_WRITE_OBJ, vid_to_data_oid(V, 3), BLOCK,
           result=Result.READONLY),
        _e(0.097, 0.098, Opcode.LOCK_VDI, None),
        _e(0.100, 0.115, Opcode.CREATE_AND_WRITE_OBJ, vid_to_data_oid(W, 3), BLOCK),
        _e(0.100, 0.101, Opcode.CREATE_AND_WRITE_OBJ, vid_to_data_oid(W, 4), BLOCK),  # not ours
        _e(0.116, 0.118, Opcode.WRITE_OBJ, vid_to_vdi_oid(W), slot - 4, 8),
    ]
    parts = split_stall(entries, off, 0.125)
    assert parts["tries"] == 3
    assert parts["gate_wait"] == pytest.approx(0.080)
    assert parts["refused_tries"] == pytest.approx(0.005 + 0.001)
    assert parts["tgt_reload"] == pytest.approx(0.001 + 0.003)
    assert parts["data_write"] == pytest.approx(0.015)
    assert parts["slot_write"] == pytest.approx(0.002)
    assert parts["outside_gateway"] == pytest.approx(0.125 - 0.108)
    assert parts["snapshot_call"] == pytest.approx(0.098)


def test_a_write_the_gateway_never_saw_has_only_its_guest_time() -> None:
    assert split_stall([], 0, 0.02) == {"guest": 0.02}


def test_each_round_writes_every_block_a_byte_it_did_not_hold() -> None:
    # A write lost in round r leaves round r-1's byte: it must differ to be seen.
    for r in range(300):
        for i in range(640):
            assert 1 <= pattern(i, r) <= 251 and pattern(i, r + 1) != pattern(i, r)
    assert [pattern(i) for i in range(3)] == [1, 2, 3]  # round 0: as before rounds
