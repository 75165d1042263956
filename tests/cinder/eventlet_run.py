"""The adapter and its client under eventlet, as inside cinder-volume.

Run as ``python eventlet_run.py GATEWAY (patched|plain)``; with ``patched`` it
monkey-patches first exactly as cinder-volume does (Cinder's
``monkey_patch.patch()``), so the client's threading locks, sockets and timeouts
are eventlet's.  Then several threads (green ones when patched) each take a
volume through create, a multi-object write, snapshot, clone and delete,
concurrently on one shared driver, the patched workers importing their data as
an image.  (Unpatched, the workers write it directly: Cinder's image_utils
uses eventlet's tpool, which only works from native threads once patched; the
main thread imports one image both ways.)  A dead gateway must fail
within its timeout instead of hanging the hub.  Prints ``RESULT {json}``.
"""

from __future__ import annotations

import sys

if sys.argv[2] == "patched":
    from cinder import monkey_patch

    monkey_patch.patch()

import hashlib
import json
import os
import tempfile
import threading
import time
from typing import Any

THREADS = 4
PATCHED = sys.argv[2] == "patched"
MiB = 1 << 20


def main(gateway: str) -> dict[str, Any]:
    import socket

    from tests.cinder.conftest import CinderBackend
    from tests.cinder.image_service import MemoryImageService

    out: dict[str, Any] = {"green_socket": "green" in socket.socket.__module__,
                           "green_lock": "eventlet" in type(threading.Lock()).__module__}
    work = tempfile.mkdtemp(prefix="sd-eventlet-")
    be = CinderBackend([gateway], sheepdog_io_window=8)
    be.set(image_conversion_dir=os.path.join(work, "conversion"))
    be.driver.do_setup(be.ctx)
    be.driver.check_for_setup_error()
    images = MemoryImageService()
    results: dict[int, dict[str, Any]] = {}
    errors: list[str] = []

    def worker(n: int) -> None:
        try:
            drv = be.driver
            body = os.urandom(6 * MiB + n)  # spans objects: pipelined writes and reads
            vol = be.created(1)
            if PATCHED:
                images.add(f"img-{n}", body)
                drv.copy_image_to_volume(be.ctx, vol, images, f"img-{n}")
            else:
                be.write(vol, 0, body)
            snap = be.snapshot(vol)
            snap.update(drv.create_snapshot(snap))
            be.write(vol, 0, b"overwritten")
            clone = be.volume(1)
            clone.update(drv.create_volume_from_snapshot(clone, snap))
            results[n] = {
                "clone_matches": be.read(clone, 0, len(body)) == body,
                "volume_changed": be.read(vol, 0, 11) == b"overwritten",
                "sha": hashlib.sha256(be.read(clone, 0, len(body))).hexdigest()
                == hashlib.sha256(body).hexdigest(),
            }
            drv.delete_volume(clone)
            drv.delete_snapshot(snap)
            drv.delete_volume(vol)
        except Exception as exc:  # reported to the test, which fails on it
            errors.append(f"worker {n}: {type(exc).__name__}: {exc}")

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    out["hung"] = sum(t.is_alive() for t in threads)
    out["workers"] = results
    out["errors"] = errors
    out["seconds"] = round(time.monotonic() - started, 2)

    body = os.urandom(5 * MiB + 17)
    images.add("img-main", body)
    vol = be.created(1)
    be.driver.copy_image_to_volume(be.ctx, vol, images, "img-main")
    out["image_round_trip"] = be.read(vol, 0, len(body)) == body
    be.driver.delete_volume(vol)
    out["left"] = be.vdis()
    be.close()

    # A gateway nobody answers on must fail within its timeout, not block the hub.
    dead = CinderBackend(["127.0.0.1:9"], sheepdog_retry_attempts=2,
                         sheepdog_retry_deadline=3.0, sheepdog_connect_timeout=1.0)
    ticks = [0]
    stop = threading.Event()

    def ticker() -> None:  # keeps running only if the failing call yields
        while not stop.is_set():
            ticks[0] += 1
            time.sleep(0.01)

    tick = threading.Thread(target=ticker)
    tick.start()
    began = time.monotonic()
    try:
        dead.driver.check_for_setup_error()
        out["dead"] = "no error"
    except Exception as exc:
        out["dead"] = type(exc).__name__
    out["dead_seconds"] = round(time.monotonic() - began, 2)
    stop.set()
    tick.join(timeout=10)
    out["ticks_while_failing"] = ticks[0]
    dead.close()
    return out


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1])))
