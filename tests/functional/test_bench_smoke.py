"""The issue-13 benchmark script runs end to end at tiny sizes (embedded
server, no dog) and prints its table; the export it measures is sparse.  The
issue-24 scripts refuse bad arguments before starting anything."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sheepdog_backend.client import SheepdogClient
from sheepdog_backend.client.lease_records import ANCHOR
from sheepdog_backend.testing.fixtures import EmbeddedServer

ROOT = Path(__file__).resolve().parents[2]


def test_bench_sheep_runs_and_prints_the_table(tmp_path: Path) -> None:
    env = dict(os.environ, BENCH_DIR=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_sheep.py"), "--target", "embedded",
         "--rounds", "1", "--life-rounds", "2", "--mib", "4", "--vdis", "5", "--sc-rounds",
         "2", "--no-dog"],
        capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for row in ("lifecycle (8 operations)", "import 4 MiB", "export 1 GiB (sparse)",
                "list ", "snap+clone full/empty", "plain file, same 4 MiB",
                "delete volume"):
        assert row in out, f"{row!r} missing from:\n{out}"
    sparse = re.search(r"export file: (\d+) MiB long, (\d+) MiB allocated", out)
    assert sparse, out
    assert int(sparse.group(1)) == 1024
    probe = tmp_path / "probe"
    with open(probe, "wb") as f:
        f.truncate(64 << 20)
    if os.stat(probe).st_blocks == 0:  # this filesystem keeps holes
        assert int(sparse.group(2)) <= 5, "the 1 GiB export holding 4 MiB was not sparse"
    probe.unlink()
    assert not os.listdir(tmp_path), "the benchmark left files behind"


def test_bench_sheep_on_a_configured_cluster_cleans_up(
        tmp_path: Path, embedded_server: EmbeddedServer) -> None:
    """--config targets a cluster the user runs; afterwards none of the
    benchmark's VDIs are left on it."""
    with SheepdogClient(embedded_server.gateways) as client:
        client.create_vdi("users-own", 8 << 20)
        conf = tmp_path / "my.conf"
        conf.write_text("[DEFAULT]\nenabled_backends = mine\n\n[mine]\nvolume_driver = sheepdog\n"
                        f"sheepdog_gateways = {embedded_server.gateways[0]}\n")
        bench_dir = tmp_path / "bench"
        bench_dir.mkdir()
        proc = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "bench_sheep.py"), "--config", str(conf),
             "--rounds", "1", "--life-rounds", "1", "--mib", "4", "--vdis", "4",
             "--sc-rounds", "2", "--no-dog"],
            capture_output=True, text=True, timeout=240, cwd=ROOT,
            env=dict(os.environ, BENCH_DIR=str(bench_dir)))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"cluster of {conf} [mine]" in proc.stdout
        assert re.search(r"list \d+ VDIs", proc.stdout), proc.stdout
        left = sorted(f"{v.name}@{v.tag}" if v.tag else v.name for v in client.list_vdis()
                      if v.name != ANCHOR)  # the driver's leases stay: not a volume
        assert left == ["users-own"], left


@pytest.mark.parametrize(("script", "argv", "message"), [
    ("bench_scale.py", ["--lus", "0"], "--lus must be 1..5000"),
    ("bench_scale.py", ["--paths", "direct,sideways"], "--paths direct and/or gateway"),
    ("bench_scale.py", ["--timeout", "-1"], "--timeout not negative"),
    ("bench_gateway.py", ["--jobs-scale", "-1"], "--jobs-scale 0..100"),
    ("bench_server.py", ["--fairness-only", "--fairness-rounds", "0"], "nor 0 with"),
])
def test_bench_scripts_refuse_bad_arguments(script: str, argv: list[str], message: str) -> None:
    """A bad argument is a usage error (exit 2, saying what is wrong) before
    anything is started."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *argv],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr, proc.stderr
