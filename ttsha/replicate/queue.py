"""The durable queue of files still to send (stdlib sqlite3, WAL mode).

A path is recorded the moment its write completes and removed only after the
peer has renamed it into place, so a restart, a ``kill -9`` or an hour-long
peer outage loses nothing: the queue simply drains later, in order.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pending:
    seq: int
    rel: str
    closed_at: float
    attempts: int


class DurableQueue:
    def __init__(self, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS pending ("
                " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
                " rel TEXT NOT NULL UNIQUE,"
                " closed_at REAL NOT NULL,"
                " attempts INTEGER NOT NULL DEFAULT 0)"
            )

    def put(self, rel: str, closed_at: float | None = None) -> None:
        """Record ``rel``; a path already pending moves to the end (it changed again)."""
        self.put_items([(rel, closed_at)])

    def put_many(self, rels: list[str], closed_at: float | None = None) -> None:
        """Record every one of ``rels``, closed at one time, in one transaction."""
        self.put_items([(rel, closed_at) for rel in rels])

    def put_items(self, items: list[tuple[str, float | None]]) -> None:
        """Record (rel, closed_at) pairs in one transaction (one fsync however many)."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            for rel, closed_at in items:
                self._db.execute("DELETE FROM pending WHERE rel = ?", (rel,))
                self._db.execute("INSERT INTO pending (rel, closed_at) VALUES (?, ?)",
                                 (rel, now if closed_at is None else closed_at))
            self._db.execute("COMMIT")

    def peek(self, limit: int = 64) -> list[Pending]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, rel, closed_at, attempts FROM pending ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [Pending(*row) for row in rows]

    def done(self, item: Pending) -> None:
        """Forget ``item`` unless it was queued again while being sent."""
        with self._lock:
            self._db.execute("DELETE FROM pending WHERE seq = ?", (item.seq,))

    def discard(self, rels: list[str], queued_before: float) -> None:
        """Forget ``rels`` queued before ``queued_before``: they reached the peer another way
        (a path queued again later stays: it may have changed since)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            for rel in rels:
                self._db.execute("DELETE FROM pending WHERE rel = ? AND closed_at <= ?", (rel, queued_before))
            self._db.execute("COMMIT")

    def failed(self, item: Pending) -> None:
        with self._lock:
            self._db.execute("UPDATE pending SET attempts = attempts + 1 WHERE seq = ?", (item.seq,))

    def oldest_closed_at(self) -> float | None:
        """When the longest-waiting pending file was queued (None: nothing pending)."""
        with self._lock:
            row = self._db.execute("SELECT MIN(closed_at) FROM pending").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def depth(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM pending").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
