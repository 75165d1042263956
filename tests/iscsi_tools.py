"""iSCSI initiators for tests: QEMU 7.2's qemu-io (libiscsi, qemu-block-extra)
and libiscsi-bin's tools, always with a timeout.  ``QemuSession`` keeps one
qemu-io logged in across steps (a guest that stays connected while other
hosts attach and detach); it is killed by its own handle in ``close()``."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
from collections.abc import Mapping
from typing import Any

import pytest

from sheepdog_backend.driver.connection import iscsi_blockdev_options

QEMU_IO_CANDIDATES = ("/usr/bin/qemu-io",)


def qemu_io_path() -> str:
    """A qemu-io that speaks iscsi:// (Debian's 7.2 with qemu-block-extra)."""
    for path in (*QEMU_IO_CANDIDATES, shutil.which("qemu-io")):
        if not path:
            continue
        probe = subprocess.run([path, "--version"], capture_output=True, text=True,
                               timeout=20, check=False)
        if probe.returncode == 0 and shutil.which("iscsi-inq"):
            return path
    print("SKIP reason: no qemu-io with iSCSI (qemu-utils + qemu-block-extra) or no "
          "libiscsi-bin")
    pytest.skip("qemu-io with iSCSI (qemu-block-extra) or libiscsi-bin not installed")


def image_opts(info: Mapping[str, Any], *, initiator: str | None = None) -> str:
    """``--image-opts`` from the connection info's blockdev form."""
    options = iscsi_blockdev_options(info)
    if initiator:
        options["initiator-name"] = initiator
    return ",".join(f"{k}={v}" for k, v in options.items())


def qemu_io(info: Mapping[str, Any], *commands: str, password: str | None = None,
            initiator: str | None = None, timeout: float = 120.0, readonly: bool = False
            ) -> subprocess.CompletedProcess[str]:
    """Run qemu-io commands on the LU of ``info`` through QEMU's iSCSI driver,
    CHAP secret passed as a QEMU secret object (``password`` overrides it)."""
    data = info["data"]
    secret = password if password is not None else data.get("auth_password", "")
    argv = [qemu_io_path(), "--object", f"secret,id=sd-chap,data={secret}",
            "--image-opts", image_opts(info, initiator=initiator)]
    if readonly:
        argv.append("-r")
    for command in commands:
        argv += ["-c", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


class QemuSession:
    """One qemu-io process logged in to the LU of ``info`` as ``initiator``,
    taking commands one step at a time (a connected guest)."""

    MARK = "end-of-step"  # an unknown command: qemu-io says so once the step is done

    def __init__(self, info: Mapping[str, Any], *, initiator: str) -> None:
        secret = info["data"].get("auth_password", "")
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [qemu_io_path(), "--object", f"secret,id=sd-chap,data={secret}",
             "--image-opts", image_opts(info, initiator=initiator)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            bufsize=0)

    def run(self, *commands: str, timeout: float = 30.0) -> str:
        """What qemu-io printed for ``commands`` (with a note when it exited or
        did not finish within ``timeout``)."""
        proc = self.proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write("".join(c + "\n" for c in (*commands, self.MARK)).encode())
        except BrokenPipeError:
            return f"qemu-io exited ({proc.poll()})"
        out = b""
        mark = f'command "{self.MARK}"'.encode()
        deadline = time.monotonic() + timeout
        while mark not in out:
            if time.monotonic() > deadline:
                return out.decode(errors="replace") + f"\n(qemu-io: no answer in {timeout:g} s)"
            if not select.select([proc.stdout], [], [], 0.1)[0]:
                # qemu-io takes one line per wake-up from a pipe: an empty line
                # (a no-op) wakes it for the next queued one
                try:
                    proc.stdin.write(b"\n")
                except BrokenPipeError:
                    pass
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                return out.decode(errors="replace") + f"\n(qemu-io exited: {proc.wait()})"
            out += chunk
        return out[:out.index(mark)].decode(errors="replace")

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.communicate(timeout=10)


def url(info: Mapping[str, Any], *, password: str | None = None,
        user: str | None = None) -> str:
    data = info["data"]
    auth = ""
    if data.get("auth_method") == "CHAP" or password is not None:
        auth = f"{user or data['auth_username']}%{password or data['auth_password']}@"
    return f"iscsi://{auth}{data['target_portal']}/{data['target_iqn']}/{data['target_lun']}"


def libiscsi(tool: str, target_url: str, *args: str, timeout: float = 60.0
             ) -> subprocess.CompletedProcess[str]:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} (libiscsi-bin) not installed")
    return subprocess.run([path, *args, target_url], capture_output=True, text=True,
                          timeout=timeout, check=False)


def capacity(info: Mapping[str, Any], initiator: str | None = None) -> int:
    """Bytes READ CAPACITY(16) reports for the LU."""
    args = ["-i", initiator] if initiator else []
    proc = libiscsi("iscsi-readcapacity16", url(info), *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for line in proc.stdout.splitlines():
        if line.startswith("Total size:"):
            return int(line.split(":", 1)[1])
    raise AssertionError(f"no size in {proc.stdout!r}")
