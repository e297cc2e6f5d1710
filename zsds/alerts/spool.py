"""A durable, ordered on-disk spool of alert messages (one SQLite file).

Each entry is one Kafka message identified by its ``candid``: topic, key, and where the
alert's bytes lie in the night's alert archive (file relative to the spool's folder, offset
and length of its Avro block, :mod:`zsds.alerts.archive`), so the packet is written to disk
once. Entries are sent in ``seq`` order and marked acknowledged only after the broker
acknowledged them. Adding a candid that is already spooled changes nothing, so a re-run never
re-sends an acknowledged alert. The file survives restarts: a new sender resumes with the
entries still pending.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .archive import AlertArchiveError, standalone_alert

__all__ = ["SpoolEntry", "AlertSpool"]

_DDL = """
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    candid INTEGER NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    key BLOB,
    path TEXT NOT NULL,                     -- archive file, relative to the spool's folder
    offset INTEGER NOT NULL,                -- its Avro block: byte offset and length
    length INTEGER NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,      -- 0 pending, 1 acknowledged
    spooled_at REAL NOT NULL,
    acked_at REAL,
    ack_order INTEGER
);
CREATE INDEX IF NOT EXISTS ix_spool_state_seq ON spool (state, seq);
CREATE INDEX IF NOT EXISTS ix_spool_ack_order ON spool (ack_order);
"""


@dataclass(frozen=True)
class SpoolEntry:
    """One pending message."""

    seq: int
    candid: int
    topic: str
    key: bytes
    path: str
    offset: int
    length: int


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

    def add(self, entries: Iterable[tuple[int, str, bytes, str, int, int]]) -> int:
        """Append ``(candid, topic, key, archive path, offset, length)`` entries durably;
        returns how many were new. The path may be absolute or relative to the spool's folder."""
        now, relative = time.time(), {}
        rows = []
        for c, t, k, p, o, n in entries:
            if p not in relative:
                relative[p] = self._relative(p)
            rows.append((int(c), t, k, relative[p], int(o), int(n), now))
        with self._lock:
            before = self._db.total_changes
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR IGNORE INTO spool (candid, topic, key, path, "
                                     "offset, length, spooled_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                     rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return self._db.total_changes - before

    def pending(self, limit: int = 1000, after_seq: int = 0) -> list[SpoolEntry]:
        """The oldest pending entries with ``seq > after_seq``, in order."""
        with self._lock:
            rows = self._db.execute("SELECT seq, candid, topic, key, path, offset, length "
                                    "FROM spool WHERE state = 0 AND seq > ? ORDER BY seq "
                                    "LIMIT ?", (after_seq, limit)).fetchall()
        return [SpoolEntry(*r) for r in rows]

    def _relative(self, path) -> str:
        path = Path(path)
        try:
            return path.relative_to(self.path.parent).as_posix()
        except ValueError:
            return str(path)

    def values(self, entries: Sequence[SpoolEntry]) -> list[bytes]:
        """The Kafka message values (single-alert Avro containers) of entries, read from the
        alert archive (one open per file)."""
        out, handles = [], {}
        try:
            for e in entries:
                fh = handles.get(e.path)
                if fh is None:
                    fh = handles[e.path] = open(self.path.parent / e.path, "rb")
                fh.seek(e.offset)
                block = fh.read(e.length)
                if len(block) != e.length:
                    raise AlertArchiveError(f"{self.path.parent / e.path}: truncated at the "
                                            f"block of candid {e.candid}")
                out.append(standalone_alert(block, e.candid))
        finally:
            for fh in handles.values():
                fh.close()
        return out

    def mark_acked(self, seqs: Sequence[int]) -> None:
        """Record the broker's acknowledgement of entries (in the given order).

        Committed without waiting for the disk (``synchronous=NORMAL``: the next durable
        commit carries it); an acknowledgement lost in a power cut only means the alert is
        sent again, which Kafka's at-least-once delivery allows and consumers dedupe on
        candid. Additions (:meth:`add`) stay fully durable.
        """
        if not seqs:
            return
        now = time.time()
        with self._lock:
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._mark_acked(seqs, now)
            finally:
                self._db.execute("PRAGMA synchronous=FULL")

    def _mark_acked(self, seqs, now) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            base = self._db.execute("SELECT COALESCE(MAX(ack_order), 0) FROM spool"
                                    ).fetchone()[0]  # ix_spool_ack_order: O(log n)
            self._db.executemany("UPDATE spool SET state = 1, acked_at = ?, "
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
