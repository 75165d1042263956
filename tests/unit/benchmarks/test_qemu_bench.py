"""Issue 24's table (benchmarks/_qemu_bench.py) pairs its ratios by round:
a path measured in a slow minute is compared with its partner in that same
minute, not with the partner's median from another one."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[3]


def load() -> ModuleType:
    source = ROOT / "benchmarks" / "_qemu_bench.py"
    spec = importlib.util.spec_from_file_location("_qemu_bench", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("_qemu_bench", module)
    spec.loader.exec_module(module)
    return module


def test_a_ratio_is_the_median_of_each_rounds_own_ratio_with_its_range() -> None:
    qb = load()
    job = qb.JOBS[1]  # 4 KiB read, depth 1
    paths = [qb.Path("gw", "gateway", "qemu-img", ()), qb.Path("tgt", "tgt", "qemu-img", ())]
    # the machine slows down in round 2 and speeds up in round 3: both paths
    # move together, and the gateway is at 0.9 of tgt in every round
    results = {(job.label, "gw"): [3600.0, 1800.0, 4500.0],
               (job.label, "tgt"): [4000.0, 2000.0, 5000.0]}
    row = qb.table(results, paths, [("gw", "tgt")], jobs=[job]).splitlines()[2]
    assert row == f"| {job.label} | 3,600 | 4,000 | 0.90 (0.90-0.90) |"
    # out of step: the medians' ratio (3,600 / 2,000 = 1.8) is not what any round saw
    results[(job.label, "tgt")] = [2000.0, 4000.0, 5000.0]
    assert qb.paired_ratios(results, job, "gw", "tgt") == [1.8, 0.45, 0.9]
    row = qb.table(results, paths, [("gw", "tgt")], jobs=[job]).splitlines()[2]
    assert row.endswith("| 0.90 (0.45-1.80) |")


def test_one_round_gives_its_ratio_without_a_range() -> None:
    qb = load()
    job = qb.JOBS[0]
    paths = [qb.Path("a", "a", "qemu-img", ()), qb.Path("b", "b", "qemu-img", ())]
    results = {(job.label, "a"): [900.0], (job.label, "b"): [1000.0]}
    assert qb.table(results, paths, [("a", "b")], jobs=[job]).splitlines()[2].endswith("| 0.90 |")
