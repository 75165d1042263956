"""Issue 24's five ``qemu-img bench`` jobs on several I/O paths, side by side.

How it works: a ``Path`` is a qemu-img binary and the arguments that name
its image (``-f raw sheepdog:HOST:PORT:VDI`` for QEMU 5.2's own Sheepdog
driver, ``--object secret,... --image-opts driver=iscsi,...`` for QEMU 7.2
through tgt).  ``run_jobs`` runs every job of ``JOBS`` on every path,
``rounds`` times; in each round each job runs on the paths one after another
(so a job's figures for the paths are taken close together), and the order
of the paths rotates by one each round so none is always first or last.
Before the rounds every job runs once on every path at a tenth of its
requests, not counted (a tgt LU opens its connections on first use, one
per I/O thread).  Every run is ``qemu-img bench -t none`` with a timeout; its rate comes from
the time qemu-img itself reports ("Run completed in S seconds": the I/O
only, not the process start or the iSCSI login).  The write jobs of a round
come before its read jobs; the caller preallocates the VDIs and fills them
with data first, so writes go to allocated objects and reads read data.

``table`` formats the medians as issue 24's table, with ratios of pairs of
paths.  A ratio is paired: each round's rate of one path over the other's in
the same round (taken seconds apart), the median of those, and their lowest
and highest in brackets.  This machine's pace drifts by +-20% over minutes,
which a ratio of two medians taken from different rounds would carry;
paired, the drift common to both paths cancels.  ``added_latency`` is, per
depth-1 job, the median over rounds of (1/IOPS of one path - 1/IOPS of
another) measured in the same round: the time a path adds to every 4 KiB
request.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

KiB, MiB = 1 << 10, 1 << 20
_DONE = re.compile(r"Run completed in ([0-9.]+) seconds")
WARMUP = 0.1  # each job runs once at this fraction of its requests before the rounds


@dataclass(frozen=True)
class Job:
    label: str
    write: bool
    size: int  # bytes per request
    depth: int
    count: int  # requests at scale 1 (about 2 s each through tgt to a node here)

    @property
    def unit(self) -> str:
        return "IOPS" if self.size < MiB else "MiB/s"

    def requests(self, scale: float) -> int:
        return max(self.depth, int(self.count * scale))

    def argv(self, scale: float) -> list[str]:
        return ["-t", "none", "-s", str(self.size), "-d", str(self.depth),
                "-c", str(self.requests(scale)), *(["-w"] if self.write else [])]

    def rate(self, requests: int, seconds: float) -> float:
        """IOPS, or MiB/s for 1 MiB requests."""
        per_second = requests / max(seconds, 1e-9)
        return per_second if self.unit == "IOPS" else per_second * self.size / MiB


JOBS = (
    Job("4 KiB write, depth 1 (IOPS)", True, 4 * KiB, 1, 4000),
    Job("4 KiB read, depth 1 (IOPS)", False, 4 * KiB, 1, 8000),
    Job("4 KiB write, depth 16 (IOPS)", True, 4 * KiB, 16, 6000),
    Job("1 MiB write, depth 4 (MiB/s)", True, MiB, 4, 512),
    Job("1 MiB read, depth 4 (MiB/s)", False, MiB, 4, 512),
)


@dataclass(frozen=True)
class Path:
    key: str
    title: str  # the table's column heading
    qemu_img: str
    image: tuple[str, ...]  # the arguments naming the image


def bench(path: Path, job: Job, scale: float, timeout: float = 300.0) -> float:
    """One ``qemu-img bench`` run: the job's rate on the path."""
    argv = [path.qemu_img, "bench", *job.argv(scale), *path.image]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:  # run() killed it
        raise RuntimeError(f"{path.key}: {job.label}: qemu-img bench did not finish within "
                           f"{timeout:g} s") from None
    found = _DONE.search(proc.stdout)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"{path.key}: {job.label}: qemu-img bench failed "
                           f"({proc.returncode}): {(proc.stderr or proc.stdout)[-500:]!r}")
    return job.rate(job.requests(scale), float(found.group(1)))


Results = dict[tuple[str, str], list[float]]  # (job label, path key) -> rate per round


def run_jobs(paths: Sequence[Path], rounds: int, scale: float = 1.0,
             jobs: Sequence[Job] = JOBS,
             progress: Callable[[str], None] | None = None) -> Results:
    results: Results = {}
    for path in paths:  # not counted: tgt opens its connections on first use
        for job in jobs:
            bench(path, job, scale * WARMUP)
    for r in range(rounds):
        shift = r % len(paths)
        order = [*paths[shift:], *paths[:shift]]
        for job in jobs:
            for path in order:
                started = time.monotonic()
                rate = bench(path, job, scale)
                results.setdefault((job.label, path.key), []).append(rate)
                if progress:
                    progress(f"round {r + 1}/{rounds} {path.key:<8} {job.label:<29} "
                             f"{rate:10,.0f} ({time.monotonic() - started:.1f} s)")
    return results


def paired(results: Results, job: Job, a: str, b: str) -> list[tuple[float, float]]:
    """Each round's rates of paths ``a`` and ``b`` for ``job``, side by side."""
    return list(zip(results[(job.label, a)], results[(job.label, b)], strict=True))


def added_latency(results: Results, slow: str, fast: str,
                  jobs: Sequence[Job] = JOBS) -> dict[str, float]:
    """Depth-1 job label -> median over rounds of the microseconds ``slow``
    adds to each request over ``fast`` (both measured in the same round)."""
    added: dict[str, float] = {}
    for job in jobs:
        if job.depth != 1 or job.unit != "IOPS":
            continue
        added[job.label] = statistics.median(
            1e6 / s - 1e6 / f for s, f in paired(results, job, slow, fast))
    return added


def paired_ratios(results: Results, job: Job, a: str, b: str) -> list[float]:
    """Each round's rate of path ``a`` over path ``b``'s in the same round."""
    return [x / y for x, y in paired(results, job, a, b)]


def table(results: Results, paths: Sequence[Path], ratios: Sequence[tuple[str, str]],
          jobs: Sequence[Job] = JOBS) -> str:
    """Issue 24's table (markdown): the medians, then each ``a / b`` of
    ``ratios`` whose paths were both measured: the median of the paired
    ratios, their range in brackets when there are several rounds."""
    measured = {p.key for p in paths}
    shown = [(a, b) for a, b in ratios if a in measured and b in measured]
    heads = ["job", *(p.title for p in paths), *(f"{a} / {b}" for a, b in shown)]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for job in jobs:
        cells = [f"{statistics.median(results[(job.label, p.key)]):,.0f}" for p in paths]
        for a, b in shown:
            each = paired_ratios(results, job, a, b)
            spread = f" ({min(each):.2f}-{max(each):.2f})" if len(each) > 1 else ""
            cells.append(f"{statistics.median(each):.2f}{spread}")
        lines.append(f"| {job.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
