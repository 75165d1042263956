"""`make demo` runs end to end: the demo module against its own embedded server."""

from __future__ import annotations

import pathlib

import pytest

from sheepdog_backend import demo

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_demo_walks_a_volume_through_its_life(capsys: pytest.CaptureFixture[str]) -> None:
    code = demo.main(["--config", str(ROOT / "etc" / "sheepdog-backend-demo.conf")])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "FAIL" not in out
    for text in ("Start an embedded", "Snapshot it", "Clone the snapshot", "Revert",
                 "<disk type=\"network\"", "sheepdog://127.0.0.1:", "Stop the server",
                 "volume, clone and snapshot are gone"):
        assert text in out, text


def test_rewrite_config_points_every_gateway_at_the_server() -> None:
    text = ("[a]\nsheepdog_gateways = 10.0.0.1:7000, 10.0.0.2:7000\n"
            "[b]\nsheepdog_store_address = 10.0.0.9\nsheepdog_store_port = 7000\n")
    out = demo.rewrite_config(text, "127.0.0.1", 40123)
    assert "sheepdog_gateways = 127.0.0.1:40123\n" in out
    assert "sheepdog_store_address = 127.0.0.1\n" in out
    assert "sheepdog_store_port = 40123\n" in out
    assert "10.0.0" not in out
