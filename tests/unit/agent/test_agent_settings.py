"""The agent's settings: its gateway's unix socket is held to what tgt's
Sheepdog store can carry, and its LUs take the unix form only with it."""

from __future__ import annotations

import pytest

from sheepdog_backend.agent import AgentSettings
from sheepdog_backend.exception import InvalidInput
from sheepdog_backend.export.tgt import lu_backing

PORTAL = ("127.0.0.1", 3260)


def test_the_socket_is_optional_and_kept() -> None:
    assert AgentSettings(host="h1", portal=PORTAL, gateway="127.0.0.1:7001").gateway_socket \
        == ""
    settings = AgentSettings(host="h1", portal=PORTAL, gateway="127.0.0.1:7001",
                             gateway_socket="/run/gw.sock")
    assert settings.gateway_socket == "/run/gw.sock"
    assert lu_backing(settings.gateway, "vol", socket=settings.gateway_socket) == \
        "unix:/run/gw.sock:vol"


@pytest.mark.parametrize("path,why", [("gw.sock", "not an absolute path"),
                                      ("/run/a:b.sock", "cannot carry ':'"),
                                      ("/" + "x" * 120, "at most 107")])
def test_a_socket_tgt_cannot_use_is_refused(path: str, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        AgentSettings(host="h1", portal=PORTAL, gateway="127.0.0.1:7001",
                      gateway_socket=path)
