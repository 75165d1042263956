"""sheepdog_export_gateway_socket: which socket paths tgt can carry, that the
option needs its gateway, the two backing-path forms tgt's LUs get, and the
probe that refuses a socket nothing answers on."""

from __future__ import annotations

import dataclasses
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sheepdog_backend.driver.base import BackendConfiguration
from sheepdog_backend.exception import ConfigError, InvalidInput
from sheepdog_backend.export import ExportSettings, settings_for
from sheepdog_backend.export.base import MAX_SOCKET_PATH, check_gateway_socket
from sheepdog_backend.export.manager import socket_answers
from sheepdog_backend.export.tgt import backing_path, backing_socket, lu_backing, parse_show

GATEWAY = "127.0.0.1:7001"
SOCKET = "/run/sheepdog-backend/gw.sock"


def test_a_socket_path_tgt_can_carry_is_kept() -> None:
    assert check_gateway_socket(SOCKET) == SOCKET
    longest = "/" + "s" * (MAX_SOCKET_PATH - 1)
    assert MAX_SOCKET_PATH == 107 and check_gateway_socket(longest) == longest


@pytest.mark.parametrize("path,why", [
    ("gw.sock", "not an absolute path"),
    ("./gw.sock", "not an absolute path"),
    ("", "not an absolute path"),
    ("/" + "s" * MAX_SOCKET_PATH, "108 bytes long: a unix socket path holds at most 107"),
    ("/run/gw:1.sock", "cannot carry ':'"),
    ("/run/gw,1.sock", "cannot carry ','"),
    ("/run/gw=1.sock", "cannot carry '='"),
    ("/run/my gw.sock", "cannot carry ' '"),
    ("/run/gw\t.sock", "cannot carry '\\\\t'"),
    ("/run/gw\n.sock", "cannot carry '\\\\n'"),
    ("/run/gw\x01.sock", "cannot carry '\\\\x01'"),
    ("/run/gw\x7f.sock", "cannot carry '\\\\x7f'"),
    ("/run/caf\u00e9.sock", "cannot carry"),
])
def test_socket_paths_tgt_cannot_carry_are_refused(path: str, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        check_gateway_socket(path)


def test_export_settings_take_the_socket_only_with_its_gateway() -> None:
    settings = ExportSettings(chap=False, gateway=GATEWAY, gateway_socket=SOCKET)
    assert (settings.gateway, settings.gateway_socket) == (GATEWAY, SOCKET)
    with pytest.raises(InvalidInput, match="without its gateway's HOST:PORT"):
        ExportSettings(chap=False, gateway_socket=SOCKET)
    with pytest.raises(InvalidInput, match="not an absolute path"):
        ExportSettings(chap=False, gateway=GATEWAY, gateway_socket="gw.sock")


def _conf(**values: object) -> BackendConfiguration:
    return BackendConfiguration({"use_chap_auth": False, **values}, section="sd")


@pytest.mark.parametrize("values,why", [
    ({"sheepdog_export_gateway_socket": SOCKET},
     "set only together with sheepdog_export_gateway"),
    ({"sheepdog_export_gateway": GATEWAY, "sheepdog_export_gateway_socket": "rel.sock"},
     "not an absolute path"),
    ({"sheepdog_export_gateway": GATEWAY, "sheepdog_export_gateway_socket": "/a:b"},
     "cannot carry ':'"),
    ({"sheepdog_export_gateway": GATEWAY,
      "sheepdog_export_gateway_socket": "/" + "s" * 200}, "at most 107"),
])
def test_settings_for_names_the_option(values: dict[str, object], why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_for(_conf(**values))
    assert type(caught.value) is ConfigError
    assert str(caught.value).startswith("[sd] sheepdog_export_gateway_socket: ")
    assert why in str(caught.value)


def test_settings_for_carries_the_socket() -> None:
    settings = settings_for(_conf(sheepdog_export_gateway=GATEWAY,
                                  sheepdog_export_gateway_socket=SOCKET))
    assert (settings.gateway, settings.gateway_socket) == (GATEWAY, SOCKET)
    assert settings_for(_conf(sheepdog_export_gateway=GATEWAY)).gateway_socket == ""


def test_the_two_backing_forms() -> None:
    assert lu_backing(GATEWAY, "vol") == backing_path("127.0.0.1", 7001, "vol") == \
        "tcp:127.0.0.1:7001:vol"
    assert lu_backing(GATEWAY, "vol", socket=SOCKET) == f"unix:{SOCKET}:vol"
    assert backing_socket(f"unix:{SOCKET}:vol") == SOCKET
    assert backing_socket("tcp:127.0.0.1:7001:vol") is None
    with pytest.raises(InvalidInput):
        lu_backing(GATEWAY, "a:b", socket=SOCKET)


def test_only_lus_through_the_local_gateway_use_its_socket() -> None:
    settings = ExportSettings(chap=False, gateway=GATEWAY, gateway_socket=SOCKET)
    assert settings.backing(GATEWAY, "vol") == f"unix:{SOCKET}:vol"
    # a record made through a cluster node before the local gateway was set
    assert settings.backing("127.0.0.1:7000", "vol") == "tcp:127.0.0.1:7000:vol"
    off = dataclasses.replace(settings, gateway_socket="")
    assert off.backing(GATEWAY, "vol") == "tcp:127.0.0.1:7001:vol"


def test_tgtadm_show_of_a_unix_lu_reads_back_as_its_backing() -> None:
    show = ("Target 1: iqn.2010-10.org.openstack:vol\n"
            "    LUN information:\n"
            "        LUN: 1\n"
            "            Size: 1074 MB, Block size: 512\n"
            f"            Backing store path: unix:{SOCKET}:vol\n"
            "            Readonly: No\n")
    (target,) = parse_show(show)
    lu = target.lun(1)
    assert lu is not None and lu.backing == lu_backing(GATEWAY, "vol", socket=SOCKET)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sdsock-") as name:  # short: sun_path
        yield Path(name)


def test_socket_answers_is_false_when_nothing_or_no_sheepdog_listens(sock_dir: Path) -> None:
    assert socket_answers(str(sock_dir / "none.sock")) is False
    path = str(sock_dir / "mute.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(4)

        def serve() -> None:  # answers one request with bytes that are no reply
            conn, _ = server.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n" + bytes(64))

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        assert socket_answers(path, timeout=2.0) is False
        thread.join(timeout=5)
        assert not thread.is_alive()
        # accepted but never answered: bounded by the timeout
        assert socket_answers(path, timeout=0.2) is False
