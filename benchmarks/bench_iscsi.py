"""Throughput through iSCSI (tgt's Sheepdog store, QEMU 7.2's libiscsi) next
to `dog vdi write/read` and our client, on one real sheep, in one run.

For each path the same N MiB of non-zero data are written to a fresh 1 GiB
volume, then read back:

* dog:     `dog vdi write VOL 0 N < file`, `dog vdi read VOL 0 N > file`
* client:  SheepdogClient.write_from_file / read_to_file (default io window)
* iscsi:   `qemu-img convert -n -m 16 -W` from the file to the exported LU
           through tgtd (CHAP on), `qemu-img dd bs=4M` from the LU back to a file
           (checked byte for byte); tgtd runs
           with its default 16 I/O threads, one sheep connection each.

Each figure is the median of --rounds runs; ratios are to dog.  The machine
is shared: treat the numbers as indicative.  Needs the real sheep/dog
(SHEEPDOG_INTEROP_BIN or PATH), tgtd/tgtadm and Debian's qemu-img with
qemu-block-extra; exits 0 with the reason when any is missing.

Run: .venv/bin/python benchmarks/bench_iscsi.py [--mib N] [--rounds R]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import _tgt  # type: ignore[import-not-found]  # benchmarks/ is not a package

from sheepdog_backend.driver.base import BackendConfiguration, Volume
from sheepdog_backend.driver.sheepdog import SheepdogDriver

MiB = 1 << 20


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=64, help="a multiple of 4")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.mib < 4 or args.mib % 4 or args.rounds < 1:
        parser.error("--mib must be a positive multiple of 4 and --rounds at least 1")
    size = args.mib * MiB
    results: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-iscsi-") as tmp:
        src = Path(tmp) / "src.raw"
        src.write_bytes(os.urandom(size))
        out = Path(tmp) / "out.raw"
        stack = contextlib.ExitStack()
        try:
            _tgt.require_qemu(_tgt.QEMU_IMG)
            setup = stack.enter_context(_tgt.sheep_and_tgtd(tmp))
        except _tgt.Unavailable as exc:
            print(f"bench_iscsi: skipped: {exc}")
            return 0
        with stack:
            cluster = setup.cluster
            driver = SheepdogDriver(BackendConfiguration(
                {**setup.iscsi_options(), "sheepdog_gateways": setup.gateways}),
                backend_name="bench")
            stack.callback(driver.close)
            dog_at = ["-a", "127.0.0.1", "-p", str(cluster.nodes[0].port)]
            for r in range(args.rounds):
                names = {tool: f"bench-{tool}-{r}" for tool in ("dog", "client", "iscsi")}
                for name in names.values():
                    driver.create_volume(Volume(id=name, size=1, name=name))
                dog = names["dog"]
                with src.open("rb") as f:
                    results.setdefault(("write", "dog"), []).append(_tgt.timed_run(
                        [cluster.dog, "vdi", "write", dog, "0", str(size), *dog_at], stdin=f))
                with out.open("wb") as f:
                    results.setdefault(("read", "dog"), []).append(_tgt.timed_run(
                        [cluster.dog, "vdi", "read", dog, "0", str(size), *dog_at], stdout=f))
                cli = names["client"]
                with src.open("rb") as f:
                    results.setdefault(("write", "client"), []).append(
                        timed(partial(driver.client.write_from_file, cli, f)))
                with out.open("wb") as f:
                    results.setdefault(("read", "client"), []).append(
                        timed(partial(driver.client.read_to_file, cli, f, length=size)))
                vol = Volume(id=names["iscsi"], size=1, name=names["iscsi"])
                with _tgt.attached(driver, vol) as (target, secret):
                    results.setdefault(("write", "iscsi"), []).append(
                        _tgt.qemu_write(secret, target, src))
                    results.setdefault(("read", "iscsi"), []).append(
                        _tgt.qemu_read(secret, target, out, args.mib))
                    if out.stat().st_size < size or out.read_bytes()[:size] != src.read_bytes():
                        raise RuntimeError("the bytes read through iSCSI differ from those "
                                           "written")
    print(f"iSCSI through tgt vs dog vs our client: {args.mib} MiB, median of "
          f"{args.rounds} (indicative: shared machine)")
    print(f"{'op':<6} {'path':<7} {'MiB/s':>8} {'x dog':>7}")
    for op in ("write", "read"):
        base = statistics.median(results[(op, "dog")])
        for tool in ("dog", "client", "iscsi"):
            t = statistics.median(results[(op, tool)])
            print(f"{op:<6} {tool:<7} {args.mib / t:8.1f} {base / t:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
