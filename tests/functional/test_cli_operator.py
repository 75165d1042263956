"""The CLI as an operator meets it (issue 11), always through a real subprocess:
names refused by one alphabet, messages that say what happened, exit codes that
match, global options, tables with units, [DEFAULT] refused with the reason,
an unformatted cluster and gateways of two clusters detected."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator, Sequence

import pytest

from sheepdog_backend.client import SheepdogClient
from sheepdog_backend.testing.fixtures import EmbeddedServer

ROOT = pathlib.Path(__file__).resolve().parents[2]
GiB = 1 << 30


def cli(*argv: str | bytes, ini: str | None = None, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full: list[str | bytes] = [sys.executable, "-m", "sheepdog_backend", *argv]
    if ini is not None:
        full += ["--config-file", ini]
    environ = dict(os.environ if env is None else env)
    if env is None:
        environ.pop("SHEEPDOG_BACKEND_CONFIG", None)
    return subprocess.run(full, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=environ, check=False, errors="replace")


def write_ini(path: pathlib.Path, gateways: Sequence[str], extra: str = "") -> str:
    path.write_text("[DEFAULT]\nenabled_backends = main\n\n[main]\n"
                    f"sheepdog_gateways = {', '.join(gateways)}\n"
                    "sheepdog_retry_attempts = 2\nsheepdog_retry_deadline = 5\n"
                    "sheepdog_connect_timeout = 1\n" + extra)
    return str(path)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    with EmbeddedServer(tmp_path_factory.mktemp("op") / "data") as srv:
        yield srv


@pytest.fixture(scope="module")
def ini(server: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_ini(tmp_path_factory.mktemp("opini") / "op.conf", server.gateways)


def vdis(server: EmbeddedServer) -> set[tuple[str, str]]:
    with SheepdogClient(server.gateways) as client:
        return {(v.name, v.tag) for v in client.list_vdis()}


BAD_NAMES: list[tuple[bytes, str]] = [
    (b"\xff\xfe", "not valid UTF-8"),
    (b"", "must not be empty"),
    (b"a\nb", "control characters"),
    (b"tab\tname", "control characters"),
    (b"v@s", "must not contain '@'"),
    (b"v#1", "must not contain '#'"),
    (b"x" * 256, "at most 255 bytes"),
]


@pytest.mark.parametrize(("name", "why"), BAD_NAMES, ids=[w for _, w in BAD_NAMES])
def test_bad_volume_names_exit_5_and_change_nothing(ini: str, server: EmbeddedServer,
                                                    name: bytes, why: str) -> None:
    before = vdis(server)
    commands = [["volume", "create", name, "--size", "1"]]
    if name == b"\xff\xfe":  # the case: every command that takes a name
        commands += [["volume", "show", name], ["volume", "delete", name], ["connect", name],
                     ["snapshot", "create", name, b"s1"],
                     ["volume", "create", b"ok1", "--snapshot", name + b"@s"]]
    for argv in commands:
        done = cli(*argv, ini=ini)
        assert done.returncode == 5, (argv, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr and why in done.stderr, done.stderr
    assert vdis(server) == before


def test_bad_tags_and_backing_exit_5(ini: str, server: EmbeddedServer) -> None:
    assert cli("volume", "create", "tagged", "--size", "1", ini=ini).returncode == 0
    before = vdis(server)
    for tag, why in ((b"", "must not be empty"), (b"\xff", "not valid UTF-8"),
                     (b"a\nb", "control characters"), (b"12", "only digits")):
        done = cli("snapshot", "create", "tagged", tag, ini=ini)
        assert done.returncode == 5 and why in done.stderr, done.stderr
    done = cli("volume", "create", "bk", "--size", "1", "--backing", b"sheepdog:///\xff#t",
               ini=ini)
    assert done.returncode == 5 and "Traceback" not in done.stderr, done.stderr
    assert vdis(server) == before
    assert cli("volume", "delete", "tagged", ini=ini).returncode == 0


def test_messages_say_what_happened(ini: str, server: EmbeddedServer) -> None:
    assert cli("volume", "create", "m1", "--size", "2", ini=ini).returncode == 0
    again = cli("volume", "create", "m1", "--size", "2", ini=ini)
    assert again.returncode == 0 and "already exists" in again.stdout, again.stdout
    assert "created volume" not in again.stdout
    other = cli("volume", "create", "m1", "--size", "3", ini=ini)
    assert other.returncode == 6 and "2 GiB" in other.stderr and "bytes" not in other.stderr

    gone = cli("volume", "delete", "nosuch", ini=ini)
    assert gone.returncode == 0 and "already absent" in gone.stdout, gone.stdout
    assert cli("volume", "delete", "nosuch", "--strict", ini=ini).returncode == 4
    snap = cli("snapshot", "delete", "m1", "nosnap", ini=ini)
    assert snap.returncode == 0 and "already absent" in snap.stdout, snap.stdout
    assert cli("snapshot", "delete", "m1", "nosnap", "--strict", ini=ini).returncode == 4
    missing = cli("snapshot", "list", "nosuch", ini=ini)
    assert missing.returncode == 4 and "nosuch" in missing.stderr

    shrink = cli("volume", "extend", "m1", "--size", "1", ini=ini)
    assert shrink.returncode == 5 and "2 GiB" in shrink.stderr, shrink.stderr
    assert "bytes" not in shrink.stderr
    same = cli("volume", "clone", "m1", "m1", ini=ini)
    assert same.returncode == 5 and "onto itself" in same.stderr, same.stderr
    assert cli("volume", "delete", "m1", ini=ini).returncode == 0


def test_snapshot_digits_mean_the_id_in_both_forms(ini: str, server: EmbeddedServer,
                                                   tmp_path: pathlib.Path) -> None:
    assert cli("volume", "create", "d1", "--size", "1", ini=ini).returncode == 0
    assert cli("snapshot", "create", "d1", "first", ini=ini).returncode == 0
    listed = json.loads(cli("snapshot", "list", "d1", "-f", "json", ini=ini).stdout)
    snap_id = listed[0]["snap_id"]
    by_id = cli("volume", "create", "d2", "--snapshot", f"d1@{snap_id}", ini=ini)
    assert by_id.returncode == 0 and "d1@first" in by_id.stdout, by_id.stdout
    uri = cli("volume", "create", "d3", "--size", "1", "--backing",
              f"sheepdog:///d1#{snap_id}", ini=ini)
    assert uri.returncode == 0, uri.stderr
    with SheepdogClient(server.gateways) as client:
        parent = client.find_vdi("d1", "first")
        assert parent is not None
        for clone in ("d2", "d3"):
            info = client.find_vdi(clone)
            assert info is not None and info.parent_vid == parent.vid
    assert cli("volume", "create", "d4", "--snapshot", "d1@99", ini=ini).returncode == 4
    for name in ("d2", "d3"):
        assert cli("volume", "delete", name, ini=ini).returncode == 0
    assert cli("snapshot", "delete", "d1", str(snap_id), ini=ini).returncode == 0
    assert cli("volume", "delete", "d1", ini=ini).returncode == 0


def test_usage_errors_exit_2_also_in_json(ini: str) -> None:
    missing = cli("volume", "create", "u1", ini=ini)
    assert missing.returncode == 2 and "--size" in missing.stderr
    bad = cli("--json", "volume", "create", "u1", "--size", "zero", ini=ini)
    assert bad.returncode == 2
    err = json.loads(bad.stderr)
    assert err["exit_code"] == 2 and err["error"] == "UsageError"
    assert json.loads(cli("volume", "create", "u1", "--json", ini=ini).stderr)[
        "exit_code"] == 2


def test_global_options_version_debug(ini: str, server: EmbeddedServer) -> None:
    version = cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("sheepdog-backend ")
    before = cli("--config-file", ini, "-f", "json", "volume", "list")
    assert before.returncode == 0 and isinstance(json.loads(before.stdout), list)
    env = dict(os.environ, SHEEPDOG_BACKEND_CONFIG=ini)
    debug = cli("--debug", "volume", "show", "nosuch", env=env)
    assert debug.returncode == 4 and "Traceback" in debug.stderr and "DEBUG" in debug.stderr


def test_tables_headers_units_hex(ini: str, server: EmbeddedServer) -> None:
    with SheepdogClient(server.gateways) as client:
        client.create_vdi("small4m", 4 << 20)
    try:
        table = cli("volume", "list", ini=ini)
        assert table.returncode == 0
        lines = table.stdout.splitlines()
        assert lines[0].split()[:3] == ["NAME", "SIZE", "USED"] and set(lines[1]) <= {"-", " "}
        row = next(line for line in lines if line.startswith("small4m"))
        assert "4 MiB" in row and "0.004" not in row
        listed = json.loads(cli("volume", "list", "-f", "json", ini=ini).stdout)
        vid = next(v["vid"] for v in listed if v["name"] == "small4m")
        assert f"{vid:#x}" in row
        show = cli("volume", "show", "small4m", ini=ini)
        assert f"{vid:#x}" in show.stdout and "4 MiB" in show.stdout
        assert "object_size" in show.stdout or "object" in show.stdout
        value = cli("volume", "list", "-f", "value", "-c", "name", "-c", "size_bytes", ini=ini)
        assert "small4m 4 MiB" in value.stdout.splitlines()
    finally:
        with SheepdogClient(server.gateways) as client:
            client.delete_vdi("small4m")


def test_unformatted_cluster_fails_every_command_with_7(tmp_path: pathlib.Path) -> None:
    with EmbeddedServer(tmp_path / "raw", format=False) as srv:
        ini = write_ini(tmp_path / "u.conf", srv.gateways)
        for argv in (["volume", "list"], ["snapshot", "list"], ["volume", "show", "x"],
                     ["volume", "create", "x", "--size", "1"], ["stats"],
                     ["volume", "manageable"]):
            done = cli(*argv, ini=ini)
            assert done.returncode == 7, (argv, done.stdout, done.stderr)
            assert "not formatted" in done.stderr and "dog cluster format" in done.stderr
            assert "serve" in done.stderr and done.stdout == ""


def test_gateways_of_two_clusters_are_refused(tmp_path: pathlib.Path) -> None:
    with EmbeddedServer(tmp_path / "a") as first, EmbeddedServer(tmp_path / "b") as second:
        ini = write_ini(tmp_path / "two.conf", [*first.gateways, *second.gateways])
        setup = cli("volume", "list", ini=ini)  # at set-up: both answer, they differ
        assert setup.returncode == 3, setup.stderr
        assert "another Sheepdog cluster" in setup.stderr
        only_a = write_ini(tmp_path / "a.conf", first.gateways)
        rows = json.loads(cli("stats", "-f", "json", ini=only_a).stdout)
        cluster_id = rows[0]["cluster_id"]
        assert cluster_id and int(cluster_id, 16)
        pinned = write_ini(tmp_path / "pinned.conf", [*first.gateways, *second.gateways],
                           f"sheepdog_cluster_id = {cluster_id}\n")
        only_b = vdis(second)
        first.stop()  # a new process, the right cluster down: the pin still refuses B
        done = cli("volume", "create", "stray", "--size", "1", ini=pinned)
        assert done.returncode == 3 and "sheepdog_cluster_id" in done.stderr, done.stderr
        assert vdis(second) == only_b


def test_failover_into_another_cluster_is_refused(tmp_path: pathlib.Path) -> None:
    """A long-running driver whose second gateway was down at set-up: when it
    fails over to it and it turns out to be another cluster, it refuses."""
    from sheepdog_backend.driver.base import Volume
    from sheepdog_backend.driver.loader import load_backend
    from sheepdog_backend.exception import ForeignCluster

    with EmbeddedServer(tmp_path / "b") as probe:
        port_b = probe.addresses[0][1]
    with EmbeddedServer(tmp_path / "a") as first:
        ini = write_ini(tmp_path / "f.conf", [first.gateways[0], f"127.0.0.1:{port_b}"])
        driver = load_backend(ini)
        try:
            driver.do_setup()
            driver.check_for_setup_error()  # B down: not checked yet, A is the cluster
            driver.create_volume(Volume(id="ok", size=1, name="ok"))
            with EmbeddedServer(tmp_path / "b", ports=[port_b]) as second:
                before = vdis(second)
                first.stop()
                with pytest.raises(ForeignCluster, match="another Sheepdog cluster"):
                    driver.create_volume(Volume(id="stray", size=1, name="stray"))
                assert vdis(second) == before
        finally:
            driver.close()


def test_default_section_is_refused_with_the_reason(tmp_path: pathlib.Path,
                                                    server: EmbeddedServer) -> None:
    conf = tmp_path / "d.conf"
    conf.write_text(f"[DEFAULT]\nenabled_backends = main\nsheepdog_gateways = "
                    f"{server.gateways[0]}\n\n[main]\n")
    done = cli("volume", "list", ini=str(conf))
    assert done.returncode == 3 and "[DEFAULT] sheepdog_gateways" in done.stderr
    assert "backend_defaults" in done.stderr
    conf.write_text("[DEFAULT]\nenabled_backends = main\nmade_up_option = 1\n\n[main]\n")
    done = cli("volume", "list", ini=str(conf))
    assert done.returncode == 3 and "made_up_option" in done.stderr


def test_config_dir_adds_files(tmp_path: pathlib.Path, server: EmbeddedServer) -> None:
    base = tmp_path / "base.conf"
    base.write_text("[DEFAULT]\nenabled_backends = main\n\n[main]\n"
                    "sheepdog_gateways = 127.0.0.1:1\n")
    extra = tmp_path / "conf.d"
    extra.mkdir()
    (extra / "10-gw.conf").write_text(f"[main]\nsheepdog_gateways = {server.gateways[0]}\n")
    done = cli("--config-file", str(base), "--config-dir", str(extra), "volume", "list")
    assert done.returncode == 0, done.stderr


def test_manage_unmanage_manageable_disconnect(ini: str, server: EmbeddedServer) -> None:
    with SheepdogClient(server.gateways) as client:
        client.create_vdi("byd0g", 4 << 20)
    rows = json.loads(cli("volume", "manageable", "-f", "json", ini=ini).stdout)
    assert any(r["reference"]["source-name"] == "byd0g" and r["safe_to_manage"] for r in rows)
    managed = cli("volume", "manage", "byd0g", ini=ini)
    assert managed.returncode == 0 and "1 GiB" in managed.stdout and "4 MiB" in managed.stdout
    with SheepdogClient(server.gateways) as client:
        info = client.find_vdi("byd0g")
        assert info is not None and info.size == GiB
    unmanaged = cli("volume", "unmanage", "byd0g", ini=ini)
    assert unmanaged.returncode == 0 and "kept" in unmanaged.stdout
    assert ("byd0g", "") in vdis(server)
    assert cli("volume", "unmanage", "absent0", ini=ini).returncode == 4
    dis = cli("disconnect", "byd0g", "--host", "h1", ini=ini)
    assert dis.returncode == 0 and "h1" in dis.stdout
    assert cli("disconnect", "absent0", ini=ini).returncode == 4
    assert cli("volume", "delete", "byd0g", ini=ini).returncode == 0


def test_stats_for_every_enabled_backend(tmp_path: pathlib.Path,
                                         server: EmbeddedServer) -> None:
    conf = tmp_path / "two.conf"
    conf.write_text(f"[DEFAULT]\nenabled_backends = gold, down\n\n[gold]\n"
                    f"sheepdog_gateways = {server.gateways[0]}\n\n[down]\n"
                    "sheepdog_gateways = 127.0.0.1:1\nsheepdog_retry_attempts = 1\n"
                    "sheepdog_connect_timeout = 1\n")
    done = cli("stats", ini=str(conf))
    assert done.returncode == 7, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("BACKEND") and any(ln.startswith("gold") for ln in lines)
    assert any(ln.startswith("down") and "NoGatewayAvailable" in ln for ln in lines)
    one = json.loads(cli("stats", "--backend", "gold", "-f", "json", ini=str(conf)).stdout)
    assert [r["volume_backend_name"] for r in one] == ["gold"]
