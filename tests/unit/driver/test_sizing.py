"""Per-volume object size (driver/sizing.py): the rule, its limits and messages."""

from __future__ import annotations

import pytest

from sheepdog_backend.driver import sizing
from sheepdog_backend.exception import InvalidInput

GiB, TiB, PiB = 1 << 30, 1 << 40, 1 << 50


@pytest.mark.parametrize(("size", "ceiling", "cluster", "want"), [
    (10 * GiB, 0, 22, 0),            # fits the cluster's default: leave it to the cluster
    (4 * TiB, 0, 22, 0),             # exactly the 4 MiB cap
    (4 * TiB + 1, 0, 22, 23),        # one byte more: 8 MiB objects
    (5 * TiB, 0, 22, 23),
    (100 * TiB, 0, 22, 27),
    (2 * PiB, 0, 22, 31),
    (1 * GiB, 16 * TiB, 22, 24),     # the ceiling decides: room to grow to 16 TiB
    (2 * TiB, 0, 20, 21),            # a cluster formatted with 1 MiB objects
])
def test_smallest_object_size_that_holds_the_volume(size: int, ceiling: int, cluster: int,
                                                   want: int) -> None:
    assert sizing.choose_shift(size, configured=0, ceiling_bytes=ceiling,
                               cluster_shift=cluster) == want


def test_configured_shift_is_kept_and_its_limit_explained() -> None:
    assert sizing.choose_shift(GiB, configured=25, ceiling_bytes=0, cluster_shift=22) == 25
    with pytest.raises(InvalidInput, match="sheepdog_block_size_shift = 22 allows 4 TiB"):
        sizing.choose_shift(5 * TiB, configured=22, ceiling_bytes=0, cluster_shift=22)


def test_beyond_flat_volumes_and_ceiling_are_refused_with_the_reason() -> None:
    with pytest.raises(InvalidInput, match="hyper volumes"):
        sizing.choose_shift(3 * PiB, configured=0, ceiling_bytes=0, cluster_shift=22)
    with pytest.raises(InvalidInput, match="sheepdog_max_volume_size"):
        sizing.choose_shift(2 * TiB, configured=0, ceiling_bytes=TiB, cluster_shift=22)


class _Conf:
    sheepdog_max_volume_size = 0


def test_extend_past_the_cap_names_reason_and_remedy() -> None:
    sizing.check_extend(_Conf(), "v", 22, 4 * TiB)
    with pytest.raises(InvalidInput) as info:
        sizing.check_extend(_Conf(), "v", 22, 5 * TiB)
    text = str(info.value)
    assert "objects of 4 MiB" in text and "at most 4 TiB" in text
    assert "create a new volume" in text and "sheepdog_max_volume_size" in text


def test_describe_reports_object_and_max_size() -> None:
    assert sizing.describe(23) == {"object_size": 8 << 20, "max_size": 8 * TiB,
                                   "index": "flat"}
    assert sizing.describe(0) == {}
