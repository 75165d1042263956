"""Soak: mixed driver operations (create, write checksummed blocks, read,
snapshot, clone, extend, revert, delete) from three threads and a second
process over three gateways of one EmbeddedServer, each behind a fault proxy
that drops, delays, resets and truncates, while gateway 1 is killed and
restarted.  Afterwards every call succeeded or raised a typed error, the
cluster holds exactly the volumes the acknowledged calls imply, and every
acknowledged block (and snapshot block) reads back (soak_worker.py).

Bounded: about SHEEPDOG_SOAK_SECONDS (default 35) of operations, then the
check.  Set SHEEPDOG_SOAK_SECONDS=600 for a longer run."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from sheepdog_backend.exception import SheepdogError
from sheepdog_backend.server.check import check_data_dir
from sheepdog_backend.server.embedded import EmbeddedServer
from tests.functional import soak_worker
from tests.functional.faultproxy import RandomFaultProxy

SECONDS = float(os.environ.get("SHEEPDOG_SOAK_SECONDS", "35"))
RATES = {"drop": 0.01, "delay": 0.03, "reset": 0.01, "truncate": 0.01}
ROOT = Path(__file__).resolve().parents[2]


def test_soak_no_acknowledged_write_is_lost(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path / "sheep", ports=(0, 0, 0)).start()
    proxies = [RandomFaultProxy(addr, seed=i, rates=RATES).start()
               for i, addr in enumerate(server.addresses)]
    gateways = [p.address for p in proxies]
    direct = list(server.gateways)
    results: list[dict[str, object]] = []
    proc: subprocess.Popen[str] | None = None
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.functional.soak_worker", ",".join(gateways),
             str(SECONDS), "99", "proc", ",".join(direct)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        threads = []
        for i in range(3):
            def work(i: int = i) -> None:
                results.append(soak_worker.run(gateways, SECONDS, i, f"t{i}", direct))
            threads.append(threading.Thread(target=work, daemon=True))
        for thread in threads:
            thread.start()
        time.sleep(SECONDS / 3)
        server.stop_listener(1)  # kill a gateway ...
        time.sleep(SECONDS / 3)
        server.restart_listener(1)  # ... and bring it back
        for thread in threads:
            thread.join(SECONDS + 300)
            assert not thread.is_alive(), "a soak worker hung"
        out, err = proc.communicate(timeout=SECONDS + 300)
        assert proc.returncode == 0, f"the second process failed: {err[-2000:]}"
        results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        for proxy in proxies:
            proxy.stop()
        server.stop()
    faults: Counter[str] = Counter()
    for proxy in proxies:
        faults.update(proxy.faults)
    ops: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    untyped: list[str] = []
    losses: list[str] = []
    for result in results:
        ops.update(result["ops"])  # type: ignore[arg-type]
        errors.update(result["errors"])  # type: ignore[arg-type]
        untyped += result["untyped"]  # type: ignore[arg-type]
        losses += result["losses"]  # type: ignore[arg-type]
    report = check_data_dir(tmp_path / "sheep")
    print(f"\nsoak {SECONDS:.0f} s: operations {sum(ops.values())} {dict(ops)}")
    print(f"faults {dict(faults)}; gateway 1 killed and restarted")
    print(f"typed errors {dict(errors)}")
    print(f"retries: {soak_worker.RetryCounter.count} in this process (3 threads), "
          f"{results[-1]['retries']} in the second process")
    print(f"volumes left {[r['volumes'] for r in results]}, uncertain after a failed "
          f"call {[r['uncertain'] for r in results]}")
    print(f"connections cut (each a retry or failover): "
          f"{sum(faults[k] for k in ('drop', 'reset', 'truncate'))} by the proxies, "
          "plus those of the killed gateway")
    print(f"untyped errors {len(untyped)}: {untyped[:5]}")
    print(f"losses {len(losses)}: {losses[:10]}")
    print(f"store check: {[str(f) for f in report.findings][:5]}")
    assert len(results) == 4
    assert sum(ops.values()) > 50 and sum(faults.values()) > 0
    assert untyped == []
    assert losses == []
    assert report.count("missing-object") == 0 and report.count("stale-slots") == 0


def test_soak_shared_volume_concurrent_writers_and_snapshots(tmp_path: Path) -> None:
    """Four threads write disjoint checksummed blocks of one volume through one
    driver while a fifth snapshots it; every acknowledged block must read back.
    It runs ``seconds``, and on (at most 60 s more) until the race it is about
    has happened: 5 snapshots taken and 50 blocks acknowledged."""
    seconds = min(SECONDS, 10.0)
    snapshots_wanted, blocks_wanted = 5, 50
    with EmbeddedServer(tmp_path / "sheep", ports=(0, 0)) as server:
        driver = soak_worker.make_driver(server.gateways, tmp_path)
        volume = soak_worker.Volume(id="shared", size=1, name="shared")
        driver.create_volume(volume)
        data = driver.data_access()
        acked: list[dict[int, bytes]] = [{} for _ in range(4)]
        untyped: list[str] = []
        snaps = 0  # tried
        snapped = 0  # taken
        stop = threading.Event()

        def writer(i: int) -> None:
            rng = random.Random(i)
            while not stop.is_set():
                offset = (rng.randrange(soak_worker.REGION // soak_worker.BLOCK // 4) * 4
                          + i) * soak_worker.BLOCK
                block = rng.randbytes(soak_worker.BLOCK)
                try:
                    data.write(volume, offset, block)
                    acked[i][offset] = block
                except SheepdogError:
                    acked[i].pop(offset, None)  # undecided: not checked
                except Exception as exc:  # an untyped error is a finding
                    untyped.append(f"{type(exc).__name__}: {exc}")

        def snapshotter() -> None:
            nonlocal snaps, snapped
            while not stop.is_set():
                snaps += 1
                try:
                    driver.create_snapshot(soak_worker.Snapshot(id=f"s{snaps}", volume=volume))
                    snapped += 1
                except SheepdogError:
                    pass
                time.sleep(0.05)

        threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(4)]
        threads.append(threading.Thread(target=snapshotter, daemon=True))
        try:
            for thread in threads:
                thread.start()
            time.sleep(seconds)
            deadline = time.monotonic() + 60
            while (snapped < snapshots_wanted
                   or sum(len(per) for per in acked) < blocks_wanted) \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
        lost = [off for per in acked for off, block in per.items()
                if data.read(volume, off, len(block)) != block]
        driver.close()
    written = sum(len(per) for per in acked)
    print(f"\nshared volume: {written} acknowledged blocks, {snapped} of {snaps} snapshots "
          f"taken, losses {len(lost)}")
    assert untyped == []
    assert snapped >= snapshots_wanted and written >= blocks_wanted, \
        f"{snapped} snapshots taken, {written} blocks acknowledged"
    assert lost == []
