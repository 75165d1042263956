"""One sqlite file for every process of a test's Cinder cluster.

Cinder's database layer (oslo.db) begins each sqlite transaction deferred,
so a transaction that has read and then writes while another process holds
the write lock fails at once with "database is locked" (sqlite cannot wait
there without deadlocking, and Cinder does not retry it): two cinder-volume
services and Cinder's API on one sqlite file hit it within seconds.  Cinder
runs on MySQL or PostgreSQL in production.  Here the file is in WAL mode
(``share``: readers never hold up a writer's commit), and every transaction
of each process begins IMMEDIATE (``begin_immediate``), taking the write lock
first, so that it needs no other lock later.  The wait for that lock is a
loop of green sleeps rather than sqlite's busy timeout, which would stop
every green thread of the process (its lease renewals too) while it waits.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

WAIT = 60.0  # seconds a transaction may wait for the write lock
BUSY_MS = 50  # sqlite's own wait, for what is not a transaction's start


def share(path: Path) -> None:
    """Put the database ``path`` in WAL mode (it stays so)."""
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"


def begin_immediate() -> None:
    """Every sqlite transaction of this process begins IMMEDIATE (before
    oslo.db's own listener, which then sees one under way)."""
    import sqlalchemy
    from sqlalchemy.engine import Engine

    def begin(conn: Any) -> None:
        if conn.dialect.name != "sqlite" or "in_transaction" in conn.info:
            return
        raw = conn.connection.driver_connection  # the sqlite3 connection itself
        raw.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
        deadline = time.monotonic() + WAIT
        while True:
            try:
                raw.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.002)  # a green sleep: the holder may be this process
        conn.info["in_transaction"] = True  # oslo.db's mark: it emits no BEGIN

    sqlalchemy.event.listen(Engine, "begin", begin)
