"""The issue-13 benchmark script runs end to end at tiny sizes (embedded
server, no dog) and prints its table; the export it measures is sparse."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_sheep_runs_and_prints_the_table(tmp_path: Path) -> None:
    env = dict(os.environ, BENCH_DIR=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_sheep.py"), "--target", "embedded",
         "--rounds", "1", "--mib", "4", "--vdis", "5", "--no-dog"],
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
