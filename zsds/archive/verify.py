"""Integrity of the archive: checksums of every archived file and their verification.

Where the expected checksum of a file comes from (paths relative to the archive root):

===========================  =====================================================================
``raw_files``                raw files (sha256 and size recorded at ingestion)
``calibrations``             calibration images (sha256 recorded when made; no size)
``quarantine``               quarantined files (sha256 of the rejected file)
``product_checksums``        every other product: science, subtraction and reference products
                             (recorded by their writers), Zarr chunks, lightcurve Parquet files,
                             alert archives, reports, release manifests (recorded by the writers
                             that record, otherwise by ``zsds archive verify --record``)
release ``manifest.json``    the files of a data release (``releases/<NAME>/``)
===========================  =====================================================================

:func:`verify_archive` re-reads every file and reports damage: a missing file, a size change,
a checksum mismatch. :func:`record_checksums` is what writers call after writing a product
(an upsert: a rewritten product replaces its checksum).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, delete, select

from ..db import schema as s
from ..db.ops import utcnow
from ..errors import ZsdsError

__all__ = ["Expected", "Problem", "VerifyReport", "file_sha256", "record_checksums",
           "forget_checksums", "expected_checksums", "archive_files", "verify_archive",
           "verify_files", "ReleaseNotFoundError", "EXCLUDED_NAMES", "tree_files",
           "forget_missing", "release_names", "release_expectations"]

#: File names never checksummed: live databases and their journals, lock files.
EXCLUDED_NAMES = ("zsds.sqlite", "zsds.sqlite-wal", "zsds.sqlite-shm", "zsds.sqlite-journal",
                  "spool.sqlite", "spool.sqlite-wal", "spool.sqlite-shm", "spool.sqlite-journal")
_CHUNK = 1 << 20


class ReleaseNotFoundError(ZsdsError):
    """No release of that name in the archive."""


@dataclass(frozen=True)
class Expected:
    """What a file should be: sha256 and size (None if not recorded), and who says so."""

    path: str
    sha256: str
    size: int | None
    source: str


@dataclass(frozen=True)
class Problem:
    """A damaged file: ``kind`` is ``missing``, ``size``, ``checksum`` or ``unreadable``."""

    path: str
    kind: str
    source: str
    expected: str = ""
    found: str = ""

    def __str__(self) -> str:
        detail = f" (expected {self.expected}, found {self.found})" if self.expected else ""
        if self.kind == "unreadable":
            detail = f" ({self.found})"
        return f"{self.kind.upper():<9} {self.path} [{self.source}]{detail}"


@dataclass
class VerifyReport:
    """Outcome of :func:`verify_archive`.

    ``n_checked`` files were re-read (``n_bytes`` bytes); ``problems`` lists the damaged ones;
    ``unrecorded`` the archive files without any recorded checksum (not checked);
    ``recorded`` / ``updated`` the files whose checksum was recorded / re-recorded now.
    """

    n_checked: int = 0
    n_bytes: int = 0
    problems: list[Problem] = field(default_factory=list)
    unrecorded: list[str] = field(default_factory=list)
    recorded: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        parts = [f"{self.n_checked} files checked ({self.n_bytes / 1e6:.1f} MB)",
                 f"{len(self.problems)} damaged"]
        if self.recorded:
            parts.append(f"{len(self.recorded)} newly recorded")
        if self.updated:
            parts.append(f"{len(self.updated)} re-recorded")
        if self.unrecorded:
            parts.append(f"{len(self.unrecorded)} without a checksum (run with --record)")
        return ", ".join(parts)


# ---------------------------------------------------------------------------------------
# checksums
# ---------------------------------------------------------------------------------------
def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _rel(root: Path, path: str | Path) -> str:
    p = Path(path)
    if p.is_absolute():
        try:
            p = p.relative_to(root)
        except ValueError:
            p = p.resolve().relative_to(root.resolve())
    return p.as_posix()


def _upsert(conn, rows: list[dict]) -> None:
    t = s.product_checksums
    dialect = conn.dialect.name
    if dialect in ("sqlite", "postgresql"):
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        stmt = insert(t)
        stmt = stmt.on_conflict_do_update(
            index_elements=[t.c.path],
            set_={"sha256": stmt.excluded.sha256, "size_bytes": stmt.excluded.size_bytes,
                  "updated_at": stmt.excluded.updated_at})
        conn.execute(stmt, rows)
        return
    for row in rows:  # other databases: one statement per row
        done = conn.execute(t.update().where(t.c.path == row["path"]).values(
            sha256=row["sha256"], size_bytes=row["size_bytes"], updated_at=row["updated_at"]))
        if not done.rowcount:
            conn.execute(t.insert().values(**row))


def record_checksums(engine: Engine, root: str | Path, paths: Iterable[str | Path]) -> int:
    """Record (or replace) the sha256 and size of archive files in ``product_checksums``.

    Writers call this right after writing their products, so a later change of a byte is
    detected by :func:`verify_archive`. A file whose record already holds its checksum and
    size leaves the record untouched (re-runs change nothing, not even timestamps).

    Parameters
    ----------
    engine : sqlalchemy.Engine
    root : path-like
        Archive root.
    paths : iterable of path-like
        Files, absolute or relative to ``root``; missing files are skipped.

    Returns
    -------
    int
        Number of files recorded.
    """
    root = Path(root)
    now = utcnow()
    rows = []
    for p in dict.fromkeys(_rel(root, p) for p in paths):
        full = root / p
        if not full.is_file():
            continue
        rows.append({"path": p, "sha256": file_sha256(full), "size_bytes": full.stat().st_size,
                     "created_at": now, "updated_at": now})
    if rows:
        t = s.product_checksums
        with engine.begin() as conn:
            same = set()
            for i in range(0, len(rows), 500):   # unchanged records stay untouched (timestamps too)
                chunk = [r["path"] for r in rows[i:i + 500]]
                same |= {(r.path, r.sha256, r.size_bytes) for r in conn.execute(
                    select(t.c.path, t.c.sha256, t.c.size_bytes).where(t.c.path.in_(chunk)))}
            changed = [r for r in rows if (r["path"], r["sha256"], r["size_bytes"]) not in same]
            if changed:
                _upsert(conn, changed)
    return len(rows)


def forget_checksums(engine: Engine, root: str | Path, paths: Iterable[str | Path]) -> int:
    """Drop the recorded checksums of files a writer removed on purpose; returns how many."""
    rel = sorted({_rel(Path(root), p) for p in paths})
    if not rel:
        return 0
    t = s.product_checksums
    n = 0
    with engine.begin() as conn:
        for i in range(0, len(rel), 500):
            n += conn.execute(delete(t).where(t.c.path.in_(rel[i:i + 500]))).rowcount or 0
    return n


def tree_files(root: str | Path, folder: str | Path, *, metadata_only: bool = False) -> list[Path]:
    """Files under ``folder`` (absolute or relative to ``root``) that carry a checksum.

    ``metadata_only`` keeps only Zarr metadata files (``.zgroup``, ``.zattrs``, ``.zarray``,
    ``.zmetadata``), which writers of other groups of the same store rewrite.
    """
    base = Path(root) / folder
    out = []
    for dirpath, _, filenames in os.walk(base):
        for name in filenames:
            if _skipped("", name) or (metadata_only and not name.startswith(".z")):
                continue
            out.append(Path(dirpath) / name)
    return sorted(out)


def forget_missing(engine: Engine, root: str | Path, prefix: str) -> int:
    """Drop recorded checksums of files under ``prefix`` (relative) that no longer exist.

    For writers that replace a set of files (e.g. a lightcurve build removing stale
    partitions); returns how many records were dropped.
    """
    root = Path(root)
    t = s.product_checksums
    like = prefix.rstrip("/") + "/%"
    with engine.connect() as conn:
        paths = [r.path for r in conn.execute(select(t.c.path).where(t.c.path.like(like)))]
    return forget_checksums(engine, root, [p for p in paths if not (root / p).exists()])


# ---------------------------------------------------------------------------------------
# what is expected
# ---------------------------------------------------------------------------------------
def expected_checksums(engine: Engine) -> dict[str, Expected]:
    """Recorded checksums of the database, by relative path (raw and calibrations first)."""
    out: dict[str, Expected] = {}
    with engine.connect() as conn:
        for r in conn.execute(select(s.raw_files.c.path, s.raw_files.c.sha256,
                                     s.raw_files.c.size_bytes)):
            out.setdefault(r.path, Expected(r.path, r.sha256, int(r.size_bytes), "raw_files"))
        for r in conn.execute(select(s.calibrations.c.path, s.calibrations.c.sha256)):
            out.setdefault(r.path, Expected(r.path, r.sha256, None, "calibrations"))
        q = s.quarantine.c
        for r in conn.execute(select(q.quarantine_path, q.sha256)
                              .where(q.quarantine_path.isnot(None))):
            out.setdefault(r.quarantine_path, Expected(r.quarantine_path, r.sha256, None,
                                                       "quarantine"))
        t = s.product_checksums.c
        for r in conn.execute(select(t.path, t.sha256, t.size_bytes)):
            out.setdefault(r.path, Expected(r.path, r.sha256, int(r.size_bytes),
                                            "product_checksums"))
    return out


def release_names(root: str | Path) -> list[str]:
    """Names of the releases of an archive (folders of ``releases/`` with a manifest)."""
    base = Path(root) / "releases"
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / "manifest.json").is_file())


def release_expectations(root: str | Path, name: str) -> list[Expected]:
    """The files of a release's manifest, as archive-relative expectations.

    Raises
    ------
    ReleaseNotFoundError
        If ``releases/<name>/manifest.json`` does not exist.
    ZsdsError
        If the manifest is not valid JSON (the message names it).
    """
    base = Path(root) / "releases" / name
    manifest = base / "manifest.json"
    if not manifest.is_file():
        known = ", ".join(release_names(root)) or "none"
        raise ReleaseNotFoundError(f"no release {name!r} ({manifest} missing; releases: {known})")
    try:
        doc = json.loads(manifest.read_text())
        files = doc["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ZsdsError(f"{manifest}: not a release manifest ({exc})") from None
    prefix = f"releases/{name}/"
    return [Expected(prefix + f["path"], f["sha256"], int(f["size"]), f"release {name}")
            for f in files]


def _skipped(rel: str, name: str) -> bool:
    if name in EXCLUDED_NAMES or (name.startswith(".") and ".tmp" in name):
        return True
    parts = rel.split("/")
    # release data files are covered by their manifest; the manifest by product_checksums
    return parts[0] == "releases" and not (len(parts) == 3 and parts[2] == "manifest.json")


def archive_files(root: str | Path) -> Iterator[str]:
    """Relative paths of the archive files that must carry a checksum (sorted per folder).

    Leaves out live databases and journals (:data:`EXCLUDED_NAMES`), temporary files of
    atomic writes (``.<name>.tmp...``) and release files other than the manifests.
    """
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath).relative_to(root).as_posix()
        for name in sorted(filenames):
            rel = name if base == "." else f"{base}/{name}"
            if not _skipped(rel, name):
                yield rel


# ---------------------------------------------------------------------------------------
# checking
# ---------------------------------------------------------------------------------------
def _check(root: Path, exp: Expected) -> tuple[Problem | None, int, str | None]:
    full = root / exp.path
    try:
        size = full.stat().st_size
    except FileNotFoundError:
        return Problem(exp.path, "missing", exp.source), 0, None
    except OSError as exc:
        return Problem(exp.path, "unreadable", exp.source, found=str(exc)), 0, None
    if exp.size is not None and size != exp.size:
        return Problem(exp.path, "size", exp.source, f"{exp.size} bytes", f"{size} bytes"), 0, None
    try:
        digest = file_sha256(full)
    except OSError as exc:
        return Problem(exp.path, "unreadable", exp.source, found=str(exc)), 0, None
    if digest != exp.sha256:
        return (Problem(exp.path, "checksum", exp.source, f"sha256 {exp.sha256[:16]}...",
                        f"{digest[:16]}..."), size, digest)
    return None, size, digest


def verify_files(root: str | Path, expected: Iterable[Expected], *, jobs: int = 4,
                 progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    """Re-read files and compare them with their expected size and sha256.

    Parameters
    ----------
    root : path-like
        Archive root (``Expected.path`` is relative to it).
    expected : iterable of Expected
    jobs : int
        Files hashed at once (threads; hashing releases the GIL).
    progress : callable, optional
        Called as ``progress(done, total)``.
    """
    root = Path(root)
    todo = list(expected)
    report = VerifyReport()
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for i, (problem, size, _) in enumerate(pool.map(lambda e: _check(root, e), todo), 1):
            report.n_checked += 1
            report.n_bytes += size
            if problem is not None:
                report.problems.append(problem)
            if progress is not None:
                progress(i, len(todo))
    return report


def _release_todo(root: Path, name: str, known: dict[str, Expected], report: VerifyReport,
                  listed: bool = False) -> list[Expected]:
    """The files of a release to check, after checking its manifest.

    A manifest that fails its recorded checksum or cannot be read is reported (once) and its
    file list is not used. ``listed``: the manifest itself is already among the checks.
    """
    manifest = f"releases/{name}/manifest.json"
    exp = known.get(manifest)
    if exp is not None:
        problem, size, _ = _check(root, exp)
        if problem is not None:
            if not listed:
                report.problems.append(problem)
            return []
        if not listed:
            report.n_checked += 1
            report.n_bytes += size
    try:
        return release_expectations(root, name)
    except ZsdsError as exc:
        report.problems.append(Problem(manifest, "unreadable", f"release {name}", found=str(exc)))
        return []


def _merge(first: VerifyReport, second: VerifyReport) -> VerifyReport:
    second.n_checked += first.n_checked
    second.n_bytes += first.n_bytes
    second.problems[:0] = first.problems
    return second


def verify_archive(root: str | Path, engine: Engine, *, release: str | None = None,
                   record: bool = False, update: bool = False, jobs: int = 4,
                   progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    """Verify every checksummed file of an archive, or of one release.

    Parameters
    ----------
    root : path-like
        Archive root.
    engine : sqlalchemy.Engine
        Operations database of the archive.
    release : str, optional
        Check only the files of this release (and its manifest).
    record : bool
        First record the checksum of every archive file that has none yet (they are then
        part of the check); without it such files are listed in ``unrecorded``.
    update : bool
        With ``record``: re-record ``product_checksums`` entries whose file changed or
        disappeared instead of reporting them (after a legitimate rewrite by a writer that
        does not record checksums). Raw, calibration and release checksums are never changed.
    jobs : int
        Files hashed at once.
    progress : callable, optional
        ``progress(done, total)``.

    Returns
    -------
    VerifyReport
    """
    root = Path(root)
    known = expected_checksums(engine)
    if release is not None:
        release_expectations(root, release)  # raises ReleaseNotFoundError
        report = VerifyReport()
        todo = _release_todo(root, release, known, report)
        return _merge(report, verify_files(root, todo, jobs=jobs, progress=progress))
    unrecorded = [p for p in archive_files(root) if p not in known]
    recorded: list[str] = []
    if record and unrecorded:
        for i in range(0, len(unrecorded), 1000):
            record_checksums(engine, root, unrecorded[i:i + 1000])
        recorded, unrecorded = unrecorded, []
        known = expected_checksums(engine)
    todo = list(known.values())
    pre = VerifyReport()
    for name in release_names(root):
        todo.extend(_release_todo(root, name, known, pre, listed=True))
    report = _merge(pre, verify_files(root, todo, jobs=jobs, progress=progress))
    report.unrecorded, report.recorded = unrecorded, recorded
    if record and update:
        mine = [p for p in report.problems if p.source == "product_checksums"]
        gone = [p.path for p in mine if p.kind == "missing"]
        forget_checksums(engine, root, gone)
        record_checksums(engine, root, [p.path for p in mine if p.kind != "missing"])
        report.updated = [p.path for p in mine]
        report.problems = [p for p in report.problems if p.source != "product_checksums"]
    return report
