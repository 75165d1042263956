"""The LUs' views of their inodes: which reads are checked, when a LU must
reload, how connections are matched to their VDI, and what sharing and the
stamp say."""

from __future__ import annotations

from sheepdog_backend.gateway.views import CHECK, RELOAD, LuViews
from sheepdog_backend.protocol.constants import SD_INODE_INDEX_OFFSET
from sheepdog_backend.protocol.inode import (
    FRESHNESS_LENGTH,
    OFFSET_FRESHNESS,
    OFFSET_STAMP,
    STAMP,
)

V, PARENT, OTHER = 0x10, 0x0F, 0x20


def header(stamp: int, hosts: int) -> bytes:
    """The first SD_INODE_INDEX_OFFSET bytes of an inode with that stamp."""
    raw = bytearray(SD_INODE_INDEX_OFFSET)
    STAMP.pack_into(raw, OFFSET_STAMP, stamp, hosts)
    return bytes(raw)


def freshness(stamp: int, hosts: int, snap_ctime: int = 0) -> bytes:
    """What a gateway's freshness read returns (snap_ctime ... stamp)."""
    raw = bytearray(header(stamp, hosts)[OFFSET_FRESHNESS:])
    raw[0:8] = snap_ctime.to_bytes(8, "little")
    assert len(raw) == FRESHNESS_LENGTH
    return bytes(raw)


def test_reads_of_an_unshared_vdi_are_not_checked() -> None:
    views = LuViews()
    views.loaded("conn", V, header(1, hosts=1))
    assert views.shared == 0 and views.plan("conn", V) is None


def test_reads_of_a_shared_vdi_are_checked_and_a_changed_stamp_reloads() -> None:
    views = LuViews()
    views.loaded("conn", V, header(1, hosts=2))
    assert views.shared == 1
    assert views.plan("conn", PARENT) == (CHECK, V)  # its LU's VDI, not the object's
    assert views.fresh(V, freshness(1, 2))
    assert not views.fresh(V, freshness(2, 2))  # another host stamped it
    assert not views.fresh(V, freshness(1, 2, snap_ctime=99))  # snapshotted since
    views.loaded("conn", V, header(2, hosts=2))  # tgt reloaded
    assert views.fresh(V, freshness(2, 2)) and views.reloads == 2


def test_an_unmatched_connection_reading_another_vdi_reloads_once_to_be_matched() -> None:
    views = LuViews()
    views.loaded("main", V, header(1, hosts=2))
    assert views.plan("thread", PARENT) == (RELOAD, 0)
    views.locked("thread", OTHER)  # tgt's reload locks its own VDI on that connection
    assert views.plan("thread", PARENT) is None  # OTHER's LU: not shared
    assert views.plan("thread2", V) == (CHECK, V)  # an object of a known VDI matches


def test_own_stamps_keep_an_unshared_view_current_but_not_a_shared_one() -> None:
    views = LuViews()
    views.loaded("a", V, header(1, hosts=1))
    views.stamped(V, 5)
    assert views.fresh(V, freshness(5, 1))
    views.polled(V, 2)  # a second host attached
    views.stamped(V, 6)  # maybe after the other host's stamp: check once more
    assert not views.fresh(V, freshness(6, 2))


def test_the_poll_learns_sharing_and_unused_views_are_forgotten() -> None:
    now = [0.0]
    views = LuViews(forget=60.0, clock=lambda: now[0])
    views.loaded("a", V, header(1, hosts=1))
    views.polled(V, 2)
    assert views.shared == 1 and views.watched() == [V]
    now[0] = 61.0
    assert views.watched() == [] and views.shared == 0
    views.loaded("b", OTHER, header(1, hosts=2))
    assert views.plan("a", V) == (RELOAD, 0)  # "a" was forgotten with V: matched anew
