"""Run `sheepdog-backend serve` as a separate process for a benchmark.

The server gets its own interpreter (its own GIL), as a real sheep would be a
separate process: a benchmark that ran the server in the client's process
measured GIL contention rather than pipelining.  `serve` has no port 0, so a
free port is picked first (bind to 0, close, pass it on); the process is
stopped by its own handle (SIGTERM, then SIGKILL after 10 s).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(data_dir: str, *, sync: bool) -> Iterator[str]:
    """Yield the gateway "127.0.0.1:port" of a fresh server process."""
    port = free_port()
    cmd = [sys.executable, "-m", "sheepdog_backend", "serve", "--data-dir", data_dir,
           "--port", str(port)]
    if not sync:
        cmd.append("--no-sync")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited at start: {cmd}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not start listening") from None
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
