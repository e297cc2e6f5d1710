"""Operations-database access: engines, schema creation and small repository functions.

Every function that writes takes an :class:`~sqlalchemy.engine.Engine` and runs in one
transaction (``engine.begin()``), so a failure part-way leaves nothing half-registered.
Lookups take a :class:`~sqlalchemy.engine.Connection` or an engine.
Writes are *upsert-or-skip*: registering what is already registered, with the same content,
changes nothing (not even timestamps).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine, and_, create_engine, event, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from ..errors import CalibrationNotFoundError
from . import schema as s

__all__ = ["make_engine", "init_db", "engine_from_config", "RegisterResult",
           "register_raw_file", "check_raw_file", "record_quarantine", "register_calibration",
           "find_calibration", "raw_files_for_night", "quadrant_rows", "table_snapshot",
           "utcnow", "object_quadrants", "processing_state", "record_processing",
           "set_quadrant_status"]

_SQLITE_TIMEOUT_MS = 30000


def utcnow() -> datetime:
    """The current UTC time, timezone-aware (row timestamps)."""
    return datetime.now(timezone.utc)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={_SQLITE_TIMEOUT_MS}")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_engine(url: str, **kwargs) -> Engine:
    """An engine for a database URL, with sensible settings per backend.

    SQLite: WAL journal, foreign keys enforced, 30 s busy timeout, parent directory created.
    PostgreSQL (``postgresql+psycopg://...``): connections checked before use.
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            from pathlib import Path
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def init_db(engine: Engine) -> Engine:
    """Create missing tables (idempotent) and record the schema version."""
    s.metadata.create_all(engine)
    with engine.begin() as conn:
        row = conn.execute(select(s.schema_info.c.value)
                           .where(s.schema_info.c.key == "schema_version")).first()
        if row is None:
            try:
                conn.execute(s.schema_info.insert().values(key="schema_version",
                                                           value=s.SCHEMA_VERSION))
            except IntegrityError:  # created concurrently
                pass
    return engine


def engine_from_config(config) -> Engine:
    """Engine for ``config.database_url`` with the schema created."""
    return init_db(make_engine(config.database_url))


# -- raw files ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RegisterResult:
    """Outcome of :func:`register_raw_file`.

    ``status`` is ``"new"`` (registered now), ``"same"`` (already registered with the same
    checksum; nothing changed) or ``"conflict"`` (another file is registered for this
    exposure and CCD, or the exposure keywords disagree; nothing changed); ``message``
    explains a conflict.
    """

    status: str
    raw_file_id: int | None = None
    message: str = ""


_EXPOSURE_KEYS = ("night", "obsjd", "imgtype", "filter_code", "field_id")


def _check_exposure(conn: Connection, exposure: dict) -> str:
    """Insert the exposure if new; return a message if it disagrees with the stored one."""
    row = conn.execute(select(s.exposures).where(s.exposures.c.expid == exposure["expid"])
                       ).mappings().first()
    if row is None:
        conn.execute(s.exposures.insert().values(**exposure, created_at=utcnow()))
        return ""
    bad = [k for k in _EXPOSURE_KEYS if row[k] != exposure[k]
           and not (isinstance(row[k], float) and abs(row[k] - exposure[k]) < 1e-7)]
    if bad:
        return ("exposure keywords disagree with the registered exposure EXPID="
                f"{exposure['expid']}: " + ", ".join(f"{k} {row[k]!r} != {exposure[k]!r}"
                                                      for k in bad))
    return ""


def register_raw_file(engine: Engine, exposure: dict, raw_file: dict,
                      quadrants: list[dict]) -> RegisterResult:
    """Register an exposure (if new), one raw file and its quadrants in ONE transaction.

    Parameters
    ----------
    engine : Engine
    exposure : dict
        Columns of ``exposures`` (``expid``, ``night``, ...).
    raw_file : dict
        Columns of ``raw_files`` (``expid``, ``ccd_id``, ``filename``, ``sha256``, ...).
    quadrants : list of dict
        Columns of ``quadrant_images`` except ``raw_file_id``.

    Returns
    -------
    RegisterResult
    """
    for attempt in range(2):
        try:
            with engine.begin() as conn:
                return _register_tx(conn, exposure, raw_file, quadrants)
        except IntegrityError:
            if attempt:  # a concurrent writer won twice: report what is there now
                raise
    raise AssertionError("unreachable")


def check_raw_file(conn: Connection | Engine, raw_file: dict) -> RegisterResult | None:
    """What registering ``raw_file`` would meet: None (nothing registered for its exposure,
    CCD or name), ``same`` or ``conflict`` (see :class:`RegisterResult`)."""
    if isinstance(conn, Engine):
        with conn.connect() as c:
            return check_raw_file(c, raw_file)
    rf = s.raw_files.c
    existing = conn.execute(select(rf.id, rf.sha256, rf.filename).where(
        ((rf.expid == raw_file["expid"]) & (rf.ccd_id == raw_file["ccd_id"]))
        | (rf.filename == raw_file["filename"]))).first()
    if existing is None:
        return None
    if existing.sha256 == raw_file["sha256"]:
        return RegisterResult("same", existing.id)
    return RegisterResult("conflict", existing.id,
                          "duplicate exposure with different content (registered: "
                          f"{existing.filename} sha256 {existing.sha256[:12]}...)")


def _register_tx(conn: Connection, exposure: dict, raw_file: dict,
                 quadrants: list[dict]) -> RegisterResult:
    rf = s.raw_files.c
    existing = check_raw_file(conn, raw_file)
    if existing is not None:
        return existing
    message = _check_exposure(conn, exposure)
    if message:
        return RegisterResult("conflict", None, message)
    now = utcnow()
    rid = conn.execute(s.raw_files.insert().values(**raw_file, created_at=now)
                       .returning(rf.id)).scalar_one()
    if quadrants:
        conn.execute(s.quadrant_images.insert(),
                     [dict(q, raw_file_id=rid, updated_at=now) for q in quadrants])
    return RegisterResult("new", rid)


def record_quarantine(engine: Engine, *, filename: str, sha256: str, source_path: str,
                      quarantine_path: str | None, reason: str) -> bool:
    """Record a quarantined file; returns False if the same file (name, sha256) was already."""
    q = s.quarantine.c
    with engine.begin() as conn:
        if conn.execute(select(q.id).where((q.filename == filename) & (q.sha256 == sha256))
                        ).first() is not None:
            return False
        conn.execute(s.quarantine.insert().values(
            filename=filename, sha256=sha256, source_path=source_path,
            quarantine_path=quarantine_path, reason=reason, created_at=utcnow()))
    return True


def raw_files_for_night(conn: Connection | Engine, night: str, imgtype: str,
                        filter_code: str | None = None) -> list[dict]:
    """Registered raw files of a night and image type, ordered by (ccd_id, obsjd, expid)."""
    rf, ex = s.raw_files.c, s.exposures.c
    stmt = (select(s.raw_files, ex.obsjd, ex.exptime)
            .join(s.exposures, ex.expid == rf.expid)
            .where((rf.night == night) & (rf.imgtype == imgtype))
            .order_by(rf.ccd_id, ex.obsjd, rf.expid))
    if filter_code is not None:
        stmt = stmt.where(rf.filter_code == filter_code)
    return _fetch(conn, stmt)


def quadrant_rows(conn: Connection | Engine, expid: int, ccd_id: int) -> list[dict]:
    """The ``quadrant_images`` rows of one raw file, by qid."""
    qi = s.quadrant_images.c
    return _fetch(conn, select(s.quadrant_images).where(
        (qi.expid == expid) & (qi.ccd_id == ccd_id)).order_by(qi.qid))


def _fetch(conn, stmt) -> list[dict]:
    if isinstance(conn, Engine):
        with conn.connect() as c:
            return [dict(r) for r in c.execute(stmt).mappings()]
    return [dict(r) for r in conn.execute(stmt).mappings()]


# -- calibrations ------------------------------------------------------------------------------
_CAL_CONTENT = ("path", "unc_path", "log_path", "sha256", "n_frames", "mid_jd",
                "valid_from_jd", "valid_to_jd", "status", "qa")


def register_calibration(engine: Engine, row: dict[str, Any]) -> str:
    """Insert or update a calibration product; returns ``"new"``, ``"updated"`` or ``"same"``.

    ``row`` holds the columns of ``calibrations`` (``qa`` may be a dict: stored as sorted
    JSON). The key is (caltype, night, filter_code, ccd_id, qid); an unchanged product
    updates nothing.
    """
    row = dict(row)
    if isinstance(row.get("qa"), dict):
        row["qa"] = json.dumps(row["qa"], sort_keys=True)
    c = s.calibrations.c
    key = and_(c.caltype == row["caltype"], c.night == row["night"],
               c.filter_code == row["filter_code"], c.ccd_id == row["ccd_id"],
               c.qid == row["qid"])
    with engine.begin() as conn:
        old = conn.execute(select(s.calibrations).where(key)).mappings().first()
        now = utcnow()
        if old is None:
            conn.execute(s.calibrations.insert().values(**row, created_at=now, updated_at=now))
            return "new"
        changed = {k: row[k] for k in _CAL_CONTENT if k in row and old[k] != row[k]}
        if not changed:
            return "same"
        conn.execute(s.calibrations.update().where(key).values(**changed, updated_at=now))
        return "updated"


def find_calibration(conn: Connection | Engine, caltype: str, ccd_id: int, qid: int,
                     filter_code: str | None, night_or_jd: str | float) -> dict:
    """The valid calibration nearest in time to a night or JD.

    Parameters
    ----------
    conn : Connection or Engine
    caltype : str
        ``bias``, ``hifreqflat`` or ``badpix``.
    ccd_id, qid : int
    filter_code : str or None
        ``zg``/``zr``/``zi``; ignored for biases (stored as ``OO``).
    night_or_jd : str or float
        A night ``YYYYMMDD`` (its UTC midnight + 0.5 d is used) or a JD (UTC).

    Returns
    -------
    dict
        The ``calibrations`` row whose validity interval contains the time and whose
        ``mid_jd`` is nearest to it.

    Raises
    ------
    CalibrationNotFoundError
        Naming caltype, night/JD, CCD, quadrant and filter, if none is valid.
    """
    jd = _to_jd(night_or_jd)
    fc = "OO" if caltype == "bias" else filter_code
    c = s.calibrations.c
    stmt = (select(s.calibrations)
            .where((c.caltype == caltype) & (c.ccd_id == ccd_id) & (c.qid == qid)
                   & (c.filter_code == fc) & (c.status == "valid")
                   & (c.valid_from_jd <= jd) & (c.valid_to_jd >= jd))
            .order_by(func.abs(c.mid_jd - jd), c.night.desc()).limit(1))
    rows = _fetch(conn, stmt)
    if not rows:
        raise CalibrationNotFoundError(
            f"no valid {caltype} calibration for night/JD {night_or_jd} (JD {jd:.5f}), "
            f"CCD_ID={ccd_id} qid={qid} filter={fc}; run 'zsds calib "
            f"{'bias' if caltype == 'bias' else 'flat'} NIGHT' for a nearby night")
    return rows[0]


def _to_jd(night_or_jd: str | float) -> float:
    if isinstance(night_or_jd, str):
        from astropy.time import Time
        n = night_or_jd
        if len(n) != 8 or not n.isdigit():
            raise ValueError(f"night {n!r} is not YYYYMMDD")
        return float(Time(f"{n[:4]}-{n[4:6]}-{n[6:]}T12:00:00", scale="utc").jd)
    return float(night_or_jd)


def table_snapshot(engine: Engine) -> dict[str, list[tuple]]:
    """Every row of every table, sorted (for idempotency checks and debugging)."""
    out = {}
    with engine.connect() as conn:
        for name, table in s.metadata.tables.items():
            rows = conn.execute(select(table)).all()
            out[name] = sorted((tuple(r) for r in rows), key=repr)
    return out


# -- per-quadrant processing state ---------------------------------------------------------
def object_quadrants(conn: Connection | Engine, night: str) -> list[dict]:
    """Every object-exposure quadrant of a night with its exposure metadata, by (obsjd, ccd, qid)."""
    qi, rf, ex = s.quadrant_images.c, s.raw_files.c, s.exposures.c
    stmt = (select(qi.expid, qi.ccd_id, qi.qid, qi.rcid, qi.status, rf.path.label("raw_path"),
                   ex.night, ex.filefracday, ex.obsjd, ex.field_id, ex.filter_code,
                   ex.programid, ex.exptime)
            .join(s.raw_files, rf.id == qi.raw_file_id)
            .join(s.exposures, ex.expid == qi.expid)
            .where((ex.night == night) & (ex.imgtype == "object"))
            .order_by(ex.obsjd, qi.ccd_id, qi.qid))
    return _fetch(conn, stmt)


def processing_state(conn: Connection | Engine, stage: str, night: str | None = None) -> dict:
    """``{(expid, ccd_id, qid): row}`` of the ``processing`` table for a stage."""
    p = s.processing.c
    stmt = select(s.processing).where(p.stage == stage)
    if night is not None:
        ex = s.exposures.c
        stmt = stmt.join(s.exposures, ex.expid == p.expid).where(ex.night == night)
    return {(r["expid"], r["ccd_id"], r["qid"]): r for r in _fetch(conn, stmt)}


def record_processing(engine: Engine, stage: str, expid: int, ccd_id: int, qid: int,
                      status: str, message: str | None = None) -> None:
    """Upsert the processing state of one quadrant and stage (one transaction).

    ``status`` is ``running``, ``done`` or ``failed``; ``attempts`` counts the ``running``
    transitions, so a quadrant recomputed after a lost worker shows 2.
    """
    p = s.processing.c
    now = utcnow()
    key = (p.stage == stage) & (p.expid == expid) & (p.ccd_id == ccd_id) & (p.qid == qid)
    with engine.begin() as conn:
        row = conn.execute(select(s.processing).where(key)).mappings().first()
        if row is None:
            conn.execute(insert(s.processing).values(
                stage=stage, expid=expid, ccd_id=ccd_id, qid=qid, status=status,
                message=message, attempts=1 if status == "running" else 0,
                started_at=now, finished_at=None if status == "running" else now))
            return
        values = {"status": status, "message": message}
        if status == "running":
            values.update(attempts=row["attempts"] + 1, started_at=now, finished_at=None)
        else:
            values["finished_at"] = now
        conn.execute(update(s.processing).where(key).values(**values))


def set_quadrant_status(engine: Engine, expid: int, ccd_id: int, qid: int, status: str,
                        message: str | None = None) -> None:
    """Set ``quadrant_images.status`` (raw, calibrated, failed, bad, ...)."""
    qi = s.quadrant_images.c
    with engine.begin() as conn:
        conn.execute(update(s.quadrant_images)
                     .where((qi.expid == expid) & (qi.ccd_id == ccd_id) & (qi.qid == qid))
                     .values(status=status, status_message=message, updated_at=utcnow()))
