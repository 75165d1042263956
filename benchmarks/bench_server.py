"""Object write/read throughput of the server (sync on) next to a plain
sequential file write + fsync of the same bytes on the same disk.

The server runs as a separate `sheepdog-backend serve` process (see
_serve.py).  For each object size, CREATE_AND_WRITE_OBJ is measured with 1
request in flight and with ``--window`` in flight (the server runs pipelined
object I/O concurrently), then READ_OBJ one at a time.  Everything is
measured side by side in one run; ratios are to the plain file.

Run: .venv/bin/python benchmarks/bench_server.py [--objects N] [--sizes B,B]
     [--window W]   (BENCH_DIR=... to measure another disk)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from _serve import serve  # type: ignore[import-not-found]  # benchmarks/ is not a package

from sheepdog_backend.protocol.constants import Flag, Opcode
from sheepdog_backend.protocol.header import ObjRequest, Request, VdiRequest
from sheepdog_backend.protocol.naming import encode_name
from sheepdog_backend.protocol.oid import vid_to_data_oid
from sheepdog_backend.server.wire import RawConnection


def plain_file(path: str, blocks: list[bytes]) -> float:
    start = time.perf_counter()
    with open(path, "wb") as f:
        for block in blocks:
            f.write(block)
            f.flush()
            os.fsync(f.fileno())
    return time.perf_counter() - start


def create_objects(conn: RawConnection, vid: int, blocks: list[bytes], window: int) -> float:
    start = time.perf_counter()
    inflight = 0
    for idx, block in enumerate(blocks):
        conn.send(Request(Opcode.CREATE_AND_WRITE_OBJ, ObjRequest(oid=vid_to_data_oid(vid, idx)),
                          flags=Flag.WRITE, id=idx, data_length=len(block), payload=block))
        inflight += 1
        if inflight == window:
            assert conn.recv().ok
            inflight -= 1
    for _ in range(inflight):
        assert conn.recv().ok
    return time.perf_counter() - start


def read_objects(conn: RawConnection, vid: int, blocks: list[bytes]) -> float:
    start = time.perf_counter()
    for idx, block in enumerate(blocks):
        rsp = conn.call(Request(Opcode.READ_OBJ, ObjRequest(oid=vid_to_data_oid(vid, idx)),
                                id=idx, data_length=len(block)))
        assert rsp.payload == block
    return time.perf_counter() - start


def server_round(root: str, blocks: list[bytes], window: int) -> tuple[float, float, float]:
    with serve(os.path.join(root, "sheep"), sync=True) as gateway:
        host, port = gateway.rsplit(":", 1)
        with RawConnection(host, int(port), timeout=120) as conn:
            vids = []
            for name in ("serial", "window"):
                rsp = conn.call(Request(Opcode.NEW_VDI, VdiRequest(vdi_size=1 << 40),
                                        flags=Flag.WRITE, data_length=256,
                                        payload=encode_name(name)))
                vids.append(rsp.body.vdi_id)  # type: ignore[union-attr]
            one_s = create_objects(conn, vids[0], blocks, 1)
            many_s = create_objects(conn, vids[1], blocks, window)
            read_s = read_objects(conn, vids[1], blocks)
    return one_s, many_s, read_s


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--objects", type=int, default=32)
    parser.add_argument("--sizes", default=f"{4 << 20},{64 << 10}",
                        help="object payload sizes in bytes, comma separated")
    parser.add_argument("--window", type=int, default=4, help="requests in flight")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds per size (plain and server alternate); medians shown")
    args = parser.parse_args()
    print(f"{'size':>8} {'plain MB/s':>10} {'create w1':>10} {'ratio':>6} "
          f"{f'create w{args.window}':>10} {'ratio':>6} {'read':>8} {'ratio':>6}")
    for size in (int(s) for s in args.sizes.split(",")):
        objects = args.objects if size >= 1 << 20 else args.objects * 8
        blocks = [os.urandom(size) for _ in range(objects)]
        total_mb = objects * size / 1e6
        rounds = []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as root:
                file_s = plain_file(os.path.join(root, "plain.bin"), blocks)
                rounds.append((file_s, *server_round(root, blocks, args.window)))
        file_s, one_s, many_s, read_s = (
            statistics.median(col) for col in zip(*rounds, strict=True))
        print(f"{size:8d} {total_mb / file_s:10.1f} {total_mb / one_s:10.1f} "
              f"{file_s / one_s:6.2f} {total_mb / many_s:10.1f} {file_s / many_s:6.2f} "
              f"{total_mb / read_s:8.1f} {file_s / read_s:6.2f}")
    print(f"(MB/s; {args.objects} objects of >= 1 MiB, {8 * args.objects} smaller ones; "
          f"server sync on; median of {args.repeat} alternating rounds)")


if __name__ == "__main__":
    main()
