"""Concurrent snapshots and clones of one volume through one shared driver
(issue 9, item 3), on the embedded server and on a real sheep.

Every snapshot asked for is findable by its own tag, the volume is deletable
afterwards, clones of one source into many targets all succeed with the
source's bytes and leave no temporary snapshot behind; clones into one target
succeed at least once and otherwise fail typed.  Threads are bounded (8) and
joined with a timeout."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from sheepdog_backend.driver.base import BackendConfiguration, Snapshot, Volume
from sheepdog_backend.driver.sheepdog import SheepdogDriver
from sheepdog_backend.exception import SheepdogError, VolumeNotFound
from sheepdog_backend.testing.fixtures import EmbeddedServer
from tests.realsheep import SheepCluster

KiB, MiB = 1 << 10, 1 << 20
THREADS = 8
WAIT = 120.0  # seconds for all threads of one scenario (the machine is loaded)
OFFSETS = (0, 4 * MiB + 7, 300 * MiB)


def make_driver(gateway: str) -> SheepdogDriver:
    conf = BackendConfiguration({"sheepdog_gateways": [gateway],
                                 "sheepdog_retry_attempts": 3,
                                 "sheepdog_retry_deadline": 30.0,
                                 "sheepdog_connect_timeout": 5.0,
                                 "sheepdog_request_timeout": 30.0})
    return SheepdogDriver(conf, backend_name="concurrency")


@pytest.fixture(params=["embedded", "real"])
def driver(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[SheepdogDriver]:
    if request.param == "embedded":
        srv = EmbeddedServer(tmp_path / "sheep", copies=1, format=True, sync=False)
        srv.start()
        try:
            drv = make_driver(srv.gateways[0])
            try:
                yield drv
            finally:
                drv.close()
        finally:
            srv.stop()
    else:
        with SheepCluster(tmp_path / "real", nodes=1) as cluster:
            drv = make_driver(cluster.gateways[0])
            try:
                yield drv
            finally:
                drv.close()


def vol(label: str) -> Volume:
    name = f"{label}-{uuid.uuid4().hex[:8]}"
    return Volume(id=name, size=1, name=name)


def marks(drv: SheepdogDriver, volume: Volume, seed: int) -> dict[int, bytes]:
    out = {off: bytes((seed + off + i) % 251 + 1 for i in range(4 * KiB)) for off in OFFSETS}
    for off, payload in out.items():
        drv.data_access().write(volume, off, payload)
    return out


def assert_marks(drv: SheepdogDriver, volume: Volume, want: dict[int, bytes]) -> None:
    for off, payload in want.items():
        assert drv.data_access().read(volume, off, len(payload)) == payload, (volume, off)


def run_all(calls: list[Callable[[], Any]]) -> list[tuple[str, Any]]:
    """Run ``calls`` at once; ("ok", result) or ("error", exception) each."""
    def guarded(call: Callable[[], Any]) -> tuple[str, Any]:
        try:
            return "ok", call()
        except Exception as exc:  # the test classifies it
            return "error", exc
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(guarded, c) for c in calls]
        return [f.result(timeout=WAIT) for f in futures]


def test_concurrent_snapshots_keep_their_tags(driver: SheepdogDriver) -> None:
    src = vol("snaps")
    driver.create_volume(src)
    data = marks(driver, src, 1)
    snaps = [Snapshot(id=f"s{i}", volume=src, name=f"s{i}-{uuid.uuid4().hex[:6]}")
             for i in range(THREADS)]
    results = run_all([lambda s=s: driver.create_snapshot(s) for s in snaps])
    assert [r for r in results if r[0] != "ok"] == []
    found = [driver.client.find_vdi(src.name, s.name or "") for s in snaps]
    assert all(f is not None and f.is_snapshot for f in found), found
    assert len({f.vid for f in found if f is not None}) == THREADS  # eight distinct ones
    assert sorted(s["tag"] for s in driver.list_snapshots(src)) == \
        sorted(s.name or "" for s in snaps)  # and no untagged extras
    for s in snaps:
        assert driver.client.read(src.name, 0, 4 * KiB, tag=s.name or "") == data[0]
    for s in snaps:
        driver.delete_snapshot(s)
    driver.delete_volume(src)
    assert not driver.data_access().exists(src)
    assert driver.client.list_snapshots(src.name) == []


def test_concurrent_clones_of_one_source(driver: SheepdogDriver) -> None:
    src = vol("src")
    driver.create_volume(src)
    data = marks(driver, src, 2)
    targets = [vol(f"dst{i}") for i in range(THREADS)]
    results = run_all([lambda t=t: driver.create_cloned_volume(t, src) for t in targets])
    assert [r for r in results if r[0] != "ok"] == []
    for t in targets:
        assert_marks(driver, t, data)
    assert driver.client.list_snapshots(src.name) == []  # no temporary snapshot left
    marks(driver, src, 3)  # the clones do not follow their source
    for t in targets:
        assert_marks(driver, t, data)
        driver.delete_volume(t)
    driver.delete_volume(src)
    assert not driver.data_access().exists(src)


def test_concurrent_clones_into_one_target(driver: SheepdogDriver) -> None:
    src, dst = vol("src"), vol("dst")
    driver.create_volume(src)
    data = marks(driver, src, 4)
    results = run_all([lambda: driver.create_cloned_volume(dst, src)
                       for _ in range(THREADS)])
    assert any(r[0] == "ok" for r in results)
    errors = [r[1] for r in results if r[0] == "error"]
    assert all(isinstance(e, SheepdogError) for e in errors), errors
    assert_marks(driver, dst, data)
    assert driver.client.list_snapshots(src.name) == []
    driver.delete_volume(dst)
    driver.delete_volume(src)
    with pytest.raises(VolumeNotFound):
        driver.describe_volume(src)


def test_snapshots_and_clones_of_one_volume_at_once(driver: SheepdogDriver) -> None:
    src = vol("mixed")
    driver.create_volume(src)
    data = marks(driver, src, 5)
    snaps = [Snapshot(id=f"m{i}", volume=src, name=f"m{i}") for i in range(THREADS // 2)]
    targets = [vol(f"c{i}") for i in range(THREADS // 2)]
    calls: list[Callable[[], Any]] = []
    for s, t in zip(snaps, targets, strict=True):
        calls.append(lambda s=s: driver.create_snapshot(s))
        calls.append(lambda t=t: driver.create_cloned_volume(t, src))
    results = run_all(calls)
    assert [r for r in results if r[0] != "ok"] == []
    assert sorted(s["tag"] for s in driver.list_snapshots(src)) == sorted(
        s.name or "" for s in snaps)
    for t in targets:
        assert_marks(driver, t, data)
        driver.delete_volume(t)
    for s in snaps:
        driver.delete_snapshot(s)
    driver.delete_volume(src)
    assert driver.client.list_snapshots(src.name) == []
