"""Options: bounds, types, and the generated sample file being current."""

from __future__ import annotations

import filecmp
import pathlib

import pytest
from oslo_config import cfg, generator

from sheepdog_backend import opts
from sheepdog_backend.exception import InvalidInput

ROOT = pathlib.Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "etc" / "sheepdog-backend.conf.sample"
GENERATOR_CONF = ROOT / "etc" / "oslo-config-generator" / "sheepdog-backend.conf"


def test_sample_config_is_current(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "sample.conf"
    generator.main(["--config-file", str(GENERATOR_CONF), "--output-file", str(out)])
    assert out.read_text(), "the generator wrote nothing"
    assert filecmp.cmp(out, SAMPLE, shallow=False), (
        "etc/sheepdog-backend.conf.sample is stale: run `make genconfig` and commit it")


def test_list_opts_covers_every_option_once() -> None:
    groups = dict(opts.list_opts())
    assert set(groups) == {"DEFAULT", "backend_defaults"}
    names = [o.name for o in groups["backend_defaults"]]
    assert len(names) == len(set(names))
    for cinder_name in ("sheepdog_store_address", "sheepdog_store_port", "volume_driver",
                        "volume_backend_name", "reserved_percentage",
                        "max_over_subscription_ratio"):
        assert cinder_name in names
    assert all(o.help for o in groups["backend_defaults"]), "every option explains itself"


def _conf(tmp_path: pathlib.Path, body: str) -> cfg.ConfigOpts:
    path = tmp_path / "x.conf"
    path.write_text("[b]\n" + body + "\n")
    conf = cfg.ConfigOpts()
    conf.register_opts(opts.BACKEND_OPTS, group="b")
    conf(args=[], default_config_files=[str(path)], default_config_dirs=[], use_env=False)
    return conf


@pytest.mark.parametrize("line,option", [
    ("sheepdog_store_port = 0", "sheepdog_store_port"),
    ("sheepdog_store_port = 70000", "sheepdog_store_port"),
    ("sheepdog_copies = 32", "sheepdog_copies"),
    ("sheepdog_copies = -1", "sheepdog_copies"),
    ("sheepdog_block_size_shift = 19", "sheepdog_block_size_shift"),
    ("sheepdog_block_size_shift = 32", "sheepdog_block_size_shift"),
    ("sheepdog_erasure_code = 3:1", "sheepdog_erasure_code"),
    ("sheepdog_erasure_code = 4:0", "sheepdog_erasure_code"),
    ("sheepdog_erasure_code = 4", "sheepdog_erasure_code"),
    ("sheepdog_gateways = 127.0.0.1:99999", "sheepdog_gateways"),
    ("sheepdog_gateways = not a host", "sheepdog_gateways"),
    ("sheepdog_io_window = 0", "sheepdog_io_window"),
    ("sheepdog_connect_timeout = 0", "sheepdog_connect_timeout"),
    ("reserved_percentage = 101", "reserved_percentage"),
    ("max_over_subscription_ratio = 0.5", "max_over_subscription_ratio"),
])
def test_out_of_bounds_values_are_refused(tmp_path: pathlib.Path, line: str,
                                          option: str) -> None:
    conf = _conf(tmp_path, line)
    with pytest.raises(cfg.ConfigFileValueError):
        getattr(conf.b, option)


def test_valid_values_are_normalised(tmp_path: pathlib.Path) -> None:
    conf = _conf(tmp_path, "sheepdog_gateways = 127.0.0.1, [::1]:7001, node1\n"
                           "sheepdog_erasure_code = 4:2\nsheepdog_block_size_shift = 23")
    assert conf.b.sheepdog_gateways == ["127.0.0.1:7000", "[::1]:7001", "node1:7000"]
    assert conf.b.sheepdog_erasure_code == "4:2"
    assert conf.b.sheepdog_block_size_shift == 23


@pytest.mark.parametrize("text,expected", [("2:1", (2, 1)), ("16:15", (16, 15)),
                                           ("4:2", (4, 2))])
def test_parse_erasure_code(text: str, expected: tuple[int, int]) -> None:
    assert opts.parse_erasure_code(text) == expected


@pytest.mark.parametrize("template,ok", [
    ("volume-%s", True), ("%s", True), ("pre-%s-post", True), ("100%%-%s", True),
    ("volume", False), ("%s-%s", False), ("vol-%d", False), ("%s-%x", False),
])
def test_validate_template(template: str, ok: bool) -> None:
    if ok:
        opts.validate_template("t", template)
        assert isinstance(template % "id", str)
    else:
        with pytest.raises(InvalidInput):
            opts.validate_template("t", template)
