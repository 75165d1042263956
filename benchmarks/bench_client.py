"""Client cost next to the protocol floor, data throughput by I/O window and
sync mode, and the cost of deleting a VDI as the number of VDIs grows.

Control operations: the time per call of each SheepdogClient operation against
the server, next to the time of the minimal raw request sequence for the same
job sent on one raw connection (the floor: only the decisive requests, no
validation, no header reads - except for list, whose job is reading every live
VDI's header: its floor is both bitmaps plus those header reads, pipelined
with the client's default window).  Data: write (allocating, then overwriting) and
read throughput of one VDI with io_window=1 next to the default window, with
the server's fsync on and off, each next to its floor: the same WRITE_OBJ /
READ_OBJ requests pipelined with the same window on a raw connection (no
layout, no slot handling, read payloads dropped instead of assembled).
Delete: time to delete a VDI with K allocated objects on a server holding N
other VDIs, for several N; on the same server, the time to find one name's
snapshots by walking its probe chain (``list_snapshots``, what the driver's
delete does) next to filtering a listing of every VDI (what it did before).

The server always runs as a separate `sheepdog-backend serve` process (see
_serve.py), so client and server do not share a GIL.  Every table is measured
side by side in one run.

Write cost of the issue-9 fixes (``--before PATH``, PATH a checkout of the
code before them, e.g. ``git worktree add --detach /tmp/base be8fe12``): on
one server, the same write jobs run by this tree's client and by PATH's, in
alternating child processes (best of ``--cost-rounds``): one large write that
allocates every object and its overwrite, with window 1 and the default;
64 KiB writes that each allocate an object (each pays the cross-process
check: one more GET_VDI_INFO after its slot update) and 64 KiB overwrites of
objects the VDI owns (which must cost nothing more).

Run: .venv/bin/python benchmarks/bench_client.py [--rounds N] [--data-mib M]
     [--objects K] [--others 10,100,1000] [--skip control,data,delete,cost]
     [--before PATH] [--cost-rounds R]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable

from _serve import serve  # type: ignore[import-not-found]  # benchmarks/ is not a package

from sheepdog_backend.client import SheepdogClient
from sheepdog_backend.client import requests as rq
from sheepdog_backend.client.transport import Connection, parse_address
from sheepdog_backend.client.vdi import HEADER_READ, check, vdi_body
from sheepdog_backend.protocol.bitmap import VidBitmap
from sheepdog_backend.protocol.constants import Flag
from sheepdog_backend.protocol.header import Request, Response
from sheepdog_backend.protocol.inode import OFFSET_TAG, OFFSET_VDI_SIZE
from sheepdog_backend.protocol.oid import vid_to_data_oid, vid_to_vdi_oid

MiB = 1 << 20
DEFAULT_WINDOW = SheepdogClient.__init__.__kwdefaults__["io_window"]  # type: ignore[index]


def timed(fn: Callable[[int], object], rounds: int) -> float:
    start = time.perf_counter()
    for i in range(rounds):
        fn(i)
    return (time.perf_counter() - start) / rounds


def raw_create(conn: Connection, name: str, size: int) -> int:
    return vdi_body(check(conn.call(rq.new_vdi(name, size)))).vdi_id


def raw_lookup(conn: Connection, name: str, tag: str = "") -> int:
    return vdi_body(check(conn.call(rq.get_vdi_info(name, tag)))).vdi_id


def raw_pipeline(conn: Connection, requests: Iterable[Request], window: int
                 ) -> list[Response]:
    """Send with at most ``window`` in flight; responses in arrival order."""
    out = []
    pending = 0
    for req in requests:
        if pending == window:
            out.append(conn.wait_any())
            pending -= 1
        conn.send(req)
        pending += 1
    out.extend(conn.wait_any() for _ in range(pending))
    return out


def raw_list(conn: Connection, window: int) -> int:
    """The least a listing must do: both bitmaps, then the header of every
    live vid (the same 568 bytes the client reads), pipelined the same way."""
    in_use, deleted = (VidBitmap(check(r).payload) for r in
                       raw_pipeline(conn, [rq.read_vdis(), rq.read_del_vdis()], 2))
    reqs = [rq.read_obj(vid_to_vdi_oid(vid), 0, HEADER_READ, flags=Flag.DIRECT)
            for vid in in_use if vid not in deleted]
    return len(raw_pipeline(conn, reqs, window))


def control(gateway: str, rounds: int) -> list[tuple[str, float, float]]:
    client = SheepdogClient([gateway])
    raw = Connection(parse_address(gateway))
    size = 64 * MiB
    rows = []

    def c_create(i: int) -> None:
        client.create_vdi(f"c{i}", size)

    def f_create(i: int) -> None:
        raw_create(raw, f"f{i}", size)
    rows.append(("create", timed(c_create, rounds), timed(f_create, rounds)))

    rows.append(("lookup", timed(lambda i: client.get_vdi(f"c{i}"), rounds),
                 timed(lambda i: raw_lookup(raw, f"f{i}"), rounds)))

    def c_snap(i: int) -> None:
        client.snapshot_vdi(f"c{i}", "s")

    def f_snap(i: int) -> None:  # lookup, tag write, NEW_VDI(snapid=1)
        vid = raw_lookup(raw, f"f{i}")
        check(raw.call(rq.write_obj(vid_to_vdi_oid(vid), OFFSET_TAG, b"s" + bytes(255),
                                    copies=1)))
        check(raw.call(rq.new_vdi(f"f{i}", size, base_vid=vid, snapshot=True, copies=1,
                                  block_size_shift=22)))
    rows.append(("snapshot", timed(c_snap, rounds), timed(f_snap, rounds)))

    def c_clone(i: int) -> None:
        client.clone_vdi(f"c{i}", "s", f"cc{i}")

    def f_clone(i: int) -> None:  # snapshot lookup, NEW_VDI(base)
        base = raw_lookup(raw, f"f{i}", "s")
        check(raw.call(rq.new_vdi(f"fc{i}", size, base_vid=base, copies=1,
                                  block_size_shift=22)))
    rows.append(("clone", timed(c_clone, rounds), timed(f_clone, rounds)))

    def c_resize(i: int) -> None:
        client.resize_vdi(f"c{i}", 2 * size)

    def f_resize(i: int) -> None:  # lookup, 8-byte size write
        vid = raw_lookup(raw, f"f{i}")
        check(raw.call(rq.write_obj(vid_to_vdi_oid(vid), OFFSET_VDI_SIZE,
                                    (2 * size).to_bytes(8, "little"), copies=1)))
    rows.append(("resize", timed(c_resize, rounds), timed(f_resize, rounds)))

    rows.append(("list", timed(lambda i: client.list_vdis(), rounds),
                 timed(lambda i: raw_list(raw, DEFAULT_WINDOW), rounds)))

    def c_delete(i: int) -> None:
        client.delete_vdi(f"cc{i}")

    def f_delete(i: int) -> None:  # empty clone: lookup + DEL_VDI (no slots to clear)
        raw_lookup(raw, f"fc{i}")
        check(raw.call(rq.del_vdi(f"fc{i}")))
    rows.append(("delete", timed(c_delete, rounds), timed(f_delete, rounds)))
    raw.close()
    client.close()
    return rows


def data(gateway: str, mib: int, tag: str) -> dict[tuple[str, int], float]:
    """MiB/s per (transfer, window) on one server."""
    out = {}
    payload = bytes(i % 251 for i in range(mib * MiB))
    for window in (1, DEFAULT_WINDOW):
        with SheepdogClient([gateway], io_window=window) as client:
            name = f"data-{tag}-w{window}"
            client.create_vdi(name, mib * MiB)
            os.sync()  # no writeback of earlier phases during a measurement
            start = time.perf_counter()
            client.write(name, 0, payload)  # first write: creates + slot updates
            first = time.perf_counter() - start
            os.sync()
            start = time.perf_counter()
            client.write(name, 0, payload)  # overwrite: plain WRITE_OBJ
            again = time.perf_counter() - start
            os.sync()
            start = time.perf_counter()
            back = client.read(name, 0, mib * MiB)
            read = time.perf_counter() - start
            assert back == payload
            del back
            # floors: the same object requests on a raw connection, no layout,
            # no assembly (read payloads are dropped as they arrive)
            raw = Connection(parse_address(gateway))
            vid = raw_lookup(raw, name)
            objs = range(mib * MiB >> 22)
            os.sync()
            start = time.perf_counter()
            for rsp in raw_pipeline(raw, (rq.write_obj(
                    vid_to_data_oid(vid, i), 0, payload[i << 22:(i + 1) << 22], copies=1)
                    for i in objs), window):
                check(rsp)
            raw_write = time.perf_counter() - start
            os.sync()
            start = time.perf_counter()
            for rsp in raw_pipeline(raw, (rq.read_obj(vid_to_data_oid(vid, i), 0, 1 << 22)
                                          for i in objs), window):
                check(rsp)
            raw_read = time.perf_counter() - start
            raw.close()
            out[("write (allocate)", window)] = mib / first
            out[("write (overwrite)", window)] = mib / again
            out[("overwrite floor", window)] = mib / raw_write
            out[("read", window)] = mib / read
            out[("read floor", window)] = mib / raw_read
    return out


def delete_cost(gateway: str, others: int, objects: int) -> tuple[float, float]:
    """(seconds to delete a VDI with ``objects`` allocated 1 MiB objects,
    seconds to delete an empty one) on a server holding ``others`` VDIs."""
    with SheepdogClient([gateway]) as client:
        for i in range(others):
            client.create_vdi(f"other-{i}", 64 * MiB)
        client.create_vdi("victim", objects * MiB, block_size_shift=20)
        client.create_vdi("empty", objects * MiB, block_size_shift=20)
        block = b"x" * 4096
        for idx in range(objects):
            client.write("victim", idx * MiB, block)
        start = time.perf_counter()
        assert client.delete_vdi("victim")
        full = time.perf_counter() - start
        start = time.perf_counter()
        assert client.delete_vdi("empty")
        empty = time.perf_counter() - start
        return full, empty


def snapshots_cost(gateway: str, rounds: int = 5) -> tuple[float, float]:
    """(seconds for list_snapshots of a name with 3 snapshots, seconds to find
    the same snapshots by listing every VDI), on a server already holding VDIs."""
    with SheepdogClient([gateway]) as client:
        client.create_vdi("snapped", 64 * MiB)
        for tag in ("s0", "s1", "s2"):
            client.snapshot_vdi("snapped", tag)
        chain = timed(lambda i: client.list_snapshots("snapped"), rounds)
        full = timed(lambda i: [v for v in client.list_vdis()
                                if v.is_snapshot and v.name == "snapped"], rounds)
        assert [v.tag for v in client.list_snapshots("snapped")] == ["s0", "s1", "s2"]
        return chain, full


def write_cost(gateway: str, mib: int, small: int, tag: str) -> dict[str, float]:
    """MiB/s (large) and calls/s (64 KiB) of the write jobs of the cost table,
    with only the public SheepdogClient API (so an older tree runs it too)."""
    out: dict[str, float] = {}
    payload = bytes(i % 251 for i in range(mib * MiB))
    for window in (1, DEFAULT_WINDOW):
        with SheepdogClient([gateway], io_window=window) as client:
            name = f"cost-{tag}-w{window}"
            client.create_vdi(name, mib * MiB)
            start = time.perf_counter()
            client.write(name, 0, payload)
            out[f"large allocate w{window}"] = mib / (time.perf_counter() - start)
            start = time.perf_counter()
            client.write(name, 0, payload)
            out[f"large overwrite w{window}"] = mib / (time.perf_counter() - start)
    with SheepdogClient([gateway]) as client:
        name = f"cost-{tag}-small"
        client.create_vdi(name, small * 4 * MiB)
        block = b"b" * (64 << 10)
        start = time.perf_counter()
        for i in range(small):
            client.write(name, i * 4 * MiB, block)  # each allocates one object
        out["64K allocate"] = small / (time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(small):
            client.write(name, i * 4 * MiB + (64 << 10), block)  # owned object
        out["64K overwrite"] = small / (time.perf_counter() - start)
    return out


def cost_table(before: str, mib: int, small: int, rounds: int, root: str) -> None:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = {"before": os.path.abspath(before), "after": here}
    best: dict[str, dict[str, float]] = {"before": {}, "after": {}}
    with serve(os.path.join(root, "cost"), sync=False) as gateway:
        for r in range(rounds):
            for which in ("before", "after"):  # alternate: the load drifts
                env = dict(os.environ, PYTHONPATH=trees[which])
                done = subprocess.run(
                    [sys.executable, os.path.abspath(__file__), "--cost-child", gateway,
                     "--data-mib", str(mib), "--cost-small", str(small),
                     "--cost-tag", f"{which}{r}"],
                    env=env, check=True, capture_output=True, text=True,
                    cwd=os.path.dirname(os.path.abspath(__file__)))
                for key, value in json.loads(done.stdout.splitlines()[-1]).items():
                    best[which][key] = max(best[which].get(key, 0.0), value)
    print(f"\nwrite cost of the issue-9 fixes, server sync off, best of {rounds} "
          f"(large: {mib} MiB, MiB/s; 64K: {small} calls, calls/s)")
    print(f"{'write':22} {'before':>9} {'after':>9} {'after/before':>13}")
    for key in best["after"]:
        b, a = best["before"][key], best["after"][key]
        print(f"{key:22} {b:9.1f} {a:9.1f} {a / b:13.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--data-mib", type=int, default=128)
    parser.add_argument("--objects", type=int, default=128,
                        help="allocated objects of the deleted VDI")
    parser.add_argument("--others", default="10,100,1000",
                        help="numbers of other VDIs on the server")
    parser.add_argument("--skip", default="",
                        help="comma list of: control,data,delete,cost")
    parser.add_argument("--before", default=None,
                        help="a checkout of the code before the issue-9 fixes: "
                             "prints the write cost table")
    parser.add_argument("--cost-rounds", type=int, default=2)
    parser.add_argument("--cost-small", type=int, default=64)
    parser.add_argument("--cost-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cost-tag", default="x", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cost_child:
        print(json.dumps(write_cost(args.cost_child, args.data_mib, args.cost_small,
                                    args.cost_tag)))
        return
    skip = set(filter(None, args.skip.split(",")))
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as root:
        if "control" not in skip:
            with serve(os.path.join(root, "control"), sync=False) as gateway:
                rows = control(gateway, args.rounds)
            print(f"control operations, server sync off, {args.rounds} rounds each "
                  "(ms per call)")
            print(f"{'operation':10} {'client':>9} {'floor':>9} {'ratio':>7}")
            for name, ours, floor in rows:
                print(f"{name:10} {ours * 1e3:9.2f} {floor * 1e3:9.2f} {ours / floor:7.2f}")
        if "data" not in skip:
            by: dict[bool, dict[tuple[str, int], float]] = {}
            for sync in (False, True):
                with serve(os.path.join(root, f"data-{sync}"), sync=sync) as gateway:
                    by[sync] = data(gateway, args.data_mib, "on" if sync else "off")
            w = DEFAULT_WINDOW
            print(f"\ndata: {args.data_mib} MiB, 4 MiB objects (MiB/s)")
            print(f"{'transfer':18} {'sync':>4} {'window 1':>9} {f'window {w}':>10} "
                  f"{'ratio':>7}")
            for kind in ("write (allocate)", "write (overwrite)", "overwrite floor", "read",
                         "read floor"):
                for sync in (False, True):
                    one, many = by[sync][(kind, 1)], by[sync][(kind, w)]
                    print(f"{kind:18} {'on' if sync else 'off':>4} {one:9.1f} {many:10.1f} "
                          f"{many / one:7.2f}")
            print(f"sync on / sync off, window {w}: " + ", ".join(
                f"{kind} {by[True][(kind, w)] / by[False][(kind, w)]:.2f}"
                for kind in ("write (allocate)", "write (overwrite)")))
        if args.before and "cost" not in skip:
            cost_table(args.before, args.data_mib, args.cost_small, args.cost_rounds, root)
        if "delete" not in skip:
            print(f"\ndelete a VDI with {args.objects} allocated objects, "
                  "server sync off (ms)")
            print(f"{'other VDIs':>10} {'full VDI':>9} {'empty VDI':>10} {'per object':>11}"
                  f" {'snaps: chain':>13} {'full list':>10} {'ratio':>7}")
            for n in (int(x) for x in args.others.split(",")):
                with serve(os.path.join(root, f"delete-{n}"), sync=False) as gateway:
                    full, empty = delete_cost(gateway, n, args.objects)
                    chain, listing = snapshots_cost(gateway)
                per = (full - empty) / args.objects
                print(f"{n:10d} {full * 1e3:9.1f} {empty * 1e3:10.1f} {per * 1e3:11.3f}"
                      f" {chain * 1e3:13.2f} {listing * 1e3:10.2f} {listing / chain:7.1f}")


if __name__ == "__main__":
    main()
