"""A durable, ordered on-disk spool of alert messages (one SQLite file).

Each entry is one Kafka message (topic, key, value) identified by its ``candid``; entries
are sent in ``seq`` order and marked acknowledged only after the broker acknowledged them
(the value is then dropped to save space; the alert archive keeps the packet). Adding a candid
that is already spooled changes nothing, so a re-run never re-sends an acknowledged alert.
The file survives restarts: a new sender resumes with the entries still pending.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SpoolEntry", "AlertSpool"]

_DDL = """
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    candid INTEGER NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    key BLOB,
    value BLOB,
    state INTEGER NOT NULL DEFAULT 0,      -- 0 pending, 1 acknowledged
    spooled_at REAL NOT NULL,
    acked_at REAL,
    ack_order INTEGER
);
CREATE INDEX IF NOT EXISTS ix_spool_state_seq ON spool (state, seq);
"""


@dataclass(frozen=True)
class SpoolEntry:
    """One pending message."""

    seq: int
    candid: int
    topic: str
    key: bytes
    value: bytes


class AlertSpool:
    """The spool file; thread-safe (one connection behind a lock).

    Parameters
    ----------
    path : path-like
        SQLite file (created with its parent directory).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                   timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_DDL)

    def add(self, entries: Iterable[tuple[int, str, bytes, bytes]]) -> int:
        """Append ``(candid, topic, key, value)`` entries durably; returns how many were new."""
        now = time.time()
        rows = [(int(c), t, k, v, now) for c, t, k, v in entries]
        with self._lock:
            before = self._db.total_changes
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR IGNORE INTO spool (candid, topic, key, value, "
                                     "spooled_at) VALUES (?, ?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return self._db.total_changes - before

    def pending(self, limit: int = 1000) -> list[SpoolEntry]:
        """The oldest pending entries, in order."""
        with self._lock:
            rows = self._db.execute("SELECT seq, candid, topic, key, value FROM spool "
                                    "WHERE state = 0 ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [SpoolEntry(*r) for r in rows]

    def mark_acked(self, seqs: Sequence[int]) -> None:
        """Record the broker's acknowledgement of entries (in the given order)."""
        if not seqs:
            return
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                base = self._db.execute("SELECT COALESCE(MAX(ack_order), 0) FROM spool "
                                        "WHERE state = 1").fetchone()[0]
                self._db.executemany("UPDATE spool SET state = 1, value = NULL, acked_at = ?, "
                                     "ack_order = ? WHERE seq = ? AND state = 0",
                                     [(now, base + i + 1, s) for i, s in enumerate(seqs)])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def n_pending(self) -> int:
        """Number of entries not yet acknowledged."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM spool WHERE state = 0").fetchone()[0]

    def acknowledged(self) -> list[tuple[int, int, float]]:
        """``(candid, seq, acked_at)`` of acknowledged entries, in acknowledgement order."""
        with self._lock:
            return self._db.execute("SELECT candid, seq, acked_at FROM spool WHERE state = 1 "
                                    "ORDER BY ack_order").fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()
