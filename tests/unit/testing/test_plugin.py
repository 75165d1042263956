"""The pytest11 plugin: loaded by entry point, light, and invisible to projects
that do not use the conformance suite."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest_plugins = ["pytester"]
ARGS = ("-p", "no:cacheprovider", "-W", "ignore::pytest.PytestAssertRewriteWarning")


def test_options_are_registered_through_the_entry_point(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_inprocess("--help", *ARGS)
    out = result.stdout.str()
    assert "--sheepdog-config=FILE" in out and "--sheepdog-backend=NAME" in out


def test_unrelated_project_sees_plain_outcomes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_other="""
import pytest

def test_ok():
    pass

def test_skipped():
    pytest.skip("not today")

def test_broken():
    assert 1 == 2

@pytest.mark.xfail(reason="known")
def test_known():
    assert False
""")
    result = pytester.runpytest_inprocess("-rs", "--strict-markers", *ARGS)
    result.assert_outcomes(passed=1, skipped=1, failed=1, xfailed=1)
    out = result.stdout.str()
    assert "gap" not in out.lower() and "not today" in out


def test_capability_marker_is_registered(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_marked="""
import pytest

@pytest.mark.sheepdog_capability("snapshots")
def test_marked():
    pass
""")
    pytester.runpytest_inprocess("--strict-markers", *ARGS).assert_outcomes(passed=1)


def test_gap_is_its_own_outcome(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_gap="""
import pytest

def test_gap(request):
    request.node.user_properties.append(("sheepdog_gap", "clone"))
    pytest.skip("declared unsupported: clone")

def test_plain_skip():
    pytest.skip("other reason")
""")
    result = pytester.runpytest_inprocess("-v", *ARGS)
    out = result.stdout.str()
    assert "test_gap GAP" in out
    assert "GAP test_gap.py::test_gap: declared unsupported: clone" in out
    assert result.parseoutcomes() == {"gap": 1, "skipped": 1}
    assert result.ret == 0


def test_importing_the_plugin_imports_nothing_heavy() -> None:
    code = ("import sys, sheepdog_backend.testing.plugin as p; "
            "print(sorted(m for m in sys.modules if m.startswith("
            "('sheepdog_backend.driver', 'sheepdog_backend.client', 'sheepdog_backend.server', "
            "'oslo', 'stevedore', 'tenacity'))))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, timeout=60).stdout
    assert out.strip() == "[]"
