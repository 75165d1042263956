"""The ini loader: entry points, dotted paths, per-backend options, and one
clear error naming file, section and option for every kind of mistake."""

from __future__ import annotations

import pathlib
import textwrap

import pytest
from oslo_config import cfg

from sheepdog_backend.driver import loader
from sheepdog_backend.driver.base import VolumeDriver
from sheepdog_backend.driver.sheepdog import SheepdogDriver
from sheepdog_backend.exception import ConfigError, DriverLoadError


def write(tmp_path: pathlib.Path, text: str) -> str:
    path = tmp_path / "backends.conf"
    path.write_text(textwrap.dedent(text))
    return str(path)


TWO = """
    [DEFAULT]
    enabled_backends = fast, bulk

    [backend_defaults]
    sheepdog_request_timeout = 12
    sheepdog_copies = 2

    [fast]
    volume_driver = sheepdog
    sheepdog_gateways = 127.0.0.1:7001, [::1]:7002
    sheepdog_copies = 3

    [bulk]
    volume_driver = sheepdog_backend.driver.sheepdog.SheepdogDriver
    volume_backend_name = bulk-storage
    sheepdog_store_address = 127.0.0.2
    sheepdog_store_port = 7010
    sheepdog_erasure_code = 4:2
    sheepdog_copies = 0
"""


def test_two_backends_with_inheritance(tmp_path: pathlib.Path) -> None:
    drivers = loader.load_backends(write(tmp_path, TWO))
    assert list(drivers) == ["fast", "bulk"]
    fast, bulk = drivers["fast"], drivers["bulk"]
    assert isinstance(fast, SheepdogDriver) and isinstance(bulk, SheepdogDriver)
    assert fast.backend_name == "fast"
    assert fast.gateways == ["127.0.0.1:7001", "[::1]:7002"]
    assert fast.configuration.sheepdog_copies == 3          # the section wins
    assert fast.configuration.sheepdog_request_timeout == 12  # from [backend_defaults]
    assert fast.configuration.volume_backend_name == "fast"  # defaults to the section
    assert bulk.gateways == ["127.0.0.2:7010"]
    assert bulk.configuration.volume_backend_name == "bulk-storage"
    assert bulk.configuration.sheepdog_erasure_code == "4:2"
    assert bulk.configuration.sheepdog_request_timeout == 12
    assert bulk.configuration.sheepdog_connect_timeout == 5.0  # option default
    assert bulk.configuration.section == "bulk"


def test_load_backend_picks_first_or_named(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, TWO)
    assert loader.load_backend(path).backend_name == "fast"
    assert loader.load_backend(path, "bulk").backend_name == "bulk"
    with pytest.raises(ConfigError, match=r"backends.conf: backend 'nope' is not in"):
        loader.load_backend(path, "nope")
    assert loader.enabled_backends(path) == ["fast", "bulk"]


def test_global_conf_untouched(tmp_path: pathlib.Path) -> None:
    # Compared with before: Cinder (tests/cinder, same process) registers its own
    # enabled_backends on the global CONF when imported.
    before = set(cfg.CONF)
    loader.load_backends(write(tmp_path, TWO))
    assert "fast" not in cfg.CONF and set(cfg.CONF) == before


def test_load_driver_by_name_through_stevedore() -> None:
    drv = loader.load_driver("sheepdog", {"sheepdog_gateways": ["127.0.0.1:7100"]}, "x")
    assert isinstance(drv, SheepdogDriver) and drv.gateways == ["127.0.0.1:7100"]
    assert "sheepdog" in loader.available_drivers()


class NotADriver:
    pass


class Abstract(VolumeDriver):
    pass


@pytest.mark.parametrize("value,message", [
    ("nosuchdriver", r"\[b\] volume_driver: no volume driver named 'nosuchdriver'"),
    ("no.such.module.Driver", r"\[b\] volume_driver: .*cannot import 'no.such.module'"),
    ("sheepdog_backend.driver.sheepdog.Nope", r"\[b\] volume_driver: .*has no 'Nope'"),
    ("tests.unit.driver.test_loader.NotADriver", r"not a VolumeDriver subclass"),
    ("tests.unit.driver.test_loader.Abstract", r"does not implement: .*create_volume"),
])
def test_bad_driver(tmp_path: pathlib.Path, value: str, message: str) -> None:
    path = write(tmp_path, f"""
        [DEFAULT]
        enabled_backends = b
        [b]
        volume_driver = {value}
    """)
    with pytest.raises(DriverLoadError, match=message) as info:
        loader.load_backends(path)
    assert path in str(info.value)


@pytest.mark.parametrize("body,message", [
    ("[DEFAULT]\nenabled_backends = a\n",
     r"enabled_backends names 'a' but the file has no \[a\] section"),
    ("[DEFAULT]\nenabled_backends =\n[a]\n", r"enabled_backends is empty"),
    ("[a]\nvolume_driver = sheepdog\n", r"enabled_backends is empty"),
    ("[DEFAULT]\nenabled_backends = a,a\n[a]\n", r"names 'a' twice"),
    ("[DEFAULT]\nenabled_backends = a\n[a]\nsheepdog_store_port = 99999\n",
     r"\[a\] sheepdog_store_port: invalid value '99999': Should be less than or equal "
     r"to 65535$"),
    ("[DEFAULT]\nenabled_backends = a\n[a]\nsheepdog_copies = many\n",
     r"\[a\] sheepdog_copies: invalid value 'many'"),
    ("[DEFAULT]\nenabled_backends = a\n[backend_defaults]\nsheepdog_io_window = 0\n[a]\n",
     r"\[backend_defaults\] sheepdog_io_window: invalid value '0'"),
    ("[DEFAULT]\nenabled_backends = a\n[a]\nsheepdog_store_prot = 7000\n",
     r"\[a\] sheepdog_store_prot: unknown option .*did you mean 'sheepdog_store_port'"),
    ("[DEFAULT]\nenabled_backends = a\n[a]\nsheepdog_gateways = 127.0.0.1:0\n",
     r"\[a\] sheepdog_gateways: invalid value"),
    ("[DEFAULT]\nenabled_backends = a\n[a]\nvolume_name_template = vol\n",
     r"\[a\] volume_name_template: .*exactly one %s"),
    ("[DEFAULT]\nenabled_backends = a\n[a]\nsheepdog_copies = 2\nsheepdog_erasure_code = 4:2\n",
     r"\[a\] sheepdog_erasure_code: cannot be combined with sheepdog_copies"),
    ("[DEFAULT]\nenabled_backends = a\n[a\n", r"cannot parse"),
])
def test_config_errors_name_file_section_option(tmp_path: pathlib.Path, body: str,
                                                 message: str) -> None:
    path = write(tmp_path, body)
    with pytest.raises(ConfigError, match=message) as info:
        loader.load_backends(path)
    assert str(info.value).startswith(path)


def test_missing_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        loader.load_backends(str(tmp_path / "absent.conf"))
