"""Which vids can hold a name's family (§8.3): the probe chain, or everything."""

from __future__ import annotations

from sheepdog_backend.client.vdi import family_candidates
from sheepdog_backend.protocol.bitmap import VidBitmap
from sheepdog_backend.protocol.constants import SD_NR_VDIS, ClusterFlag

AUTO = int(ClusterFlag.AUTO_VNODES)


def test_chain_runs_from_the_hash_to_the_first_clear_bit() -> None:
    in_use = VidBitmap.from_vids([10, 11, 12, 14, 9])
    assert family_candidates(in_use, VidBitmap(), 10, AUTO) == [10, 11, 12]


def test_chain_skips_deleted_vids_but_walks_past_them() -> None:
    in_use = VidBitmap.from_vids([10, 11, 12])
    deleted = VidBitmap.from_vids([11])
    assert family_candidates(in_use, deleted, 10, AUTO) == [10, 12]


def test_chain_wraps_from_the_last_vid_to_one() -> None:
    top = SD_NR_VDIS - 1
    in_use = VidBitmap.from_vids([top - 1, top, 1, 2, 5])
    assert family_candidates(in_use, VidBitmap(), top - 1, AUTO) == [top - 1, top, 1, 2]


def test_an_empty_start_means_no_family() -> None:
    assert family_candidates(VidBitmap.from_vids([11]), VidBitmap(), 10, AUTO) == []


def test_recycling_or_unknown_clusters_consider_every_live_vid() -> None:
    in_use = VidBitmap.from_vids([3, 10, 11, 500])
    deleted = VidBitmap.from_vids([11])
    recycle = AUTO | int(ClusterFlag.RECYCLE_VID)
    assert family_candidates(in_use, deleted, 10, recycle) == [3, 10, 500]
    assert family_candidates(in_use, deleted, 10, None) == [3, 10, 500]
