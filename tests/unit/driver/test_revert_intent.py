"""The revert record's value: what one driver writes, another reads back; a
damaged record reads as none (and is reported), never as a wrong target."""

from __future__ import annotations

import pytest

from sheepdog_backend.driver.revert import Intent


def test_round_trip() -> None:
    intent = Intent(tag="snap \u00e9\udcff", snap_vid=0xABCDEF, old_vid=0x12, size=3 << 30)
    assert Intent.decode(intent.encode()) == intent


@pytest.mark.parametrize("raw", [
    b"", b"\xff\xfe", b"[]", b"{}", b'{"tag": "s"}', b'{"tag": "s", "snap_vid": "x", '
    b'"old_vid": 1, "size": 1}', b"null", b'"text"'])
def test_damaged_records_read_as_none(raw: bytes) -> None:
    assert Intent.decode(raw) is None
