"""The README as a newcomer follows it: every ini snippet loads, and the command
line walk-through runs, command by command, against an embedded server with no
traceback and exit 0."""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from sheepdog_backend.client import SheepdogClient
from sheepdog_backend.driver.loader import load_backends
from sheepdog_backend.testing.fixtures import EmbeddedServer

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def blocks(language: str) -> list[str]:
    """Fenced blocks of ``language`` (also indented ones inside lists)."""
    out = []
    for match in re.finditer(rf"^( *)```{language}\n(.*?)^\1```", README, re.S | re.M):
        indent = len(match.group(1))
        out.append("\n".join(line[indent:] for line in match.group(2).splitlines()) + "\n")
    return out


INI = blocks("ini")


def test_readme_has_ini_snippets() -> None:
    assert len(INI) >= 2


CINDER_DRIVER = "sheepdog_backend.cinder.SheepdogCinderDriver"


def load_cinder_snippet(path: pathlib.Path) -> None:
    """A cinder.conf snippet: Cinder (not our loader) reads it, so parse it as
    cinder-volume would the options we own (every sheepdog_* option, validated)."""
    from oslo_config import cfg

    from sheepdog_backend.cinder.options import SHEEPDOG_CINDER_OPTS

    conf = cfg.ConfigOpts()
    conf.register_opt(cfg.ListOpt("enabled_backends", default=[]))
    conf([], default_config_files=[str(path)])
    assert conf.enabled_backends, "the snippet enables no backend"
    for backend in conf.enabled_backends:
        conf.register_opts([*SHEEPDOG_CINDER_OPTS, cfg.StrOpt("volume_driver"),
                            cfg.StrOpt("volume_backend_name")], group=backend)
        group = conf[backend]
        assert group.volume_driver == CINDER_DRIVER
        for opt in SHEEPDOG_CINDER_OPTS:
            value = getattr(group, opt.dest)  # raises on an invalid value
            assert "#" not in str(value), f"[{backend}] {opt.dest} kept a comment"


@pytest.mark.parametrize("snippet", INI, ids=[f"ini{i}" for i in range(len(INI))])
def test_every_ini_snippet_loads(snippet: str, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "readme.conf"
    path.write_text(snippet)
    if CINDER_DRIVER in snippet:
        load_cinder_snippet(path)
        return
    drivers = load_backends(str(path))
    assert drivers, "the snippet enables no backend"
    for name, driver in drivers.items():
        conf = driver.configuration
        for key, value in conf.items() if hasattr(conf, "items") else []:
            assert "#" not in str(value), f"[{name}] {key} kept a comment: {value!r}"
        for gateway in getattr(driver, "gateways", []):
            assert "#" not in gateway and " " not in gateway


def test_command_line_walkthrough_runs(tmp_path: pathlib.Path) -> None:
    """The README's command-line block, with its example gateway replaced by an
    embedded server's and its example files made first."""
    block = next(b for b in blocks("sh") if "sheepdog-backend volume create v1" in b)
    with EmbeddedServer(tmp_path / "data") as srv:
        gateway = srv.gateways[0]
        conf = tmp_path / "readme.conf"
        conf.write_text(f"[DEFAULT]\nenabled_backends = main\n\n[main]\n"
                        f"sheepdog_gateways = {gateway}\n")
        (tmp_path / "disk.qcow2").unlink(missing_ok=True)
        made = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2",
                               str(tmp_path / "disk.qcow2"), "64M"], check=False,
                              capture_output=True, text=True) if _has("qemu-img") else None
        if made is None or made.returncode != 0:
            pytest.skip("qemu-img is needed to make the README's example qcow2 image")
        with SheepdogClient(srv.gateways) as client:
            client.create_vdi("imported-by-dog", 4 << 20)
        env = dict(os.environ, SHEEPDOG_BACKEND_CONFIG=str(conf))
        ran = 0
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if not line.startswith("sheepdog-backend "):
                continue
            line = line.replace("10.0.0.1:7000", gateway)
            argv = shlex.split(line)[1:]
            done = subprocess.run([sys.executable, "-m", "sheepdog_backend", *argv],
                                  cwd=tmp_path, env=env, capture_output=True, text=True,
                                  timeout=120, check=False)
            assert done.returncode == 0, (line, done.stdout, done.stderr)
            assert "Traceback" not in done.stderr, (line, done.stderr)
            ran += 1
        assert ran >= 15
        with SheepdogClient(srv.gateways) as client:
            left = {v.name for v in client.list_vdis() if not v.is_snapshot}
        assert "v1" not in left and {"v2", "c1", "c2", "k1"} <= left


def _has(program: str) -> bool:
    import shutil

    return shutil.which(program) is not None
