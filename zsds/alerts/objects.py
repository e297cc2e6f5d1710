"""objectId assignment, ZTF style: ``ZTF`` + 2-digit year + 7 lowercase letters.

A candidate gets the objectId of the nearest known object within 1.5 arcsec; otherwise a new
object is created, named from the UT year of this first detection and a running number
(0 -> ``aaaaaaa``, 1 -> ``aaaaaab``, ... base 26). The object keeps the position of its first
detection (so matching never drifts).

The running numbers are split into blocks of 62,500 per field and readout quadrant (block =
``(field % 2000) * 64 + rcid``; 128,000 blocks fill the 26**7 names of a year), each with its
own counter in ``object_counters``. A name then depends only on the order of detections within
one field-quadrant, which ``run-night`` processes in time order, so reprocessing a night, on
any cluster and any number of workers, gives the same objectIds. (Fields numbered 2000 and
above share blocks with field - 2000; their names stay unique but their order may then depend
on scheduling.)

Idempotent: a candid already registered returns its recorded objectId; re-running a night
assigns the same IDs. Concurrency: the counter is advanced with an ``UPDATE`` inside the
transaction that inserts the object (a row lock in PostgreSQL, the write lock in SQLite), and
``objects.object_id`` / ``candidates.candid`` are unique; on a conflict the whole batch is
retried. Two writers creating an object at the *same* position at the same moment could both
create one; with one writer per quadrant this needs overlapping quadrants processed
simultaneously, which one exposure never has.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from astropy.time import Time
from sqlalchemy import Engine, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, OperationalError

from ..db import schema as s
from ..db.ops import utcnow
from ..errors import ZsdsError
from .schema import record_fields
from .sky import cone_clause, separation_deg

__all__ = ["MATCH_RADIUS_ARCSEC", "BLOCK_SIZE", "counter_block", "object_name", "parse_object_name", "find_object",
           "assign_object_ids", "candidate_row"]

MATCH_RADIUS_ARCSEC = 1.5
BLOCK_SIZE = 62_500
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_NLET = 7


def object_name(year: int, index: int) -> str:
    """``ZTF`` + ``yy`` + 7 letters encoding ``index`` in base 26 (``aaaaaaa`` = 0)."""
    if not 0 <= index < 26 ** _NLET:
        raise ValueError(f"object index {index} out of range 0..26**7-1")
    letters = []
    for _ in range(_NLET):
        index, r = divmod(index, 26)
        letters.append(_LETTERS[r])
    return f"ZTF{year % 100:02d}" + "".join(reversed(letters))


def parse_object_name(name: str) -> tuple[int, int]:
    """``(yy, index)`` of an objectId; ValueError if it is not in the ZTF style."""
    if len(name) != 12 or not name.startswith("ZTF") or not name[3:5].isdigit() \
            or any(c not in _LETTERS for c in name[5:]):
        raise ValueError(f"objectId {name!r} is not ZTF + 2 digits + 7 lowercase letters")
    index = 0
    for c in name[5:]:
        index = index * 26 + _LETTERS.index(c)
    return int(name[3:5]), index


def find_object(conn: Connection, ra: float, dec: float,
                radius_arcsec: float = MATCH_RADIUS_ARCSEC) -> tuple[str, float] | None:
    """The nearest object within ``radius_arcsec``: ``(object_id, separation arcsec)``."""
    r = radius_arcsec / 3600.0
    rows = conn.execute(select(s.objects.c.object_id, s.objects.c.ra, s.objects.c.dec)
                        .where(cone_clause(s.objects.c.ra, s.objects.c.dec, ra, dec, r))).all()
    if not rows:
        return None
    sep = separation_deg(ra, dec, [x.ra for x in rows], [x.dec for x in rows]) * 3600.0
    i = int(np.argmin(sep))
    return (rows[i].object_id, float(sep[i])) if sep[i] <= radius_arcsec else None


def counter_block(field_id: int, rcid: int) -> int:
    """Block of the objectId name space of a field and readout quadrant (rcid 0-63)."""
    if not 0 <= int(rcid) < 64:
        raise ZsdsError(f"rcid {rcid} outside 0..63")
    return (int(field_id) % 2000) * 64 + int(rcid)


def _next_name(conn: Connection, year: int, block: int) -> str:
    c = s.object_counters.c
    where = (c.year == year) & (c.block == block)
    done = conn.execute(update(s.object_counters).where(where)
                        .values(next_index=c.next_index + 1))
    if done.rowcount == 0:
        conn.execute(s.object_counters.insert().values(year=year, block=block, next_index=1))
        n = 0
    else:
        n = conn.execute(select(c.next_index).where(where)).scalar_one() - 1
    if n >= BLOCK_SIZE:
        raise ZsdsError(f"objectId block {block} of {year} is full ({BLOCK_SIZE} new objects "
                        "in one field-quadrant and year)")
    return object_name(year, block * BLOCK_SIZE + n)


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.generic,)):
        v = v.item()
    if isinstance(v, bool):
        return "t" if v else "f"
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def candidate_row(cand: Mapping[str, Any], object_id: str) -> dict[str, Any]:
    """The ``candidates`` row of a candidate record (payload: its prv_candidate fields)."""
    for key in ("candid", "pid", "expid", "jd", "ra", "dec", "isdiffpos"):
        if cand.get(key) is None:
            raise ZsdsError(f"candidate.{key}: required to register the candidate")
    rcid = cand.get("rcid")
    ccd_id = cand.get("ccd_id", None if rcid is None else int(rcid) // 4 + 1)
    qid = cand.get("qid", None if rcid is None else int(rcid) % 4 + 1)
    if ccd_id is None or qid is None:
        raise ZsdsError(f"candidate {cand['candid']}: give ccd_id and qid (or rcid)")
    fields = {name for name, _ in record_fields("prv_candidate")}
    payload = {k: _jsonable(v) for k, v in cand.items() if k in fields}
    opt = {k: (None if cand.get(k) is None else float(cand[k]))
           for k in ("magpsf", "sigmapsf", "scorr", "rb", "diffmaglim")}
    return dict(candid=int(cand["candid"]), pid=int(cand["pid"]), expid=int(cand["expid"]),
                ccd_id=int(ccd_id), qid=int(qid), object_id=object_id, jd=float(cand["jd"]),
                ra=float(cand["ra"]), dec=float(cand["dec"]),
                isdiffpos=str(_jsonable(cand["isdiffpos"])) in ("t", "1"),
                fid=None if cand.get("fid") is None else int(cand["fid"]),
                programid=None if cand.get("programid") is None else int(cand["programid"]),
                payload=json.dumps(payload, sort_keys=True), created_at=utcnow(), **opt)


def _assign_one(conn: Connection, cand: Mapping[str, Any], radius_arcsec: float) -> str:
    known = conn.execute(select(s.candidates.c.object_id)
                         .where(s.candidates.c.candid == int(cand["candid"]))).first()
    if known is not None and known.object_id:
        return known.object_id
    ra, dec, jd = float(cand["ra"]), float(cand["dec"]), float(cand["jd"])
    match = find_object(conn, ra, dec, radius_arcsec)
    now = utcnow()
    if match is None:
        rcid = cand.get("rcid")
        if rcid is None:
            rcid = 4 * (int(cand["ccd_id"]) - 1) + int(cand["qid"]) - 1
        block = counter_block(cand.get("field") or 0, rcid)
        object_id = _next_name(conn, int(Time(jd, format="jd").datetime.year), block)
        conn.execute(s.objects.insert().values(object_id=object_id, ra=ra, dec=dec, ndet=1,
                                               first_jd=jd, last_jd=jd, created_at=now,
                                               updated_at=now))
    else:
        object_id = match[0]
        o = s.objects.c
        row = conn.execute(select(o.first_jd, o.last_jd).where(o.object_id == object_id)).one()
        conn.execute(update(s.objects).where(o.object_id == object_id)
                     .values(ndet=o.ndet + 1, first_jd=min(row.first_jd or jd, jd),
                             last_jd=max(row.last_jd or jd, jd), updated_at=now))
    conn.execute(s.candidates.insert().values(**candidate_row(cand, object_id)))
    return object_id


def assign_object_ids(engine: Engine, candidates: Sequence[Mapping[str, Any]], *,
                      radius_arcsec: float = MATCH_RADIUS_ARCSEC,
                      retries: int = 5) -> list[str]:
    """Assign objectIds to a quadrant's candidates and register them (one transaction).

    Parameters
    ----------
    engine : Engine
        Operations database (schema created).
    candidates : sequence of mapping
        Candidate records with at least ``candid, pid, expid, jd, ra, dec, isdiffpos`` and
        ``ccd_id``/``qid`` or ``rcid``; processed in the given order.
    radius_arcsec : float
        Match radius (ZTF: 1.5").

    Returns
    -------
    list of str
        objectIds, one per candidate, in order.
    """
    for attempt in range(retries + 1):
        try:
            with engine.begin() as conn:
                return [_assign_one(conn, c, radius_arcsec) for c in candidates]
        except (IntegrityError, OperationalError):
            if attempt == retries:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")
