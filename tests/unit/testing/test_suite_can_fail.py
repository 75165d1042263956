"""The conformance suite can fail: run it (in-process, through pytester) against
deliberately broken fakes and check that exactly the tests guarding the broken
rule fail, that declared gaps are reported as GAP and never as passes, and that
everything the suite created is deleted even when tests fail."""

from __future__ import annotations

import pytest

from sheepdog_backend.testing.conformance import DriverConformanceTests
from tests.unit.testing import broken_drivers
from tests.unit.testing.fake_driver import FakeCluster, FakeDriver

pytest_plugins = ["pytester"]

# Clusters handed to the inner runs, by key (the inner module looks them up).
CLUSTERS: dict[str, FakeCluster] = {}

INNER = """
import pytest
from sheepdog_backend.testing.conformance import DriverConformanceTests
from tests.unit.testing import broken_drivers, fake_driver
from tests.unit.testing.test_suite_can_fail import CLUSTERS


class TestInner(DriverConformanceTests):
    @pytest.fixture(scope="class")
    @classmethod
    def driver(cls):
        klass = getattr(broken_drivers, {name!r}, None) or getattr(fake_driver, {name!r})
        return klass(cluster=CLUSTERS[{name!r}])
{extra}
"""

INNER_ARGS = ("-p", "no:cacheprovider", "-q", "-W", "ignore::pytest.PytestAssertRewriteWarning")
ALL_TESTS = sorted(
    name for name in dir(DriverConformanceTests) if name.startswith("test_"))


def run_suite(pytester: pytest.Pytester, name: str,
              extra: str = "") -> tuple[dict[str, str], FakeCluster, str]:
    """Outcome per test (parametrized ids kept), the cluster, the output text."""
    cluster = CLUSTERS[name] = FakeCluster()
    pytester.makepyfile(**{f"test_inner_{name.lower()}": INNER.format(name=name,
                                                                      extra=extra)})
    result = pytester.runpytest_inprocess(*INNER_ARGS)
    outcomes: dict[str, str] = {}
    for rep in result.reprec.getreports("pytest_runtest_logreport"):  # type: ignore[attr-defined]
        test = rep.nodeid.split("::")[-1]
        previous = outcomes.get(test)
        if rep.failed:
            outcomes[test] = "failed"
        elif previous == "failed":
            continue
        elif rep.skipped:
            gap = any(k == "sheepdog_gap" for k, _ in rep.user_properties)
            outcomes[test] = "gap" if gap else "skipped"
        elif rep.when == "call":
            outcomes[test] = "passed"
    return outcomes, cluster, "\n".join(result.outlines)


def failed(outcomes: dict[str, str]) -> set[str]:
    return {t for t, o in outcomes.items() if o == "failed"}


def test_correct_fake_passes_everything(pytester: pytest.Pytester) -> None:
    outcomes, cluster, _ = run_suite(pytester, "FakeDriver")
    assert set(outcomes.values()) == {"passed"}, outcomes
    assert {t.split("[")[0] for t in outcomes} == set(ALL_TESTS)
    assert cluster.vdis == {}, "the suite left VDIs behind"


# broken driver -> exactly the tests that must fail
EXACT = {
    "CloneSharesBlocks": {
        "test_clone_from_snapshot_identical_and_independent",
        "test_clone_of_volume_identical_and_independent"},
    "SnapshotIsLive": {
        "test_clone_from_snapshot_identical_and_independent", "test_revert_to_snapshot"},
    "RevertNoop": {"test_revert_to_snapshot"},
    "ExtendLosesData": {"test_extend_keeps_data_and_reads_zeros_beyond"},
    "CreateAgainWipes": {"test_create_again_same_size_keeps_data",
                         "test_create_again_other_size_fails"},
    "DeleteIgnoresSnapshots": {"test_volume_with_snapshots_refuses_deletion"},
    "PortsAsInts": {"test_connection_info_shape"},
    "StaleStats": {"test_stats_keys_and_movement"},
    "IgnoresClusterAddress": {
        "test_backing_reference_rejected[other-cluster-host]",
        "test_backing_reference_rejected[other-cluster-port]",
        "test_backing_reference_rejected[other-cluster-legacy]"},
    "AcceptsWorkingVdi": {
        "test_backing_reference_rejected[working-vdi]",
        "test_backing_reference_rejected[working-vdi-legacy]"},
    "NameLimitOffByOne": {
        "test_names_over_the_limit_rejected[ascii-256]",
        "test_names_over_the_limit_rejected[utf8-256-bytes]"},
    "UnmanageDeletes": {"test_manage_existing_adopts_and_unmanage_leaves_vdi"},
    "ManageLosesName": {"test_manage_existing_adopts_and_unmanage_leaves_vdi"},
    "MissingVolumeWrongError": {"test_extend_missing_volume_fails"},
    "UnknownCapability": {"test_capabilities_are_known"},
}


@pytest.mark.parametrize("name", sorted(EXACT))
def test_broken_driver_fails_exactly_the_right_tests(pytester: pytest.Pytester,
                                                     name: str) -> None:
    outcomes, cluster, output = run_suite(pytester, name)
    assert failed(outcomes) == EXACT[name], output
    assert set(outcomes.values()) <= {"passed", "failed"}
    if name != "UnmanageDeletes":  # it deletes the VDI it should keep: nothing to leak
        assert cluster.vdis == {}, f"{name}: the suite left {sorted(cluster.vdis)} behind"


@pytest.mark.parametrize("name,must_fail", [
    ("DeleteNotIdempotent", "test_create_and_delete_twice"),
    ("SizeInDecimalGB", "test_size_is_exact"),
])
def test_broken_basics_fail(pytester: pytest.Pytester, name: str, must_fail: str) -> None:
    outcomes, cluster, output = run_suite(pytester, name)
    assert outcomes[must_fail] == "failed", output
    assert cluster.vdis == {}


def test_delete_that_leaves_the_vdi_is_reported_by_cleanup(pytester: pytest.Pytester) -> None:
    outcomes, cluster, output = run_suite(pytester, "DeleteLeaves")
    assert outcomes["test_create_and_delete_twice"] == "failed"
    assert outcomes["test_size_is_exact"] == "failed"  # its teardown finds the leak
    assert "cleanup left volume" in output and "still exists" in output
    assert cluster.vdis, "DeleteLeaves really leaves VDIs: the report must say so"


def test_declared_gap_is_reported_as_gap_not_pass(pytester: pytest.Pytester) -> None:
    outcomes, cluster, output = run_suite(pytester, "NoSnapshots")
    snapshot_tests = {
        t for t in outcomes
        if any("snapshots" in m.args for m in getattr(
            getattr(DriverConformanceTests, t.split("[")[0]), "pytestmark", []))}
    assert snapshot_tests, "the suite has snapshot tests"
    assert {t for t, o in outcomes.items() if o == "gap"} == snapshot_tests
    assert {o for t, o in outcomes.items() if t not in snapshot_tests} == {"passed"}
    summary = output.splitlines()[-1]
    assert f"{len(snapshot_tests)} gap" in summary and "skipped" not in summary, summary
    assert "GAP " in output and "declared unsupported: snapshots" in output
    assert cluster.vdis == {}


def test_without_data_access_almost_everything_is_a_gap(pytester: pytest.Pytester) -> None:
    outcomes, _, _ = run_suite(pytester, "NoDataAccess")
    assert outcomes.pop("test_capabilities_are_known") == "passed"
    assert set(outcomes.values()) == {"gap"}


FAILING_TEST = """
    def test_fails_after_creating(self, driver, resources):
        src = resources.create_volume()
        snap = resources.create_snapshot(src)
        clone = resources.volume()
        driver.create_volume_from_snapshot(clone, snap)
        assert driver.cluster.vdis, "created"
        raise AssertionError("deliberate failure mid-test")
"""


def test_failing_test_still_cleans_up(pytester: pytest.Pytester) -> None:
    outcomes, cluster, output = run_suite(pytester, "FakeDriver", extra=FAILING_TEST)
    assert outcomes["test_fails_after_creating"] == "failed"
    assert "deliberate failure mid-test" in output
    assert cluster.vdis == {}, f"left behind: {sorted(cluster.vdis)}"


def test_base_class_is_not_collected(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_base="""
from sheepdog_backend.testing.conformance import DriverConformanceTests
Imported = DriverConformanceTests
class TestNothing:
    def test_one(self):
        pass
""")
    result = pytester.runpytest_inprocess(*INNER_ARGS)
    result.assert_outcomes(passed=1)


def test_subclass_is_collected_and_marker_is_registered() -> None:
    class Sub(DriverConformanceTests):
        pass

    assert Sub.__test__ is True and DriverConformanceTests.__test__ is False
    assert isinstance(FakeDriver(), FakeDriver)
    assert broken_drivers.NoSnapshots.capabilities < FakeDriver.capabilities
