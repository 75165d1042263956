"""A driver call repeated because its reply was lost, or because it died between
two of its steps, leaves what one successful call leaves; a repeat that asks for
something else fails with the exact error.  SheepdogDriver loaded through its
entry point, on the embedded server; interruptions are TransportErrors raised
once from the client method named in each test."""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sheepdog_backend.driver.base import Snapshot, Volume
from sheepdog_backend.driver.clones import is_temp_tag_of, temp_tag
from sheepdog_backend.driver.loader import load_backend
from sheepdog_backend.driver.sheepdog import SheepdogDriver
from sheepdog_backend.exception import (
    ConnectionClosed,
    VdiExists,
    VolumeIsBusy,
    VolumeNotFound,
)
from sheepdog_backend.testing.fixtures import EmbeddedServer

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
OFFSETS = (0, 4 * MiB - 100, 700 * MiB)


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SheepdogDriver]:
    srv = EmbeddedServer(tmp_path_factory.mktemp("sheep") / "data")
    srv.start()
    ini: pathlib.Path = tmp_path_factory.mktemp("ini") / "sd.conf"
    ini.write_text(f"[DEFAULT]\nenabled_backends = sd\n\n[sd]\nvolume_driver = sheepdog\n"
                   f"sheepdog_gateways = {srv.gateways[0]}\nsheepdog_retry_attempts = 2\n"
                   "sheepdog_retry_deadline = 5\nsheepdog_connect_timeout = 2\n")
    drv = load_backend(str(ini))
    assert isinstance(drv, SheepdogDriver)
    try:
        yield drv
    finally:
        drv.close()
        srv.stop()


def vol(size: int = 1, label: str = "v") -> Volume:
    name = f"{label}-{uuid.uuid4().hex[:8]}"
    return Volume(id=name, size=size, name=name)


def state(drv: SheepdogDriver, *volumes: Volume) -> list[tuple[str, str, bool, int]]:
    """Every live VDI (working or snapshot) of these volumes: (name, tag, snap, size)."""
    names = {v.name for v in volumes}
    return sorted((v.name, v.tag, v.is_snapshot, v.size) for v in drv.client.list_vdis()
                  if v.name in names)


def write_marks(drv: SheepdogDriver, volume: Volume, seed: int) -> dict[int, bytes]:
    data = drv.data_access()
    marks = {off: bytes((seed + off + i) % 251 + 1 for i in range(4 * KiB))
             for off in OFFSETS}
    for off, payload in marks.items():
        data.write(volume, off, payload)
    return marks


def assert_marks(drv: SheepdogDriver, volume: Volume, marks: dict[int, bytes]) -> None:
    for off, payload in marks.items():
        assert drv.data_access().read(volume, off, len(payload)) == payload, off


def fail_once(monkeypatch: pytest.MonkeyPatch, obj: Any, method: str, *, after: bool = False,
              when: Callable[..., bool] = lambda *a, **k: True) -> list[int]:
    """Make ``obj.method`` raise ConnectionClosed once (before doing anything, or
    after doing its work when ``after``: a lost reply).  Returns a hit counter."""
    real = getattr(obj, method)
    hits: list[int] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if hits or not when(*args, **kwargs):
            return real(*args, **kwargs)
        hits.append(1)
        if after:
            real(*args, **kwargs)
        raise ConnectionClosed(f"injected: {method} interrupted")
    monkeypatch.setattr(obj, method, wrapper)
    return hits


def is_temp(src: Volume) -> Callable[..., bool]:
    """A client call on a temporary clone snapshot of ``src``: by its tag, or by
    the snapshot id the driver got back when it took it (tag left empty)."""
    return lambda name, tag="", *a, **k: name == src.name and (
        is_temp_tag_of(name, tag) or (not tag and k.get("snapid", 0) != 0))


@pytest.fixture
def source(driver: SheepdogDriver) -> Iterator[tuple[Volume, dict[int, bytes]]]:
    src = vol(1, "src")
    driver.create_volume(src)
    yield src, write_marks(driver, src, 11)
    for s in driver.list_snapshots(src):
        driver.client.delete_vdi(src.name, s["tag"])
    driver.delete_volume(src)


def single_call_state(src: Volume, dst: Volume) -> list[tuple[str, str, bool, int]]:
    return sorted([(src.name, "", False, src.size * GiB), (dst.name, "", False, dst.size * GiB)])


# -- create_cloned_volume ----------------------------------------------------------------


def test_temp_tag_is_bounded_and_names_both_ends() -> None:
    long_src, long_dst = "s" * 255, "ü" * 127
    tag = temp_tag(long_src, long_dst)
    assert len(tag.encode()) < 256 and is_temp_tag_of(long_src, tag)
    assert not is_temp_tag_of(long_dst, tag)
    assert temp_tag(long_src, long_dst) == tag != temp_tag(long_src, long_dst + "x")
    assert not is_temp_tag_of(long_src, tag + "0") and not is_temp_tag_of(long_src, "s1")


def test_clone_repeated_after_lost_reply(driver: SheepdogDriver,
                                         source: tuple[Volume, dict[int, bytes]]) -> None:
    src, marks = source
    dst = vol(2, "dst")
    driver.create_cloned_volume(dst, src)
    after = write_marks(driver, dst, 33)  # the clone is in use before the repeat arrives
    driver.create_cloned_volume(dst, src)
    driver.create_cloned_volume(dst, src)
    assert state(driver, src, dst) == single_call_state(src, dst)
    assert_marks(driver, dst, after)  # the repeat changed nothing
    assert_marks(driver, src, marks)
    driver.delete_volume(dst)


def test_clone_died_before_deleting_its_snapshot(driver: SheepdogDriver,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 source: tuple[Volume, dict[int, bytes]]
                                                 ) -> None:
    src, marks = source
    dst = vol(1, "dst")
    hits = fail_once(monkeypatch, driver.client, "delete_vdi", when=is_temp(src))
    with pytest.raises(ConnectionClosed):
        driver.create_cloned_volume(dst, src)
    assert hits == [1]
    tag = temp_tag(src.name, dst.name)
    assert state(driver, src, dst) == sorted([*single_call_state(src, dst),
                                                     (src.name, tag, True, GiB)])
    driver.create_cloned_volume(dst, src)  # the repeat finishes the job
    assert state(driver, src, dst) == single_call_state(src, dst)
    assert_marks(driver, dst, marks)
    driver.delete_volume(dst)


def test_source_delete_removes_a_leftover_temporary_snapshot(
        driver: SheepdogDriver, monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = vol(1, "src"), vol(1, "dst")
    driver.create_volume(src)
    marks = write_marks(driver, src, 5)
    driver.create_snapshot(Snapshot(id="keep", volume=src, name="keep"))
    fail_once(monkeypatch, driver.client, "delete_vdi", when=is_temp(src))
    with pytest.raises(ConnectionClosed):
        driver.create_cloned_volume(dst, src)
    monkeypatch.undo()
    # the user's snapshot still counts; the temporary one is not listed as a reason
    with pytest.raises(VolumeIsBusy, match=r"1 snapshot\(s\) \('keep'\)"):
        driver.delete_volume(src)
    assert len(driver.list_snapshots(src)) == 2, "a refused delete changes nothing"
    driver.delete_snapshot(Snapshot(id="keep", volume=src, name="keep"))
    driver.delete_volume(src)  # the control plane gave up on the clone's source
    assert state(driver, src) == []
    assert_marks(driver, dst, marks)  # the clone keeps its data
    driver.delete_volume(dst)


def test_clone_died_between_snapshot_and_clone(driver: SheepdogDriver,
                                               monkeypatch: pytest.MonkeyPatch,
                                               source: tuple[Volume, dict[int, bytes]]
                                               ) -> None:
    src, _ = source
    dst = vol(1, "dst")
    fail_once(monkeypatch, driver.client, "clone_vdi")
    fail_once(monkeypatch, driver.client, "delete_vdi", when=is_temp(src))  # cleanup dies too
    with pytest.raises(ConnectionClosed, match="clone_vdi"):
        driver.create_cloned_volume(dst, src)
    tag = temp_tag(src.name, dst.name)
    assert state(driver, src, dst) == [(src.name, "", False, GiB), (src.name, tag, True, GiB)]
    newer = write_marks(driver, src, 77)  # written after the failed attempt
    driver.create_cloned_volume(dst, src)  # starts over from a fresh snapshot
    assert state(driver, src, dst) == single_call_state(src, dst)
    assert_marks(driver, dst, newer)
    driver.delete_volume(dst)


def test_clone_whose_clone_reply_was_lost(driver: SheepdogDriver,
                                          monkeypatch: pytest.MonkeyPatch,
                                          source: tuple[Volume, dict[int, bytes]]) -> None:
    src, marks = source
    dst = vol(3, "dst")
    fail_once(monkeypatch, driver.client, "clone_vdi", after=True)
    with pytest.raises(ConnectionClosed):
        driver.create_cloned_volume(dst, src)
    assert state(driver, src, dst) == single_call_state(src, dst)  # snapshot already gone
    driver.create_cloned_volume(dst, src)  # verified through the deleted snapshot's tag
    assert state(driver, src, dst) == single_call_state(src, dst)
    assert_marks(driver, dst, marks)
    driver.delete_volume(dst)


def test_conflicting_clone_repeats_fail_and_change_nothing(
        driver: SheepdogDriver, source: tuple[Volume, dict[int, bytes]]) -> None:
    src, _ = source
    other = vol(1, "other")
    driver.create_volume(other)
    dst = vol(2, "dst")
    driver.create_cloned_volume(dst, src)
    before = state(driver, src, other, dst)
    with pytest.raises(VdiExists, match=f"clone of '{src.name}' with 2 GiB, not 3 GiB"):
        driver.create_cloned_volume(Volume(id=dst.id, size=3, name=dst.name), src)
    with pytest.raises(VdiExists, match=f"not cloned from '{other.name}'"):
        driver.create_cloned_volume(dst, other)
    plain = vol(2, "plain")
    driver.create_volume(plain)
    with pytest.raises(VdiExists, match="not a clone"):
        driver.create_cloned_volume(plain, src)
    snap = Snapshot(id="user", volume=src, name="user")
    driver.create_snapshot(snap)
    from_snap = vol(2, "fromsnap")
    driver.create_volume_from_snapshot(from_snap, snap)
    with pytest.raises(VdiExists, match="its parent is snapshot 'user'"):
        driver.create_cloned_volume(from_snap, src)
    assert state(driver, src, other, dst) == sorted([*before, (src.name, "user", True, GiB)])
    for v in (dst, plain, from_snap, other):
        driver.delete_volume(v)
    driver.delete_snapshot(snap)


def test_clone_at_the_name_limits(driver: SheepdogDriver) -> None:
    src = Volume(id="a", size=1, name="a" * 255)
    dst = Volume(id="b", size=1, name="é" * 127)  # 254 bytes of UTF-8
    driver.create_volume(src)
    driver.create_cloned_volume(dst, src)
    driver.create_cloned_volume(dst, src)
    assert state(driver, src, dst) == single_call_state(src, dst)
    driver.delete_volume(dst)
    driver.delete_volume(src)


# -- the other creates -----------------------------------------------------------------


def test_volume_from_snapshot_repeated(driver: SheepdogDriver, monkeypatch: pytest.MonkeyPatch,
                                       source: tuple[Volume, dict[int, bytes]]) -> None:
    src, marks = source
    s1, s2 = (Snapshot(id=t, volume=src, name=t) for t in ("one", "two"))
    driver.create_snapshot(s1)
    driver.create_snapshot(s2)
    dst = vol(1, "dst")
    fail_once(monkeypatch, driver.client, "clone_vdi", after=True)
    with pytest.raises(ConnectionClosed):
        driver.create_volume_from_snapshot(dst, s1)
    driver.create_volume_from_snapshot(dst, s1)
    assert state(driver, dst) == [(dst.name, "", False, GiB)]
    assert_marks(driver, dst, marks)
    with pytest.raises(VdiExists, match="not a clone of the requested snapshot"):
        driver.create_volume_from_snapshot(dst, s2)
    driver.delete_volume(dst)
    for s in (s1, s2):
        driver.delete_snapshot(s)


def test_snapshot_repeated_after_lost_reply(driver: SheepdogDriver,
                                            monkeypatch: pytest.MonkeyPatch,
                                            source: tuple[Volume, dict[int, bytes]]) -> None:
    src, _ = source
    s = Snapshot(id="s", volume=src, name="s")
    fail_once(monkeypatch, driver.client, "snapshot_vdi", after=True)
    with pytest.raises(ConnectionClosed):
        driver.create_snapshot(s)
    driver.create_snapshot(s)
    # a repeat racing the first call: its lookup saw nothing, its snapshot finds the tag taken
    monkeypatch.setattr(driver.client, "find_vdi", _none_once(driver.client.find_vdi))
    driver.create_snapshot(s)
    assert state(driver, src) == [(src.name, "", False, GiB), (src.name, "s", True, GiB)]
    driver.delete_snapshot(s)


def _none_once(real: Callable[..., Any]) -> Callable[..., Any]:
    seen: list[int] = []

    def find(name: str, tag: str = "", *args: Any) -> Any:
        if tag and not seen:
            seen.append(1)
            return None
        return real(name, tag, *args)
    return find


def test_extend_repeated_after_lost_reply(driver: SheepdogDriver,
                                          monkeypatch: pytest.MonkeyPatch,
                                          source: tuple[Volume, dict[int, bytes]]) -> None:
    src, marks = source
    fail_once(monkeypatch, driver.client, "resize_vdi", after=True)
    with pytest.raises(ConnectionClosed):
        driver.extend_volume(src, 3)
    driver.extend_volume(src, 3)
    assert state(driver, src) == [(src.name, "", False, 3 * GiB)]
    assert_marks(driver, src, marks)
    driver.extend_volume(Volume(id=src.id, size=3, name=src.name), 3)


def test_revert_repeated_and_interrupted(driver: SheepdogDriver,
                                         monkeypatch: pytest.MonkeyPatch,
                                         source: tuple[Volume, dict[int, bytes]]) -> None:
    src, marks = source
    s = Snapshot(id="r", volume=src, name="r")
    driver.create_snapshot(s)
    driver.extend_volume(src, 2)
    grown = Volume(id=src.id, size=2, name=src.name)
    want = [(src.name, "", False, 2 * GiB), (src.name, "r", True, GiB)]

    write_marks(driver, grown, 90)
    driver.revert_to_snapshot(grown, s)
    driver.revert_to_snapshot(grown, s)  # a plain repeat
    assert state(driver, src) == want
    assert_marks(driver, grown, marks)

    write_marks(driver, grown, 91)  # the rollback's reply was lost: it made the new
    fail_once(monkeypatch, driver.client, "rollback_vdi", after=True)  # VDI at its size
    with pytest.raises(ConnectionClosed):
        driver.revert_to_snapshot(grown, s)
    assert state(driver, src) == want  # never smaller, not even for a moment
    assert_marks(driver, grown, marks)
    driver.revert_to_snapshot(grown, s)
    assert state(driver, src) == want
    assert_marks(driver, grown, marks)

    write_marks(driver, grown, 92)  # died inside the rollback: old working VDI deleted
    driver.client.delete_vdi(src.name)
    driver.revert_to_snapshot(grown, s)
    assert state(driver, src) == want
    assert_marks(driver, grown, marks)
    with pytest.raises(VolumeNotFound):  # neither a working VDI nor that snapshot
        driver.revert_to_snapshot(Volume(id="x", size=1, name=f"gone-{uuid.uuid4().hex}"), s)
    driver.delete_snapshot(s)


def test_manage_existing_repeated(driver: SheepdogDriver) -> None:
    name = f"odd-{uuid.uuid4().hex[:8]}"
    driver.client.create_vdi(name, GiB + MiB)
    adopted = Volume(id="m", size=2, name=name)
    first = driver.manage_existing(adopted, {"source-name": name})
    again = driver.manage_existing(adopted, {"source-name": name})
    assert first == again == {"name": name, "size": 2}
    assert state(driver, adopted) == [(name, "", False, 2 * GiB)]
    driver.delete_volume(adopted)
