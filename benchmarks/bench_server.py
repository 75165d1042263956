"""Object write/read throughput of the embedded server (sync on) next to a plain
sequential file write + fsync of the same bytes on the same disk.

Run: .venv/bin/python benchmarks/bench_server.py [--objects N] [--size BYTES]
Prints MB/s for each and the ratios, measured side by side in one run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from sheepdog_backend.protocol.constants import Flag, Opcode
from sheepdog_backend.protocol.header import ObjRequest, Request, VdiRequest
from sheepdog_backend.protocol.naming import encode_name
from sheepdog_backend.protocol.oid import vid_to_data_oid
from sheepdog_backend.server.embedded import EmbeddedServer
from sheepdog_backend.server.wire import RawConnection


def plain_file(path: str, blocks: list[bytes]) -> float:
    start = time.perf_counter()
    with open(path, "wb") as f:
        for block in blocks:
            f.write(block)
            f.flush()
            os.fsync(f.fileno())
    return time.perf_counter() - start


def server_round(root: str, blocks: list[bytes], window: int) -> tuple[float, float]:
    with EmbeddedServer(os.path.join(root, "sheep"), sync=True) as server:
        host, port = server.addresses[0]
        with RawConnection(host, port, timeout=120) as conn:
            rsp = conn.call(Request(Opcode.NEW_VDI, VdiRequest(vdi_size=1 << 40),
                                    flags=Flag.WRITE, data_length=256,
                                    payload=encode_name("bench")))
            vid = rsp.body.vdi_id  # type: ignore[union-attr]
            start = time.perf_counter()
            inflight = 0
            for idx, block in enumerate(blocks):
                conn.send(Request(Opcode.CREATE_AND_WRITE_OBJ,
                                  ObjRequest(oid=vid_to_data_oid(vid, idx)), flags=Flag.WRITE,
                                  id=idx, data_length=len(block), payload=block))
                inflight += 1
                if inflight == window:
                    assert conn.recv().ok
                    inflight -= 1
            for _ in range(inflight):
                assert conn.recv().ok
            write_s = time.perf_counter() - start
            start = time.perf_counter()
            for idx, block in enumerate(blocks):
                rsp = conn.call(Request(Opcode.READ_OBJ, ObjRequest(oid=vid_to_data_oid(vid, idx)),
                                        id=idx, data_length=len(block)))
                assert rsp.payload == block
            read_s = time.perf_counter() - start
    return write_s, read_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=32)
    parser.add_argument("--size", type=int, default=4 << 20)
    parser.add_argument("--window", type=int, default=4, help="requests in flight")
    args = parser.parse_args()
    blocks = [os.urandom(args.size) for _ in range(args.objects)]
    total_mb = args.objects * args.size / 1e6
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as root:
        file_s = plain_file(os.path.join(root, "plain.bin"), blocks)
        write_s, read_s = server_round(root, blocks, args.window)
    print(f"{args.objects} objects x {args.size} B = {total_mb:.1f} MB, sync on")
    print(f"plain file write+fsync per block: {total_mb / file_s:8.1f} MB/s")
    print(f"server CREATE_AND_WRITE_OBJ:      {total_mb / write_s:8.1f} MB/s"
          f"  (ratio to plain file {file_s / write_s:.2f})")
    print(f"server READ_OBJ:                  {total_mb / read_s:8.1f} MB/s"
          f"  (ratio to plain file write {file_s / read_s:.2f})")


if __name__ == "__main__":
    main()
