"""Raw ingest: validate, archive (with a checksum), register; quarantine what is bad.

Per file, independently (one bad file never stops the batch):

1. compute the SHA-256 of the bytes;
2. read and validate it against ``raw-camera-format.md`` (:func:`zsds.io.raw.read_raw`) and
   compute the raw QA of its four quadrants (:func:`zsds.core.prepare.prepare_quadrant`);
3. copy it to ``raw/YYYY/MMDD/ffffff/<name>`` (temporary file + rename; skipped when an
   identical file is already there);
4. register exposure, raw file and quadrants in ONE database transaction.

Outcomes: ``ingested``; ``unchanged`` (the same bytes are already registered: nothing
changes); ``quarantined`` (invalid, or a *different* file already registered for the same
exposure and CCD: copied to ``quarantine/<YYYYMMDD>/`` with ``<name>.reason.txt`` and a
``quarantine`` row); ``failed`` (the file cannot even be read, e.g. it vanished; recorded in
the report only).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..camera import load_camera, rcid_of
from ..core.prepare import prepare_quadrant
from ..db import ops
from ..errors import RawFormatError
from ..io.paths import ArchiveLayout, night_of_jd, parse_raw_name
from ..io.raw import RawExposure, read_raw

__all__ = ["ingest", "IngestReport", "FileResult", "sha256_of", "expand_paths",
           "DUPLICATE_REASON"]

DUPLICATE_REASON = "duplicate exposure with different content"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileResult:
    """Outcome for one input file; ``archive_path`` is the raw or quarantine copy."""

    source: Path
    status: str
    reason: str = ""
    archive_path: Path | None = None


@dataclass
class IngestReport:
    """Per-file outcomes of :func:`ingest`, in input order."""

    results: list[FileResult] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def ok(self) -> bool:
        """True if no file was quarantined or failed."""
        return all(r.status in ("ingested", "unchanged") for r in self.results)

    def summary(self) -> str:
        parts = [f"{self.count(s)} {s}" for s in ("ingested", "unchanged", "quarantined",
                                                   "failed")]
        return f"{len(self.results)} files: " + ", ".join(parts)


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def expand_paths(paths) -> list[Path]:
    """Files given, with folders expanded recursively to their ``*.fits.fz`` (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*.fits.fz") if q.is_file()))
        else:
            out.append(p)
    return out


def _copy_atomic(src: Path, dst: Path, sha: str) -> bool:
    """Copy ``src`` to ``dst`` via a temporary file; False if an identical file is there."""
    if dst.exists() and sha256_of(dst) == sha:
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _rel(layout: ArchiveLayout, path: Path) -> str:
    return path.relative_to(layout.root).as_posix()


def _quadrant_rows(raw: RawExposure) -> list[dict]:
    cam, rows = load_camera(), []
    expid, ccd = int(raw.primary["EXPID"]), raw.ccd_id
    for q in raw.quadrants:
        h = q.header
        a, b = cam.nonlinearity(ccd, q.qid - 1)
        prep = prepare_quadrant(q.data, q.overscan, q.qid, float(h["GAIN"]),
                                float(h["SATURATE"]), a, b, read_noise=float(h["READNOI"]))
        rows.append(dict(expid=expid, ccd_id=ccd, qid=q.qid, rcid=rcid_of(ccd, q.qid),
                         nx=q.data.shape[1], ny=q.data.shape[0], n_overscan=q.overscan.shape[1],
                         gain=float(h["GAIN"]), read_noise=float(h["READNOI"]),
                         saturate=float(h["SATURATE"]), status="raw", **prep.qa))
    return rows


def _records(raw: RawExposure, name: str, rel_path: str, sha: str, size: int):
    p = raw.primary
    rn = parse_raw_name(name)
    night = night_of_jd(float(p["OBSJD"]))
    exposure = dict(expid=int(p["EXPID"]), night=night, filefracday=rn.filefracday,
                    obsjd=float(p["OBSJD"]), imgtype=raw.imgtype, filter_code=rn.filter_code,
                    filterid=int(p["FILTERID"]), field_id=int(p["FIELDID"]),
                    programid=int(p["PROGRMID"]), exptime=float(p["EXPTIME"]),
                    airmass=float(p["AIRMASS"]), ra=float(p["TELRAD"]),
                    dec=float(p["TELDECD"]))
    raw_file = dict(expid=exposure["expid"], ccd_id=raw.ccd_id, filename=name, path=rel_path,
                    sha256=sha, size_bytes=size, night=night, imgtype=raw.imgtype,
                    filter_code=rn.filter_code, status="ingested")
    return exposure, raw_file


def _quarantine_day(name: str) -> str:
    try:
        return parse_raw_name(name).date
    except ValueError:
        return datetime.now(timezone.utc).strftime("%Y%m%d")


def _quarantine(src: Path, sha: str, reason: str, layout: ArchiveLayout, engine,
                move: bool) -> FileResult:
    qdir = layout.quarantine_dir / _quarantine_day(src.name)
    dst = qdir / src.name
    if dst.exists() and sha256_of(dst) != sha:
        dst = qdir / f"{src.name}.{sha[:12]}"
    _copy_atomic(src, dst, sha)
    note = dst.with_name(dst.name + ".reason.txt")
    text = f"{src.name}\nsha256 {sha}\nsource {src}\nreason: {reason}\n"
    if not note.exists() or note.read_text() != text:
        note.write_text(text)
    ops.record_quarantine(engine, filename=src.name, sha256=sha, source_path=str(src),
                          quarantine_path=_rel(layout, dst), reason=reason)
    if move and src.resolve() != dst.resolve():
        src.unlink()
    return FileResult(src, "quarantined", reason, dst)


def ingest_file(src: Path, layout: ArchiveLayout, engine, *, move: bool = False) -> FileResult:
    """Ingest one raw file (see the module docstring); never raises for bad input."""
    src = Path(src)
    try:
        sha, size = sha256_of(src), src.stat().st_size
    except OSError as exc:
        return FileResult(src, "failed", f"cannot read file: {exc.strerror or exc}")
    try:
        raw = read_raw(src)
        rows = _quadrant_rows(raw)
    except RawFormatError as exc:
        return _quarantine(src, sha, "; ".join(exc.violations), layout, engine, move)
    except Exception as exc:  # noqa: BLE001 - any unreadable content is quarantined
        return _quarantine(src, sha, f"cannot process pixels ({type(exc).__name__}: {exc})",
                           layout, engine, move)
    dst = layout.raw_path(src.name)
    exposure, raw_file = _records(raw, src.name, _rel(layout, dst), sha, size)
    known = ops.check_raw_file(engine, raw_file)
    if known is not None and known.status == "conflict":  # never touch the archived file
        return _quarantine(src, sha, known.message, layout, engine, move)
    same_place = dst.exists() and src.resolve() == dst.resolve()
    copied = False if same_place else _copy_atomic(src, dst, sha)
    try:
        result = ops.register_raw_file(engine, exposure, raw_file, rows)
    except Exception:
        if copied:
            dst.unlink(missing_ok=True)
        raise
    if result.status == "conflict":  # lost a race with a concurrent ingest
        if copied and sha256_of(dst) == sha:
            dst.unlink(missing_ok=True)
        return _quarantine(src, sha, result.message, layout, engine, move)
    if move and not same_place:
        src.unlink()
    status = "ingested" if result.status == "new" else "unchanged"
    return FileResult(src, status, "", dst)


def ingest(paths, config, *, move: bool = False, engine=None) -> IngestReport:
    """Ingest raw files and folders of raw files into the archive and the database.

    Parameters
    ----------
    paths : iterable of path-like
        Raw files, or folders searched recursively for ``*.fits.fz``.
    config : ZsdsConfig
        Archive root and database URL.
    move : bool
        Remove each source once it is archived or quarantined (default: copy).
    engine : sqlalchemy.Engine, optional
        An engine to use instead of one made from ``config.database_url``.

    Returns
    -------
    IngestReport
        One :class:`FileResult` per input file.
    """
    layout = ArchiveLayout(config.archive.root)
    engine = engine or ops.engine_from_config(config)
    report = IngestReport()
    for src in expand_paths(paths):
        report.results.append(ingest_file(src, layout, engine, move=move))
    return report
