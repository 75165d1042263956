"""A short lock on the cluster for read-modify-write of export records and
host indexes, until the per-volume lease (issue 26, section 1) replaces it.

How it works: the lock is the VDI attribute ``key`` of VDI ``vdi``, made
with GET_VDI_ATTR's exclusive create - the one test-and-set every sheep node
orders, so of several processes or hosts exactly one creates it.  Its value
says who holds it and until when (wall-clock seconds: hosts are expected to
keep NTP time, as OpenStack needs anyway).  Releasing deletes it.  A holder
that died leaves it behind; once it has expired another process breaks it.
Breaking is itself guarded: the breaker first creates ``KEY.break.TOKEN``
exclusively (TOKEN is the dead holder's, unique per acquisition), checks the
lock still holds that same value, deletes it and then the marker, so two
processes that both saw the dead holder's lock cannot delete a new holder's.

A holder must finish well within ``ttl`` (default 15 s): the lock guards a
handful of round trips, never a wait for another process.  Nothing is kept
in memory between calls; ``held`` is the whole interface, so the lease can
take its place by offering the same context manager.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from sheepdog_backend.exception import ExportLockTimeout, NoObject, VdiExists

if TYPE_CHECKING:
    from sheepdog_backend.client import SheepdogClient

LOG = logging.getLogger(__name__)

TTL = 15.0  # seconds a holder may keep the lock before others may break it
WAIT = 30.0  # seconds a caller waits for the lock before ExportLockTimeout
_BACKOFF = (0.01, 0.2)  # first and longest pause between tries


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _value(token: str, ttl: float) -> bytes:
    return json.dumps({"owner": _owner(), "token": token,
                       "expires": time.time() + ttl}, sort_keys=True).encode()


def _parse(raw: bytes) -> tuple[str, str, float]:
    """(owner, token, expires) of a lock value; unreadable ones read as expired
    with a token of their own bytes (so their breaking is guarded too)."""
    try:
        body = json.loads(raw.decode("utf-8"))
        return str(body["owner"]), str(body["token"]), float(body["expires"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return "?", uuid.uuid5(uuid.NAMESPACE_OID, raw.hex()).hex, 0.0


@contextmanager
def held(client: SheepdogClient, vdi: str, key: str, *, ttl: float = TTL,
         wait: float = WAIT) -> Iterator[None]:
    """Hold the lock ``key`` of ``vdi`` for the block; ExportLockTimeout (naming
    the holder) when another process keeps it longer than ``wait`` seconds."""
    token = _acquire(client, vdi, key, ttl, wait)
    try:
        yield
    finally:
        try:
            if _mine(client, vdi, key, token):
                client.delete_attr(vdi, key)
        except Exception as exc:
            LOG.warning("lock %s of %s not released (it expires in %g s): %s", key, vdi,
                        ttl, exc)


def _mine(client: SheepdogClient, vdi: str, key: str, token: str) -> bool:
    """True while the lock is still this holder's (not broken after it expired)."""
    raw = client.get_attr(vdi, key)
    return raw is not None and _parse(raw)[1] == token


def _acquire(client: SheepdogClient, vdi: str, key: str, ttl: float, wait: float) -> str:
    deadline = time.monotonic() + wait
    pause = _BACKOFF[0]
    holder = "?"
    while True:
        token = uuid.uuid4().hex
        try:
            client.set_attr(vdi, key, _value(token, ttl), exclusive=True)
            return token
        except VdiExists:
            pass
        raw = client.get_attr(vdi, key)
        if raw is not None:
            holder, dead, expires = _parse(raw)
            if expires < time.time():
                LOG.warning("lock %s of %s: holder %s expired; breaking it", key, vdi, holder)
                _break(client, vdi, key, raw, dead, ttl)
                continue
        if time.monotonic() + pause > deadline:
            raise ExportLockTimeout(f"lock {key!r} of {vdi!r} is held by {holder} for longer "
                                    f"than {wait:g} s; it expires at the latest {ttl:g} s "
                                    "after it was taken")
        time.sleep(pause)
        pause = min(pause * 2, _BACKOFF[1])


def _break(client: SheepdogClient, vdi: str, key: str, raw: bytes, token: str,
           ttl: float) -> None:
    marker = f"{key}.break.{token}"[:255]
    try:
        client.set_attr(vdi, marker, _value(token, ttl), exclusive=True)
    except VdiExists:  # another process breaks it; a breaker that died leaves a marker
        found = client.get_attr(vdi, marker)
        if found is not None and _parse(found)[2] < time.time():
            client.delete_attr(vdi, marker)
        return
    try:
        if client.get_attr(vdi, key) == raw:
            client.delete_attr(vdi, key)
    except NoObject:
        pass
    finally:
        client.delete_attr(vdi, marker)
