"""Client cost next to the protocol floor, and data throughput by I/O window.

Control operations: the time per call of each SheepdogClient operation against
the embedded server, next to the time of the minimal raw request sequence for
the same job sent on one raw connection (the floor: only the decisive requests,
no validation, no header reads).  Data: write and read throughput of one VDI
with io_window=1 next to the default window.  Everything is measured side by
side in one run against the same in-process server (sync off).

Run: .venv/bin/python benchmarks/bench_client.py [--rounds N] [--data-mib M]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

from sheepdog_backend.client import SheepdogClient
from sheepdog_backend.client import requests as rq
from sheepdog_backend.client.transport import Connection, parse_address
from sheepdog_backend.client.vdi import check, vdi_body
from sheepdog_backend.protocol.inode import OFFSET_TAG, OFFSET_VDI_SIZE
from sheepdog_backend.protocol.oid import vid_to_vdi_oid
from sheepdog_backend.testing.fixtures import EmbeddedServer

MiB = 1 << 20


def timed(fn: Callable[[int], object], rounds: int) -> float:
    start = time.perf_counter()
    for i in range(rounds):
        fn(i)
    return (time.perf_counter() - start) / rounds


def raw_create(conn: Connection, name: str, size: int) -> int:
    return vdi_body(check(conn.call(rq.new_vdi(name, size)))).vdi_id


def raw_lookup(conn: Connection, name: str, tag: str = "") -> int:
    return vdi_body(check(conn.call(rq.get_vdi_info(name, tag)))).vdi_id


def control(server: EmbeddedServer, rounds: int) -> list[tuple[str, float, float]]:
    client = SheepdogClient(server.gateways)
    raw = Connection(parse_address(server.gateways[0]))
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

    rows.append(("list", timed(lambda i: client.list_vdis(), 3),
                 timed(lambda i: (check(raw.call(rq.read_vdis())),
                                  check(raw.call(rq.read_del_vdis()))), 3)))

    def c_delete(i: int) -> None:
        client.delete_vdi(f"cc{i}")

    def f_delete(i: int) -> None:  # empty clone: lookup + DEL_VDI (no slots to clear)
        raw_lookup(raw, f"fc{i}")
        check(raw.call(rq.del_vdi(f"fc{i}")))
    rows.append(("delete", timed(c_delete, rounds), timed(f_delete, rounds)))
    raw.close()
    client.close()
    return rows


def data(server: EmbeddedServer, mib: int) -> list[tuple[str, int, float, float]]:
    out = []
    payload = bytes(i % 251 for i in range(mib * MiB))
    for window in (1, 16):
        with SheepdogClient(server.gateways, io_window=window) as client:
            name = f"data-w{window}"
            client.create_vdi(name, mib * MiB)
            start = time.perf_counter()
            client.write(name, 0, payload)  # first write: creates + slot updates
            first = time.perf_counter() - start
            start = time.perf_counter()
            client.write(name, 0, payload)  # overwrite: plain WRITE_OBJ
            again = time.perf_counter() - start
            start = time.perf_counter()
            back = client.read(name, 0, mib * MiB)
            read = time.perf_counter() - start
            assert back == payload
            out.append(("write (allocate)", window, first, mib / first))
            out.append(("write (overwrite)", window, again, mib / again))
            out.append(("read", window, read, mib / read))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--data-mib", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root, \
            EmbeddedServer(root, sync=False) as server:
        rows = control(server, args.rounds)
        print(f"control operations, {args.rounds} rounds each (ms per call)")
        print(f"{'operation':10} {'client':>9} {'floor':>9} {'ratio':>7}")
        for name, ours, floor in rows:
            print(f"{name:10} {ours * 1e3:9.2f} {floor * 1e3:9.2f} {ours / floor:7.2f}")
        print(f"\ndata: {args.data_mib} MiB, 4 MiB objects (MiB/s)")
        results = data(server, args.data_mib)
        by = {(kind, w): rate for kind, w, _t, rate in results}
        print(f"{'transfer':18} {'window 1':>9} {'window 16':>10} {'ratio':>7}")
        for kind in ("write (allocate)", "write (overwrite)", "read"):
            one, many = by[(kind, 1)], by[(kind, 16)]
            print(f"{kind:18} {one:9.1f} {many:10.1f} {many / one:7.2f}")


if __name__ == "__main__":
    main()
