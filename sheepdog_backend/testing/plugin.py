"""pytest plugin (entry point ``pytest11``): command-line options and GAP
reporting for the driver conformance suite.

Imports nothing heavy and changes nothing for projects that do not use the
suite: pytest loads it in every session of every project that has
sheepdog-backend installed.  It adds two options, registers one marker, and
turns a test skipped as a *declared* unsupported capability (a report that
carries the ``sheepdog_gap`` user property, set by the conformance suite)
into its own outcome, GAP, so the summary line shows "N gap" rather than
counting it as a plain skip, and a pass it never is.
"""

from __future__ import annotations

import pytest

GAP_PROPERTY = "sheepdog_gap"  # same value as conformance.GAP_PROPERTY
CAPABILITY_MARKER = "sheepdog_capability"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sheepdog", "sheepdog-backend driver conformance")
    group.addoption("--sheepdog-config", metavar="FILE", default=None,
                    help="ini file with the backend to test (default: start an embedded "
                    "Sheepdog-compatible server and test the built-in driver against it)")
    group.addoption("--sheepdog-backend", metavar="NAME", default=None,
                    help="backend section of --sheepdog-config to test (default: the first "
                    "of enabled_backends)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{CAPABILITY_MARKER}(*names): the conformance test needs these driver "
        "capabilities; a driver that does not declare one reports the test as GAP")


def gap_of(report: pytest.TestReport | pytest.CollectReport) -> str | None:
    """The capability a skipped report declares missing, or None."""
    if not getattr(report, "skipped", False):
        return None
    for key, value in getattr(report, "user_properties", ()):
        if key == GAP_PROPERTY:
            return str(value)
    return None


def pytest_report_teststatus(
        report: pytest.TestReport | pytest.CollectReport,
        config: pytest.Config) -> tuple[str, str, tuple[str, dict[str, bool]]] | None:
    if gap_of(report) is None:
        return None
    return "gap", "G", ("GAP", {"yellow": True})


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            exitstatus: int, config: pytest.Config) -> None:
    gaps = terminalreporter.stats.get("gap", [])
    if not gaps:
        return
    terminalreporter.section("declared gaps (not passed: the driver does not support them)",
                             sep="-", yellow=True)
    for report in gaps:
        terminalreporter.line(f"GAP {report.nodeid}: declared unsupported: {gap_of(report)}")
