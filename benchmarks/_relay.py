"""A plain relay between tgt and the node: the yardstick of issue 24's table.

How it works: ``plain_relay`` starts socat (Debian's, found on PATH) listening
on a unix socket and relaying each connection to the node's unix socket,
1 MiB at a time, in a session of its own (``fork``: a child per connection,
as tgt opens several).  It parses nothing, judges nothing, fails nothing
over: what a relay process between tgt and the node costs before it does
anything of the gateway's.  On exit the whole session is killed by its
process group and waited for, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator

SOCAT_BUFFER = 1 << 20  # socat's default is 8 KiB: 128 reads per 1 MiB answer


class Unavailable(RuntimeError):
    """socat is not installed (Debian's package ``socat``)."""


@contextlib.contextmanager
def plain_relay(listen: str, node_socket: str, timeout: float = 10.0) -> Iterator[str]:
    """socat relaying ``listen`` (a unix socket it makes) to ``node_socket``;
    yields ``listen`` once it accepts."""
    socat = shutil.which("socat")
    if socat is None:
        raise Unavailable("no socat on PATH (Debian's package socat)")
    # socat's errors go to a file: a pipe nobody reads during the run would
    # block socat's children once it filled
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            [socat, "-b", str(SOCAT_BUFFER), f"UNIX-LISTEN:{listen},fork,unlink-early",
             f"UNIX-CONNECT:{node_socket}"],
            stdin=subprocess.DEVNULL, stderr=errors, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while not os.path.exists(listen):
                if proc.poll() is not None:
                    errors.seek(0)
                    said = errors.read().decode(errors="replace")
                    raise RuntimeError(f"socat exited ({proc.returncode}): {said[-300:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"socat did not listen on {listen} within {timeout:g} s")
                time.sleep(0.02)
            yield listen
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the children relaying tgt's connections
            proc.wait()
