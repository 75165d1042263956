"""Kill -9 the server (a real `sheepdog-backend serve` process, sync on) while a
client writes checksummed blocks; after every restart each acknowledged write
reads back intact and the inode header decodes."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sheepdog_backend.exception import ConnectionClosed
from sheepdog_backend.protocol.constants import Flag, Opcode
from sheepdog_backend.protocol.header import ObjRequest, Request, VdiRequest
from sheepdog_backend.protocol.inode import InodeHeader, slot_offset
from sheepdog_backend.protocol.naming import encode_name, pad_field
from sheepdog_backend.protocol.oid import vid_to_data_oid, vid_to_vdi_oid
from sheepdog_backend.server.wire import RawConnection

BLOCK = 4096
# At least ROUNDS kills, and more (for at most MAX_SECONDS) until ACKED blocks were
# acknowledged: fsync on a busy disk can leave a round of 0.4-1.2 s without any.
ROUNDS = 4
ACKED = 4
MAX_SECONDS = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sheepdog_backend", "serve", "--data-dir", str(data_dir),
         "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("the server exited at start") from None
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the server did not start listening")


def _block(idx: int, seq: int, slot: int) -> bytes:
    body = struct.pack("<III", idx, seq, slot) + random.randbytes(BLOCK - 44)
    return body + hashlib.sha256(body).digest()


def _check_block(data: bytes) -> bool:
    return hashlib.sha256(data[:-32]).digest() == data[-32:]


@pytest.mark.slow
def test_no_acknowledged_write_is_lost_across_kill_9(tmp_path: Path) -> None:
    data_dir = tmp_path / "sheep"
    port = _free_port()
    # (idx, slot) -> acknowledged block; pending: the write in flight at the kill
    acked: dict[tuple[int, int], bytes] = {}
    tag_acked = b""
    mapped: set[int] = set()  # slots whose write was acknowledged
    seq = 0
    proc = _start(data_dir, port)
    try:
        with RawConnection("127.0.0.1", port) as conn:
            rsp = conn.call(Request(Opcode.NEW_VDI, VdiRequest(vdi_size=1 << 30),
                                    flags=Flag.WRITE, data_length=256,
                                    payload=encode_name("crash")))
            assert rsp.ok
            vid = rsp.body.vdi_id  # type: ignore[union-attr]
        rounds = 0
        deadline = time.monotonic() + MAX_SECONDS
        while rounds < ROUNDS or (len(acked) < ACKED and time.monotonic() < deadline):
            rounds += 1
            pending: dict[tuple[int, int], bytes] = {}
            tag_pending = b""
            killer = threading.Timer(random.uniform(0.4, 1.2),
                                     lambda p=proc: os.kill(p.pid, signal.SIGKILL))
            killer.start()
            try:
                with RawConnection("127.0.0.1", port, timeout=10) as conn:
                    while True:
                        seq += 1
                        idx = random.randrange(8)
                        slot = random.randrange(4)
                        data = _block(idx, seq, slot)
                        oid = vid_to_data_oid(vid, idx)
                        exists = any(key[0] == idx for key in acked)
                        pending = {(idx, slot): data}
                        if exists:
                            req = Request(Opcode.WRITE_OBJ,
                                          ObjRequest(oid=oid, offset=slot * BLOCK),
                                          flags=Flag.WRITE, data_length=BLOCK, payload=data)
                        else:
                            req = Request(Opcode.CREATE_AND_WRITE_OBJ,
                                          ObjRequest(oid=oid, offset=slot * BLOCK),
                                          flags=Flag.WRITE, data_length=BLOCK, payload=data)
                        assert conn.call(req).ok
                        acked[(idx, slot)] = data
                        pending = {}
                        if idx not in mapped:
                            slot_req = Request(
                                Opcode.WRITE_OBJ, ObjRequest(oid=vid_to_vdi_oid(vid),
                                                             offset=slot_offset(idx)),
                                flags=Flag.WRITE, data_length=4, payload=struct.pack("<I", vid))
                            assert conn.call(slot_req).ok
                            mapped.add(idx)
                        if seq % 5 == 0:  # header write: must never tear
                            tag_pending = f"tag-{seq}".encode()
                            req = Request(Opcode.WRITE_OBJ,
                                          ObjRequest(oid=vid_to_vdi_oid(vid), offset=0),
                                          flags=Flag.WRITE, data_length=512,
                                          payload=pad_field(b"crash", 256)
                                          + pad_field(tag_pending, 256))
                            assert conn.call(req).ok
                            tag_acked, tag_pending = tag_pending, b""
            except (OSError, ConnectionClosed):
                pass  # the kill landed mid-conversation
            killer.join()
            proc.wait(timeout=10)
            proc = _start(data_dir, port)
            with RawConnection("127.0.0.1", port) as conn:
                head = conn.call(Request(Opcode.READ_OBJ, ObjRequest(oid=vid_to_vdi_oid(vid)),
                                         data_length=4664 + 32))
                assert head.ok
                inode = InodeHeader.decode(head.payload)
                assert inode.name == b"crash" and inode.vdi_id == vid
                assert inode.tag in {tag_acked, tag_pending}
                slots = struct.unpack("<8I", head.payload[4664:4696])
                for idx in mapped:
                    assert slots[idx] == vid, f"slot {idx} lost"
                for (idx, slot), data in acked.items():
                    rsp = conn.call(Request(Opcode.READ_OBJ, ObjRequest(
                        oid=vid_to_data_oid(vid, idx), offset=slot * BLOCK), data_length=BLOCK))
                    assert rsp.ok and _check_block(rsp.payload)
                    assert rsp.payload == data or rsp.payload == pending.get((idx, slot)), \
                        f"acknowledged block {idx}/{slot} changed"
            # a pending write that landed counts as acknowledged from now on
            for key, data in pending.items():
                with RawConnection("127.0.0.1", port) as conn:
                    rsp = conn.call(Request(Opcode.READ_OBJ, ObjRequest(
                        oid=vid_to_data_oid(vid, key[0]), offset=key[1] * BLOCK),
                        data_length=BLOCK))
                    if rsp.ok and rsp.payload == data:
                        acked[key] = data
        assert len(acked) >= ACKED, f"{len(acked)} blocks acknowledged in {rounds} rounds"
    finally:
        proc.kill()
        proc.wait(timeout=10)
