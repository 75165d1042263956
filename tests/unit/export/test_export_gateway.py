"""Export settings with a local gateway: its address is checked like any
gateway tgt must reach, and every LU goes to it when it answers."""

from __future__ import annotations

import pytest

from sheepdog_backend.exception import GatewayUnusable, InvalidInput
from sheepdog_backend.export import ExportManager, ExportSettings


def test_export_gateway_must_be_host_and_a_port_tgt_can_reach() -> None:
    assert ExportSettings(chap=False, gateway="127.0.0.1:7001").gateway == "127.0.0.1:7001"
    with pytest.raises(GatewayUnusable, match="4 digits"):
        ExportSettings(chap=False, gateway="127.0.0.1:17001")
    with pytest.raises(InvalidInput, match="HOST:PORT"):
        ExportSettings(chap=False, gateway="127.0.0.1")


def test_pick_gateway_is_the_local_gateway_or_a_clear_refusal() -> None:
    answering: set[str] = set()
    manager = ExportManager(client=None, targets=None,  # type: ignore[arg-type]
                            settings=ExportSettings(chap=False, gateway="127.0.0.1:7001"),
                            probe=lambda g: g in answering)
    with pytest.raises(GatewayUnusable, match="sheepdog-backend gateway"):
        manager.pick_gateway()
    answering.add("127.0.0.1:7001")
    assert manager.pick_gateway() == "127.0.0.1:7001"
