"""``sheepdog-backend check`` stops on Ctrl-C even when the KeyboardInterrupt
lands in a finalizer (Python only prints an exception raised in ``__del__``):
the collector notes the signal and stops the run at the next test.  Seen as a
rare failure of tests/functional/test_check_progress.py's Ctrl-C test (the
suite ran to its end and exited 0)."""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path

import pytest

from sheepdog_backend.cli.check import ResultCollector, sigint_to

SWALLOWING_SUITE = '''
import gc
import os
import signal


class Dropped:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)  # the KeyboardInterrupt lands here


def test_first():
    Dropped()
    gc.collect()


def test_second():
    pass


def test_third():
    pass
'''


def test_a_ctrl_c_swallowed_by_a_finalizer_still_stops_the_run(tmp_path: Path) -> None:
    suite = tmp_path / "test_swallow.py"
    suite.write_text(textwrap.dedent(SWALLOWING_SUITE))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    collector = ResultCollector()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with sigint_to(collector):
        code = pytest.main(["-q", "-p", "no:cacheprovider", "-c", str(tmp_path / "pytest.ini"),
                            "--rootdir", str(tmp_path), str(suite)], plugins=[collector])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    assert collector.interrupted
    assert code == pytest.ExitCode.INTERRUPTED
    assert list(collector.results) == ["test_first"]


def test_an_ignored_sigint_stays_ignored() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with sigint_to(ResultCollector()):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)  # nothing happens
    finally:
        signal.signal(signal.SIGINT, previous)
