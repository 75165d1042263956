"""Object write/read throughput of the server (sync on) next to a plain
sequential file write + fsync of the same bytes on the same disk.

The server runs as a separate `sheepdog-backend serve` process (see
_serve.py).  For each object size, CREATE_AND_WRITE_OBJ is measured with 1
request in flight and with ``--window`` in flight (the server runs pipelined
object I/O concurrently), then READ_OBJ one at a time.  Everything is
measured side by side in one run; ratios are to the plain file.

Then issue 24's fairness figure: how long a well-behaved client waits for
a 1 MiB read while 30 clients pipeline 4 MiB reads and never read their
replies and 400 connections sit idle, against a fresh `serve` process with
its default limits (sync on) each round; the scenario is the one of
tests/functional/test_server_fairness.py (``answer_under_pressure``), so the
test and the figure measure the same thing.  Goal: within 1 s.
``--fairness-only`` runs just that (``make bench`` does).

Run: .venv/bin/python benchmarks/bench_server.py [--objects N] [--sizes B,B]
     [--window W] [--fairness-rounds R] [--fairness-only]
     (BENCH_DIR=... to measure another disk)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

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


def fairness(rounds: int) -> None:
    """Print the well-behaved client's wait under pressure, ``rounds`` rounds."""
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from sheepdog_backend.client import SheepdogClient
    from tests.functional.test_server_fairness import (  # the test's own scenario
        GOAL,
        HOSTILE,
        IDLE,
        answer_under_pressure,
    )

    waits, exact = [], 0
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp, \
                serve(os.path.join(tmp, "sheep"), sync=True) as gateway:
            data = os.urandom(4 << 20)
            with SheepdogClient([gateway]) as client:
                vid = client.create_vdi("fair", 64 << 20).vid
                client.write("fair", 0, data)
            host, port = gateway.rsplit(":", 1)
            answer = answer_under_pressure(host, int(port), vid_to_data_oid(vid, 0),
                                           data[:1 << 20])
            waits.append(answer.seconds)
            exact += answer.exact
    print(f"fairness: a well-behaved client's 1 MiB read while {HOSTILE} clients never read "
          f"their replies and {IDLE} sit idle (serve, default limits): answered in "
          f"{statistics.median(waits):.2f} s median, {max(waits):.2f} s at most of {rounds} "
          f"rounds, {exact}/{rounds} exact (goal <= {GOAL:g} s: "
          f"{'met' if exact == rounds and max(waits) <= GOAL else 'missed'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--objects", type=int, default=32)
    parser.add_argument("--sizes", default=f"{4 << 20},{64 << 10}",
                        help="object payload sizes in bytes, comma separated")
    parser.add_argument("--window", type=int, default=4, help="requests in flight")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds per size (plain and server alternate); medians shown")
    parser.add_argument("--fairness-rounds", type=int, default=3,
                        help="rounds of the fairness figure (0: skip it)")
    parser.add_argument("--fairness-only", action="store_true",
                        help="measure only the fairness figure")
    args = parser.parse_args()
    if args.fairness_rounds < 0 or (args.fairness_only and not args.fairness_rounds):
        parser.error("--fairness-rounds must not be negative (nor 0 with --fairness-only)")
    if args.fairness_only:
        fairness(args.fairness_rounds)
        return
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
    if args.fairness_rounds:
        fairness(args.fairness_rounds)


if __name__ == "__main__":
    main()
