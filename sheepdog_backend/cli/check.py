"""``sheepdog-backend check``: the driver conformance suite from the command line.

How it works: runs ``pytest.main`` on the shipped module
``sheepdog_backend.testing.test_conformance`` with ``--sheepdog-config`` /
``--sheepdog-backend`` and a small plugin (``ResultCollector``) that records
one outcome per test: PASS, FAIL (a failed call, setup or teardown, e.g. a
cleanup that leaked), GAP (a capability the driver declares unsupported) or
SKIP.  A line per test goes to stderr as each test finishes (``[3/43] PASS
name``); pytest's own output is kept out of the way (shown with ``--verbose``,
or on stderr when pytest itself could not run); then a table is printed on
stdout.  The ini file is ``--config-file``, else ``$SHEEPDOG_BACKEND_CONFIG``,
else an embedded server.  Exit status: 0 only when no test failed and at
least one passed; 1 otherwise (also when ``-k`` matches no test, said in one
line); 2 for a usage error; 3 for an unusable configuration file; 7 when the
backend loads but cannot serve (its set-up check fails, e.g. no gateway
answers), as the other subcommands; 130 when interrupted (Ctrl-C), after the
table of the tests that finished.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

SUITE_MODULE = "sheepdog_backend.testing.test_conformance"
CONFIG_ENV = "SHEEPDOG_BACKEND_CONFIG"
ORDER = {"FAIL": 0, "GAP": 1, "SKIP": 2, "PASS": 3}


@dataclass
class TestResult:
    name: str
    outcome: str
    detail: str = ""


def _first_line(text: str) -> str:
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line[2:].strip() if line.startswith("E ") else line
    return ""


def _failure_detail(report: Any) -> str:
    crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)
    message = getattr(crash, "message", None)
    if message:
        return _first_line(str(message)).removeprefix("Failed: ")
    text = getattr(report, "longreprtext", "") or ""
    lines = [ln for ln in text.splitlines() if ln.startswith("E ")]
    return _first_line(lines[0] if lines else text)


class ResultCollector:
    """pytest plugin: one TestResult per test, in run order."""

    def __init__(self, progress: TextIO | None = None) -> None:
        self.results: dict[str, TestResult] = {}
        self.collect_errors: list[str] = []
        self.total = 0
        self.interrupted = False  # pytest saw a KeyboardInterrupt
        # A Ctrl-C arrived (``on_sigint``); if the KeyboardInterrupt it raised
        # was swallowed (raised inside a finalizer, whose exceptions Python
        # only prints), the next test boundary raises it again: the run stops.
        self.signalled = False
        self._progress = progress
        self._reported: set[str] = set()

    def pytest_collection_finish(self, session: Any) -> None:
        self.total = len(session.items)

    def pytest_keyboard_interrupt(self, excinfo: Any) -> None:
        self.interrupted = True

    def pytest_runtest_logfinish(self, nodeid: str, location: Any) -> None:
        """One progress line per finished test (stderr), as it finishes."""
        name = nodeid.split("::")[-1]
        result = self.results.get(name)
        if self._progress is None or result is None or name in self._reported:
            return
        self._reported.add(name)
        width = len(str(self.total or 0))
        self._progress.write(f"[{len(self._reported):>{width}}/{self.total}] "
                             f"{result.outcome:<4}  {name}\n")
        self._progress.flush()

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        if self.signalled and not self.interrupted:
            raise KeyboardInterrupt  # the Ctrl-C the last test swallowed

    def on_sigint(self, signum: int, frame: Any) -> None:
        """SIGINT while the suite runs: as Python's own handler, noted."""
        self.signalled = True
        raise KeyboardInterrupt

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            self.collect_errors.append(f"{report.nodeid or 'collection'}: "
                                       f"{_failure_detail(report)}")

    def pytest_runtest_logreport(self, report: Any) -> None:
        name = report.nodeid.split("::")[-1]
        current = self.results.get(name)
        if report.failed:
            phase = "" if report.when == "call" else f"[{report.when}] "
            detail = phase + _failure_detail(report)
            if current is not None and current.outcome == "FAIL":
                current.detail += f"; {detail}"
            else:
                self.results[name] = TestResult(name, "FAIL", detail)
        elif current is not None and current.outcome == "FAIL":
            return
        elif report.skipped:
            gap = next((v for k, v in report.user_properties if k == "sheepdog_gap"), None)
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
            reason = str(reason).removeprefix("Skipped: ")
            if gap is not None:
                self.results[name] = TestResult(name, "GAP", f"declared unsupported: {gap}")
            else:
                self.results[name] = TestResult(name, "SKIP", reason)
        elif report.when == "call":
            self.results[name] = TestResult(name, "PASS")

    def counts(self) -> dict[str, int]:
        out = {key: 0 for key in ORDER}
        for result in self.results.values():
            out[result.outcome] += 1
        return out


def print_table(collector: ResultCollector, out: TextIO, *, width: int = 220) -> None:
    rows = list(collector.results.values())
    name_width = max([len("TEST"), *(len(r.name) for r in rows)])
    out.write(f"{'RESULT':<6}  {'TEST':<{name_width}}  DETAIL\n")
    out.write(f"{'-' * 6}  {'-' * name_width}  {'-' * 6}\n")
    for row in rows:
        detail = row.detail
        room = max(20, width - name_width - 10)
        if len(detail) > room:
            detail = detail[:room - 3] + "..."
        out.write(f"{row.outcome:<6}  {row.name:<{name_width}}  {detail}\n".rstrip() + "\n")
    for error in collector.collect_errors:
        out.write(f"ERROR   {error}\n")
    counts = collector.counts()
    failed = counts["FAIL"] + len(collector.collect_errors)
    line = f"{counts['PASS']} passed, {failed} failed"
    if counts["GAP"]:
        line += f", {counts['GAP']} gap"
    if counts["SKIP"]:
        line += f", {counts['SKIP']} skipped"
    out.write(line + "\n")


def pytest_args(config_file: str | None, backend: str | None, keyword: str | None,
                ini_file: str, verbose: bool) -> list[str]:
    args = ["--pyargs", SUITE_MODULE, "-c", ini_file, "--rootdir", os.path.dirname(ini_file),
            "-p", "no:cacheprovider", "--tb=short" if verbose else "--tb=no",
            "-v" if verbose else "-q"]
    if config_file:
        args += ["--sheepdog-config", config_file]
    if backend:
        args += ["--sheepdog-backend", backend]
    if keyword:
        args += ["-k", keyword]
    return args


def run_suite(config_file: str | None, backend: str | None = None, *,
              keyword: str | None = None, verbose: bool = False,
              out: TextIO | None = None, progress: TextIO | None = None
              ) -> tuple[int, ResultCollector]:
    """Run the suite; returns (pytest exit code, collector).  ``progress`` gets a
    line per finished test; pytest's own text is shown only with ``verbose`` or
    when pytest could not run (internal or usage error: exit 3 or 4), on stderr."""
    import pytest

    out = out or sys.stdout
    collector = ResultCollector(progress=None if verbose else progress)
    with tempfile.TemporaryDirectory(prefix="sheepdog-check-") as tmp:
        ini = os.path.join(tmp, "pytest.ini")
        with open(ini, "w", encoding="utf-8") as fh:
            fh.write("[pytest]\n")
        args = pytest_args(config_file, backend, keyword, ini, verbose)
        captured = io.StringIO()
        target: TextIO = out if verbose else captured
        plugins: list[object] = [collector]
        if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
            from sheepdog_backend.testing import plugin  # not loaded by entry point then

            plugins.append(plugin)
        with contextlib.redirect_stdout(target), sigint_to(collector):
            code = int(pytest.main(args, plugins=plugins))
    if not verbose and code in (3, 4):
        sys.stderr.write(captured.getvalue())
    return code, collector


@contextlib.contextmanager
def sigint_to(collector: ResultCollector) -> Iterator[None]:
    """SIGINT goes to ``collector.on_sigint`` meanwhile, where Python's default
    handler is in place (not when SIGINT is ignored, nor off the main thread)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    signal.signal(signal.SIGINT, collector.on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def preflight(config_file: str, backend: str | None) -> tuple[int, str] | None:
    """None when the backend loads and says it can serve; else (exit code, why):
    3 for the ini file or driver class, 7 when set-up or its check fails."""
    from sheepdog_backend.driver.loader import enabled_backends
    from sheepdog_backend.exception import ConfigError, DriverLoadError
    from sheepdog_backend.testing.backends import driver_from_config

    try:
        names = enabled_backends(config_file)
        if backend is not None and backend not in names:
            return 3, (f"{config_file}: backend {backend!r} is not in [DEFAULT] "
                       f"enabled_backends ({', '.join(names)})")
        with driver_from_config(config_file, backend):
            pass
    except (ConfigError, DriverLoadError) as exc:
        return 3, str(exc)
    except Exception as exc:
        return 7, (f"backend {backend or names[0]!r} of {config_file} cannot serve: "
                   f"{type(exc).__name__}: {exc}")
    return None


def run(args: argparse.Namespace) -> int:
    config = getattr(args, "config_file", None) or os.environ.get(CONFIG_ENV) or None
    args.backend = getattr(args, "backend", None)
    if config is not None:
        config = os.path.abspath(config)
        problem = preflight(config, args.backend)
        if problem:
            print(f"sheepdog-backend check: {problem[1]}", file=sys.stderr)
            return problem[0]
        target = f"backend {args.backend or '(first enabled)'} of {config}"
    else:
        if args.backend:
            print("sheepdog-backend check: --backend needs --config-file", file=sys.stderr)
            return 2
        target = "the built-in driver on an embedded server (no --config-file)"
    print(f"sheepdog-backend conformance suite: {target}", flush=True)
    code, collector = run_suite(config, args.backend, keyword=args.keyword,
                                verbose=args.verbose, progress=sys.stderr)
    if code == 5 or (not collector.results and not collector.collect_errors
                     and not collector.interrupted and code in (0, 1)):
        what = f"matches -k {args.keyword!r}" if args.keyword else "was collected"
        print(f"sheepdog-backend check: no conformance test {what}", file=sys.stderr)
        return 1
    print_table(collector, sys.stdout)
    counts = collector.counts()
    if collector.interrupted or code == 2:
        print(f"sheepdog-backend check: interrupted after {len(collector.results)} of "
              f"{collector.total} tests; the table shows those", file=sys.stderr)
        return 130
    if code in (3, 4):
        print("sheepdog-backend check: pytest could not run the suite (its output is "
              "above)", file=sys.stderr)
        return 1
    ok = code == 0 and counts["FAIL"] == 0 and not collector.collect_errors \
        and counts["PASS"] > 0
    return 0 if ok else 1


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "check", help="run the driver conformance suite against a backend",
        description="Run the driver conformance suite against one backend of an ini file "
        "(or, without --config-file, the built-in driver on an embedded server) and print "
        "a PASS/FAIL/GAP table. Exit status 0 only when nothing failed.")
    # Defaults SUPPRESS: the same options given before the command still count.
    parser.add_argument("--config-file", metavar="FILE", default=argparse.SUPPRESS,
                        help="ini file with [DEFAULT] enabled_backends and the backend "
                        "sections (default: $SHEEPDOG_BACKEND_CONFIG, else start an "
                        "embedded server)")
    parser.add_argument("--backend", metavar="NAME", default=argparse.SUPPRESS,
                        help="backend section to test (default: the first enabled)")
    parser.add_argument("-k", dest="keyword", metavar="EXPR", default=None,
                        help="run only tests matching this pytest -k expression")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show pytest's own output, with short tracebacks")
    parser.set_defaults(func=run)
