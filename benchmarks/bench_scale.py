"""Issue 24's scale run: N LUs in one tgtd, every LU doing I/O at once,
through one `sheepdog-backend gateway` process, next to the same run with tgt
straight to the sheep.

How it works: one real sheep node (tests/realsheep.py) serves both phases,
direct first (its time sets the gateway phase's deadline), then gateway.
Each phase gets a fresh tgtd (tests/tgtd.py; --tgt-iothreads I/O threads per
LU, 0 for tgt's default of 16: up to 17 sheep connections per LU), for the
gateway phase a fresh gateway process (_gateway_proc.py), and N fresh VDIs of
--mib MiB, each exported as one target whose LUN 1 is tgt's Sheepdog store on
``tcp:127.0.0.1:PORT:VDI`` (PORT the sheep's or the gateway's), open to any
initiator (no CHAP: the data path is measured, not the control plane).  Then
one QEMU 7.2 qemu-io per LU, all started at once: it writes its --mib MiB in
1 MiB requests, --depth in flight (``aio_write``... ``aio_flush``), then reads
them back --depth at a time checking every byte against the pattern it wrote
(one per LU and MiB).  An LU is "ok" when its qemu-io exits 0 having written
and read every MiB with no error and no pattern mismatch; it "failed" when it
exits otherwise; it "hung" when it is still running at the deadline.

Bounded in time: every tgtadm call by 30 s, the I/O by --timeout (0, the
default: 300 s direct, and through the gateway max(60 s, 4x the direct
run)); at the deadline the qemu-io still running are killed by their pids
and the phase is reported as failed with what was seen (the qemu-io errors,
the tgtd and gateway log lines).  While a phase runs a thread samples the
listener (the sheep or the gateway) and tgtd from /proc every 0.25 s: RSS and
its kernel-kept peak (VmHWM), threads, open fds, and the TCP connections to
the listener's port (established at once, and distinct client ports seen: a
lower bound on the connections tgt opened); tgt's failed connection
attempts are counted from tgtd's log.  Every process started (sheep,
tgtd, gateway, qemu-io) is stopped by its pid whatever happens, SIGTERM
included.  RLIMIT_NOFILE is raised for this process and so for its children
(about 17 fds per LU in tgtd and the listener); the run refuses to start when
tgtd's threads (N x (I/O threads + 1)) would take most of the free pids
(kernel.pid_max), saying so.

Prints a table (a column per path) and issue 24's goals for the gateway: no
failed or hung LU, the run within 3x the direct one, peak RSS <= 512 MiB,
threads at peak no more than the idle gateway's plus its bounded worker pool
(``sheepdog_backend.gateway.gateway.DEFAULT_WORKERS`` plus the serial worker
and the replay watcher: not growing with the connections).  Exits 0 when
the run was measured, whatever the goals (1 with --strict when a goal is
missed, and when it refuses to start), 2 on a usage error.  `make bench`
runs --lus 300 (about a minute through the engine's gateway; 1.5-4.5
minutes with the old one, which hung until the deadline); --lus 1000 is
opt-in (about 12 minutes before, less now).  The machine is shared:
treat the figures as indicative.

Run: .venv/bin/python benchmarks/bench_scale.py --lus 300 [--mib 8] [--depth 4]
     [--paths direct,gateway] [--timeout S] [--tgt-iothreads T] [--strict]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import _gateway_proc  # type: ignore[import-not-found]  # benchmarks/ is not a package
import _tgt  # type: ignore[import-not-found]

from sheepdog_backend.client import SheepdogClient
from sheepdog_backend.gateway.gateway import DEFAULT_WORKERS

MiB = 1 << 20
TGTADM_TIMEOUT = 30.0
TGT_DEFAULT_IOTHREADS = 16
# The gateway's threads: the loop, the replay watcher, the serial worker and at
# most DEFAULT_WORKERS pool threads, whatever the connections.
GOAL_RATIO, GOAL_RSS = 3.0, 512 * MiB
GOAL_THREADS = DEFAULT_WORKERS + 2
IQN = "iqn.2024-12.org.sheepdog-backend.bench"
NOTEWORTHY = ("fail", "error", "Error", "refus", "limit", "timed out", "reset", "closing")


def say(text: str) -> None:
    """Progress, on stderr (the table goes to stdout)."""
    print(f"bench_scale: {text}", file=sys.stderr, flush=True)


@dataclass
class Phase:
    path: str  # "direct" or "gateway"
    lus: int
    setup_s: float = 0.0
    setup_error: str = ""
    run_s: float | None = None  # None: not every LU finished
    deadline_s: float = 0.0
    ok: int = 0
    failed: int = 0
    hung: int = 0
    lu_times: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # the first distinct error lines
    listener: Any = None  # _gateway_proc.Watch of the sheep or the gateway
    tgtd: Any = None  # _gateway_proc.Watch of tgtd
    seen: list[str] = field(default_factory=list)  # log lines worth showing
    failed_connects: int = 0  # tgt's failed connection attempts, from its log


def raise_nofile(want: int) -> int:
    """Raise RLIMIT_NOFILE (soft, and hard when allowed) to ``want``; the
    soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
        except (ValueError, OSError):  # not root: as far as the hard limit goes
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def threads_now() -> int:
    return sum(len(os.listdir(f"/proc/{p}/task")) for p in os.listdir("/proc")
               if p.isdigit() and os.path.isdir(f"/proc/{p}/task"))


def pids_check(lus: int, iothreads: int) -> str:
    """Why the run would take most of the machine's free pids ("" if not)."""
    with open("/proc/sys/kernel/pid_max", encoding="ascii") as f:
        pid_max = int(f.read())
    free = pid_max - threads_now()
    # tgtd: a thread pool per LU; qemu-io: 2-3 each; the gateway today: 2 per
    # connection up to its 1,024-connection cap
    need = lus * (iothreads + 1) + lus * 3 + 2100
    if need > 0.8 * free:
        return (f"{lus} LUs would need about {need} threads (tgtd {iothreads + 1} per LU) "
                f"and only {free} pids are free (kernel.pid_max {pid_max}): use fewer LUs "
                "or --tgt-iothreads")
    return ""


def tgtadm(control_port: int, *args: str) -> None:
    argv = ["tgtadm", "--lld", "iscsi", "--control-port", str(control_port), *args]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=TGTADM_TIMEOUT,
                              check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"tgtadm {' '.join(args[:4])} did not answer within "
                           f"{TGTADM_TIMEOUT:g} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"tgtadm {' '.join(args)} failed ({proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()}")


def pattern(lu: int, mib: int) -> int:
    return 1 + (lu * 37 + mib) % 255


def qemu_io_argv(portal: str, iqn: str, lu: int, mib: int, depth: int) -> list[str]:
    target = f"driver=iscsi,transport=tcp,portal={portal},target={iqn},lun=1"
    commands: list[str] = []
    for op in ("aio_write", "aio_read"):
        for first in range(0, mib, depth):
            commands += [f"{op} -P {pattern(lu, m)} {m}M 1M"
                         for m in range(first, min(mib, first + depth))]
            commands.append("aio_flush")
    return [_tgt.QEMU_IO, "-t", "none", "--image-opts", target,
            *(a for c in commands for a in ("-c", c))]


def lu_verdict(output: str, returncode: int, mib: int) -> str:
    """"" when the LU wrote and read back every MiB, else what went wrong."""
    bad = [line for line in output.splitlines()
           if "fail" in line.lower() or "error" in line.lower()]
    if bad:
        return bad[0].strip()
    wrote = output.count(f"wrote {MiB}/{MiB} bytes")
    read = output.count(f"read {MiB}/{MiB} bytes")
    if returncode != 0 or wrote != mib or read != mib:
        return f"exit {returncode}, {wrote}/{mib} MiB written, {read}/{mib} MiB read back"
    return ""


def log_lines(path: Path, words: tuple[str, ...], limit: int = 4) -> list[str]:
    """The last distinct lines of a log (timestamps cut) holding one of ``words``."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    found: dict[str, None] = {}
    for line in text.splitlines():
        if any(w in line for w in words) and "device_mgmt" not in line:  # tgtadm's echo
            # tgtd: "tgtd: func(line) message"; the gateway: "date time name message"
            line = " ".join(line.split()[2:]) if line[:2].isdigit() else line.strip()
            found[re.sub(r"^(tgtd: )+", "", line)] = None
    return [line[:200] for line in list(found)[-limit:]]


@contextlib.contextmanager
def tgtd_for(tmp: Path, iothreads: int) -> Iterator[Any]:
    from tests.tgtd import TgtDaemon
    try:
        import _pytest.outcomes
        tgtd = TgtDaemon(tmp, iothreads=iothreads or None).start()
    except _pytest.outcomes.Skipped as exc:
        raise _tgt.Unavailable(str(exc)) from exc
    try:
        yield tgtd
    finally:
        tgtd.stop()


def run_io(phase: Phase, tgtd: Any, names: list[str], out_dir: Path, mib: int, depth: int,
           deadline_s: float) -> None:
    """Start every LU's qemu-io at once and wait for all, bounded."""
    procs: list[subprocess.Popen[bytes]] = []
    started: list[float] = []
    ended: dict[int, float] = {}
    phase.deadline_s = deadline_s
    t0 = time.monotonic()
    try:
        for i in range(len(names)):
            with open(out_dir / f"lu{i}.out", "wb") as out:
                procs.append(subprocess.Popen(
                    qemu_io_argv(tgtd.portal, f"{IQN}:{names[i]}", i, mib, depth),
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
            started.append(time.monotonic())
        while len(ended) < len(procs) and time.monotonic() - t0 < deadline_s:
            for i, proc in enumerate(procs):
                if i not in ended and proc.poll() is not None:
                    ended[i] = time.monotonic()
            time.sleep(0.1)
    finally:
        for proc in procs:  # the hung ones (and all of them on an error)
            if proc.poll() is None:
                proc.kill()
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
    if len(ended) == len(procs):
        phase.run_s = max(ended.values()) - t0
    errors: dict[str, None] = {}
    for i, proc in enumerate(procs):
        if i not in ended:
            phase.hung += 1
            continue
        phase.lu_times.append(ended[i] - started[i])
        why = lu_verdict((out_dir / f"lu{i}.out").read_text(errors="replace"),
                         proc.returncode, mib)
        if why:
            phase.failed += 1
            errors[why] = None
        else:
            phase.ok += 1
    phase.errors = list(errors)[:5]


def run_phase(path: str, cluster: Any, tmp: Path, args: argparse.Namespace,
              deadline_s: float) -> Phase:
    phase = Phase(path, args.lus)
    work = tmp / path
    work.mkdir()
    names = [f"scale-{path}-{i}" for i in range(args.lus)]
    size = -(-args.mib // 4) * 4 * MiB
    with SheepdogClient(cluster.gateways) as client:
        for name in names:
            client.create_vdi(name, size)
    with contextlib.ExitStack() as stack:
        tgtd = stack.enter_context(tgtd_for(work / "tgtd", args.tgt_iothreads))
        gateway = None
        if path == "gateway":
            gateway = stack.enter_context(_gateway_proc.GatewayProcess(
                cluster.gateways, work / "gateway.log"))
            listener_pid, port = gateway.pid, gateway.port
        else:
            listener_pid, port = cluster.nodes[0].pid, cluster.nodes[0].port
        phase.listener = _gateway_proc.Watch(listener_pid, port).start()
        stack.callback(phase.listener.stop)
        phase.tgtd = _gateway_proc.Watch(tgtd.pid).start()
        stack.callback(phase.tgtd.stop)
        say(f"{path}: exporting {args.lus} LUs")
        t0 = time.monotonic()
        try:
            for i, name in enumerate(names):
                tid = str(i + 1)
                tgtadm(tgtd.control_port, "--mode", "target", "--op", "new", "--tid", tid,
                       "--targetname", f"{IQN}:{name}")
                tgtadm(tgtd.control_port, "--mode", "logicalunit", "--op", "new", "--tid", tid,
                       "--lun", "1", "--bstype", "sheepdog", "--backing-store",
                       f"tcp:127.0.0.1:{port}:{name}")
                tgtadm(tgtd.control_port, "--mode", "target", "--op", "bind", "--tid", tid,
                       "--initiator-address", "ALL")
        except RuntimeError as exc:
            phase.setup_error = f"LU {i + 1} of {args.lus}: {exc}"
        phase.setup_s = time.monotonic() - t0
        if not phase.setup_error:
            say(f"{path}: {args.lus} qemu-io at once ({args.mib} MiB each, {args.depth} in "
                f"flight), deadline {deadline_s:.0f} s")
            run_io(phase, tgtd, names, work, args.mib, args.depth, deadline_s)
        phase.listener.stop()
        phase.tgtd.stop()
        tgtd_log = work / "tgtd" / "tgtd.1.log"
        phase.seen = log_lines(tgtd_log, NOTEWORTHY)
        with contextlib.suppress(FileNotFoundError), open(tgtd_log, "rb") as f:
            phase.failed_connects = sum(line.count(b"failed connect to") for line in f)
        if gateway is not None:
            phase.seen += log_lines(work / "gateway.log", NOTEWORTHY)
    return phase


def fmt_s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s"


def print_report(phases: list[Phase], args: argparse.Namespace, iothreads: int) -> list[str]:
    """Print the table and the goals; the goals missed."""
    by = {p.path: p for p in phases}
    direct = by.get("direct")
    print(f"scale run: {args.lus} LUs in one tgtd ({iothreads} I/O threads per LU), every LU "
          f"at once: one qemu-io each writing {args.mib} MiB in 1 MiB requests, {args.depth} "
          f"in flight, and reading it back checked (indicative: shared machine)")

    def mib(n: int) -> str:
        return f"{n / MiB:,.0f} MiB"

    rows: list[tuple[str, list[str]]] = []
    for p in phases:
        lw, tw = p.listener, p.tgtd
        if p.run_s is not None:
            run = fmt_s(p.run_s)
        elif p.setup_error:
            run = "not run"
        else:
            run = f"> {p.deadline_s:.0f} s (deadline)"
        ratio = (f"{p.run_s / direct.run_s:.2f}" if direct and direct.run_s and p.run_s
                 else "-")
        times = sorted(p.lu_times)
        cells = {
            "LUs exported in": fmt_s(p.setup_s) + (" (failed)" if p.setup_error else ""),
            "LUs ok / failed / hung": f"{p.ok} / {p.failed} / {p.hung}",
            "run time": run,
            "x direct": ratio,
            "LU time median / max": (f"{statistics.median(times):.1f} / {times[-1]:.1f} s"
                                     if times else "-"),
            "connections to listener: peak / seen": (f"{lw.peak_connections:,} / "
                                               f"{len(lw.seen_connections):,}"),
            "tgt's failed connects (its log)": f"{p.failed_connects:,}",
            "listener RSS idle / peak": (f"{mib(lw.first.rss)} / {mib(lw.peak_rss)}"
                                    if lw.first else "-"),
            "listener threads idle / peak": (f"{lw.first.threads:,} / {lw.peak_threads:,}"
                                        if lw.first else "-"),
            "listener fds peak": f"{lw.peak_fds:,}",
            "tgtd threads / fds peak": f"{tw.peak_threads:,} / {tw.peak_fds:,}",
        }
        for k, v in cells.items():
            row = next((r for r in rows if r[0] == k), None)
            if row is None:
                rows.append((k, [v]))
            else:
                row[1].append(v)
    heads = [f"{p.path} (listener: {'sheep' if p.path == 'direct' else 'gateway'})"
             for p in phases]
    width = max(len(k) for k, _ in rows)
    cols = [max(len(h), *(len(r[1][i]) for r in rows)) for i, h in enumerate(heads)]
    print(f"{'':<{width}}  " + "  ".join(f"{h:>{c}}" for h, c in zip(heads, cols, strict=True)))
    for k, vals in rows:
        print(f"{k:<{width}}  " + "  ".join(f"{v:>{c}}" for v, c in zip(vals, cols, strict=True)))
    for p in phases:
        for line in ([p.setup_error] if p.setup_error else []) + p.errors:
            print(f"{p.path}: error: {line}")
        for line in p.seen:
            print(f"{p.path}: log: {line}")
    missed: list[str] = []
    gw = by.get("gateway")
    if gw is None:
        return missed
    lw = gw.listener
    goals = [
        ("every LU through the gateway ok (no I/O error, none hung)",
         not gw.setup_error and gw.ok == gw.lus,
         gw.setup_error or f"{gw.failed} failed, {gw.hung} hung"),
        (f"run time through the gateway <= {GOAL_RATIO:g}x direct",
         bool(direct and direct.run_s and gw.run_s and gw.run_s <= GOAL_RATIO * direct.run_s),
         f"{fmt_s(gw.run_s)} vs {fmt_s(direct.run_s) if direct else '-'}"),
        (f"gateway peak RSS <= {GOAL_RSS // MiB} MiB", lw.peak_rss <= GOAL_RSS,
         mib(lw.peak_rss)),
        (f"gateway threads at peak <= idle + {GOAL_THREADS} (its worker pool: not growing "
         "with connections)",
         lw.first is not None and lw.peak_threads <= lw.first.threads + GOAL_THREADS,
         f"{lw.first.threads if lw.first else '-'} -> {lw.peak_threads} with "
         f"{lw.peak_connections:,} connections at peak"),
    ]
    print("issue 24's goals:")
    for text, ok, detail in goals:
        print(f"  {'PASS' if ok else 'FAIL'}  {text}: {detail}")
        if not ok:
            missed.append(text)
    return missed


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds every ``finally``: all processes stopped


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--lus", type=int, default=300, help="LUs (volumes) in one tgtd")
    parser.add_argument("--mib", type=int, default=8, help="MiB each LU writes and reads")
    parser.add_argument("--depth", type=int, default=4, help="1 MiB requests in flight per LU")
    parser.add_argument("--paths", default="direct,gateway",
                        help="comma-separated phases, run in this order: direct, gateway")
    parser.add_argument("--timeout", type=float, default=0.0,
                        help="seconds each phase's I/O may take (0: 300 s direct, "
                        "max(60 s, 4x direct) through the gateway)")
    parser.add_argument("--tgt-iothreads", type=int, default=0,
                        help="tgtd -t: I/O threads (sheep connections) per LU "
                        "(0: tgt's default, 16)")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when a goal of issue 24 is missed")
    args = parser.parse_args()
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if (not 1 <= args.lus <= 5000 or not 1 <= args.mib <= 1024 or not 1 <= args.depth <= 64
            or args.timeout < 0 or not 0 <= args.tgt_iothreads <= 128 or not paths
            or any(p not in ("direct", "gateway") for p in paths)
            or len(set(paths)) != len(paths)):
        parser.error("--lus must be 1..5000, --mib 1..1024, --depth 1..64, --timeout not "
                     "negative, --tgt-iothreads 0..128 and --paths direct and/or gateway")
    iothreads = args.tgt_iothreads or TGT_DEFAULT_IOTHREADS
    crowded = pids_check(args.lus, iothreads)
    if crowded:
        print(f"bench_scale: refused: {crowded}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _terminate)
    nofile = raise_nofile(24 * args.lus + 4096)
    if nofile < 18 * args.lus + 512:  # 1,000 LUs: 17,343 fds in tgtd, 17,127 in the sheep
        print(f"bench_scale: warning: only {nofile} file descriptors per process (the hard "
              f"limit): tgtd and the sheep need about 18 per LU", file=sys.stderr)
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            _tgt.require_qemu(_tgt.QEMU_IO)
            import _pytest.outcomes

            from tests.realsheep import SheepCluster
            try:
                cluster = SheepCluster(tmp / "sheep", nodes=1).start()
            except (_pytest.outcomes.Skipped, RuntimeError) as exc:
                raise _tgt.Unavailable(str(exc)) from exc
        except (_tgt.Unavailable, ImportError) as exc:
            print(f"bench_scale: skipped: {exc}")
            return 0
        try:
            for path in paths:
                direct = next((p for p in phases if p.path == "direct"), None)
                if args.timeout:
                    deadline = args.timeout
                elif path == "gateway" and direct is not None and direct.run_s:
                    deadline = max(60.0, 4 * direct.run_s)
                else:
                    deadline = 300.0
                phases.append(run_phase(path, cluster, tmp, args, deadline))
        except _tgt.Unavailable as exc:
            print(f"bench_scale: skipped: {exc}")
            return 0
        finally:
            cluster.stop()
    missed = print_report(phases, args, iothreads)
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
