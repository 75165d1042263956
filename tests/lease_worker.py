"""One driver in its own process, for the tests of several processes on one volume.

Run as ``python -m tests.lease_worker SPEC`` from the repository root, SPEC
being JSON:

    {"gateways": ["127.0.0.1:7000"], "conf": {...backend options...},
     "ops": [["create_snapshot", {"volume": "v1", "snapshot": "s1"}], ...],
     "pause": {"before": "sheepdog_backend.client.client:SheepdogClient.delete_vdi",
               "signal": "STOP"}}

The worker builds its driver, prints ``ready`` and waits for one line on
stdin (so a test starts all its workers at the same moment), runs ``ops`` in
order and prints one JSON line per operation: ``{"ok": result}`` or
``{"error": "ClassName", "message": "..."}``.  ``pause`` makes the process send
itself ``signal`` (STOP or KILL) the first time the function ``before``
(``module:function`` or ``module:Class.method``) is about to run: a holder
stopped or killed between two steps of its operation.  The test that started
it stops it by its pid whatever happens.

Also for the tests of leases elsewhere: ``held_leases`` (which volumes' leases
are held now) and ``before_first_call`` (a hook before a function's first
call in this process; the Cinder services of test_active_active use it).
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from sheepdog_backend.client import lease_records
from sheepdog_backend.driver.base import BackendConfiguration, Snapshot, Volume
from sheepdog_backend.driver.sheepdog import SheepdogDriver


def volume(name: str, size: int = 1) -> Volume:
    return Volume(id=name, size=size, name=name)


def run_op(driver: SheepdogDriver, op: str, a: dict[str, Any]) -> Any:
    vol = volume(a["volume"], a.get("size", 1))
    if op == "create_volume":
        return driver.create_volume(vol)
    if op == "delete_volume":
        return driver.delete_volume(vol)
    if op == "extend_volume":
        return driver.extend_volume(vol, a["new_size"])
    if op == "create_snapshot":
        return driver.create_snapshot(Snapshot(id=a["snapshot"], volume=vol,
                                               name=a["snapshot"]))
    if op == "delete_snapshot":
        return driver.delete_snapshot(Snapshot(id=a["snapshot"], volume=vol,
                                               name=a["snapshot"]))
    if op == "create_cloned_volume":
        return driver.create_cloned_volume(vol, volume(a["source"]))
    if op == "create_volume_from_snapshot":
        src = volume(a["source"])
        return driver.create_volume_from_snapshot(
            vol, Snapshot(id=a["snapshot"], volume=src, name=a["snapshot"]))
    if op == "revert_to_snapshot":
        return driver.revert_to_snapshot(vol, Snapshot(id=a["snapshot"], volume=vol,
                                                       name=a["snapshot"]))
    raise SystemExit(f"unknown operation {op!r}")


def held_leases(drv: SheepdogDriver, *names: str) -> list[str]:
    """Those of ``names`` whose lease has a live record (is held)."""
    def held(name: str) -> bool:
        def look(conn: Any) -> bool:
            top = lease_records.find_top(conn, name)
            return bool(top) and lease_records.read_gens(conn, name, [top])[top].live is not None
        return bool(drv.client.run(look, what="read a lease"))
    return [n for n in names if held(n)]


def before_first_call(target: str, action: Callable[[], None]) -> None:
    """Run ``action`` the first time ``target`` (``module:function`` or
    ``module:Class.method``) is about to run in this process."""
    module, _, path = target.partition(":")
    owner: Any = importlib.import_module(module)
    *parents, attr = path.split(".")
    for part in parents:
        owner = getattr(owner, part)
    original = getattr(owner, attr)
    fired: list[bool] = []

    def first(*args: Any, **kwargs: Any) -> Any:
        if not fired:
            fired.append(True)
            action()
        return original(*args, **kwargs)
    setattr(owner, attr, first)


def install_pause(before: str, signame: str) -> None:
    """Send this process ``signame`` the first time ``before`` is called."""
    sig = {"STOP": signal.SIGSTOP, "KILL": signal.SIGKILL}[signame]

    def pause() -> None:
        print(json.dumps({"paused": before}), flush=True)
        os.kill(os.getpid(), sig)
    before_first_call(before, pause)


def main() -> None:
    spec = json.loads(sys.argv[1])
    conf = BackendConfiguration({"sheepdog_gateways": spec["gateways"], **spec.get("conf", {})})
    driver = SheepdogDriver(conf, backend_name="worker")
    pause = spec.get("pause")
    if pause:
        install_pause(pause["before"], pause["signal"])
    try:
        driver.do_setup()
        print("ready", flush=True)
        sys.stdin.readline()
        for op, args in spec["ops"]:
            try:
                result = run_op(driver, op, args)
                print(json.dumps({"ok": result if isinstance(result, dict) else None}),
                      flush=True)
            except Exception as exc:  # reported to the test, which classifies it
                print(json.dumps({"error": type(exc).__name__, "message": str(exc)}),
                      flush=True)
    finally:
        driver.close()


if __name__ == "__main__":
    main()
