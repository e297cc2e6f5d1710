"""Alert history (``prv_candidates``) from the operations database.

* detections: rows of ``candidates`` within 1.5" observed in the 30 days before the alert
  (their ``payload`` holds the prv_candidate fields);
* upper limits: ``quadrant_images`` with a difference image (``diffmaglim`` set) whose
  footprint covers the position, observed in the window, without a detection there. They get
  ``candid, isdiffpos, ra, dec, magpsf, sigmapsf, ranr, decnr`` = null and ``diffmaglim``
  set (as ZTF).

Footprint test: within ``footprint_radius`` of (``ra_center``, ``dec_center``) and, when the
JSON ``footprint`` corners are stored, inside that quadrilateral.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.engine import Connection

from ..db import schema as s
from .objects import MATCH_RADIUS_ARCSEC
from .packet import coerce_record
from .sky import cone_clause, in_footprint, separation_deg

__all__ = ["HISTORY_DAYS", "history_for", "detections_near", "upper_limits_at"]

HISTORY_DAYS = 30.0
_MAX_FOOTPRINT_DEG = 2.0


def detections_near(conn: Connection, ra: float, dec: float, jd_min: float, jd_max: float,
                    radius_arcsec: float = MATCH_RADIUS_ARCSEC) -> list[dict[str, Any]]:
    """Candidates within ``radius_arcsec`` with ``jd_min <= jd < jd_max`` (prv fields)."""
    c = s.candidates.c
    rows = conn.execute(select(c.candid, c.pid, c.jd, c.ra, c.dec, c.payload)
                        .where(cone_clause(c.ra, c.dec, ra, dec, radius_arcsec / 3600.0),
                               c.jd >= jd_min, c.jd < jd_max)).all()
    out = []
    for r in rows:
        if separation_deg(ra, dec, r.ra, r.dec) * 3600.0 <= radius_arcsec:
            values = json.loads(r.payload) if r.payload else {}
            values.update(candid=r.candid, pid=r.pid, jd=r.jd, ra=r.ra, dec=r.dec)
            values.setdefault("rbversion", "none")
            out.append(coerce_record(values, "prv_candidate", where=f"candidate {r.candid}"))
    return out


def upper_limits_at(conn: Connection, ra: float, dec: float, jd_min: float, jd_max: float,
                    exclude_pids=()) -> list[dict[str, Any]]:
    """Non-detections: difference images covering (ra, dec) with ``jd_min <= jd < jd_max``."""
    q, e = s.quadrant_images.c, s.exposures.c
    stmt = (select(q.pid, q.rcid, q.diffmaglim, q.ra_center, q.dec_center, q.footprint_radius,
                   q.footprint, e.obsjd, e.filterid, e.programid, e.field_id)
            .join(s.exposures, s.exposures.c.expid == q.expid)
            .where(q.diffmaglim.is_not(None), q.pid.is_not(None),
                   cone_clause(q.ra_center, q.dec_center, ra, dec, _MAX_FOOTPRINT_DEG),
                   and_(e.obsjd >= jd_min, e.obsjd < jd_max)))
    out = []
    for r in conn.execute(stmt):
        if r.pid in exclude_pids or not _covers(r, ra, dec):
            continue
        out.append(coerce_record(dict(jd=r.obsjd, fid=r.filterid, pid=r.pid, programid=r.programid,
                                      diffmaglim=r.diffmaglim, field=r.field_id, rcid=r.rcid,
                                      rbversion="none"),
                                 "prv_candidate", where=f"quadrant image pid {r.pid}"))
    return out


def _covers(row, ra: float, dec: float) -> bool:
    if row.footprint_radius is None or row.ra_center is None:
        return False
    if separation_deg(ra, dec, row.ra_center, row.dec_center) > row.footprint_radius:
        return False
    return in_footprint(ra, dec, json.loads(row.footprint)) if row.footprint else True


def history_for(conn: Connection, ra: float, dec: float, jd: float, *,
                radius_arcsec: float = MATCH_RADIUS_ARCSEC,
                days: float = HISTORY_DAYS) -> list[dict[str, Any]]:
    """``prv_candidates`` of an alert at (ra, dec, jd): detections and upper limits.

    Parameters
    ----------
    conn : Connection
        Operations database.
    ra, dec : float
        Alert position, deg.
    jd : float
        Alert time; the window is ``[jd - days, jd)`` (the alert itself is excluded).
    radius_arcsec : float
        Detection match radius.
    days : float
        History length (ZTF: 30 days).

    Returns
    -------
    list of dict
        prv_candidate records, oldest first (ties: detections first, then by pid).
    """
    det = detections_near(conn, ra, dec, jd - days, jd, radius_arcsec)
    lim = upper_limits_at(conn, ra, dec, jd - days, jd, {d["pid"] for d in det})
    return sorted(det + lim, key=lambda p: (p["jd"], p["candid"] is None, p["pid"]))
