"""Difference-image candidates and alert packets by position, time and object ID.

``GET /candidates``: candidate rows (position, photometry, real-bogus score ...).
``GET /alerts``: the alerts of candidates matching the same criteria (one row per alert with
its download URL). ``GET /alerts/{candid}``: one alert packet (Avro container, or JSON).

Candidates and alerts are photometry: rows the user may not see are never returned. An alert
served to a user carries only the history entries (``prv_candidates``, ``fp_hists``) that user
may see, and its history counts (``ndethist``, ``ncovhist``, ``jdstarthist``, ``jdendhist``)
are recomputed from them.
"""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path
from typing import Literal

import pandas as pd
from fastapi import APIRouter, Depends, Path as PathParam, Query
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select

from ..alerts.sky import cone_clause, separation_deg
from ..db import schema as s
from ..io.paths import night_of_jd
from .access import Principal, get_principal, visible_sql
from .common import (ID, MAX_ID, Visibility, bad_request, check_radius, forbidden, get_ctx,
                     not_found, table_response)
from .context import ApiContext

__all__ = ["router", "search_candidates", "alert_for", "CANDIDATE_COLUMNS"]

router = APIRouter(tags=["candidates and alerts"])

#: Columns of a candidate search result.
CANDIDATE_COLUMNS = ("candid", "object_id", "jd", "ra", "dec", "fid", "programid", "pid",
                     "expid", "ccd_id", "qid", "isdiffpos", "magpsf", "sigmapsf", "diffmaglim",
                     "scorr", "rb", "status")
_OBJECT_ID = r"^ZTF\d{2}[a-z]{7}$"

Format = Literal["json", "csv", "ipac_table", "votable", "fits", "parquet"]


def search_candidates(ctx: ApiContext, principal: Principal, *, ra=None, dec=None,
                      radius_arcsec=0.0, jd_start=None, jd_end=None, object_id=None, candid=None,
                      rb_min=None, limit: int = 1000) -> pd.DataFrame:
    """Candidates visible to ``principal`` matching the criteria, sorted by ``jd, candid``.

    Returns
    -------
    pandas.DataFrame
        :data:`CANDIDATE_COLUMNS`, plus ``sep_arcsec`` for a cone search.
    """
    c = s.candidates.c
    cond = [visible_sql(principal, c.programid, c.jd, ctx.now_jd(), ctx.proprietary_days)]
    if ra is not None:
        cond.append(cone_clause(c.ra, c.dec, ra, dec, radius_arcsec / 3600.0))
    for value, clause in ((jd_start, lambda v: c.jd >= v), (jd_end, lambda v: c.jd <= v),
                          (object_id, lambda v: c.object_id.in_(v)),
                          (candid, lambda v: c.candid.in_(v)),
                          (rb_min, lambda v: c.rb >= v)):
        if value is not None:
            cond.append(clause(value))
    stmt = select(*[getattr(c, k) for k in CANDIDATE_COLUMNS]).where(*cond).order_by(c.jd, c.candid)
    if ra is None:
        stmt = stmt.limit(limit)
    with ctx.engine.connect() as conn:
        df = pd.DataFrame([dict(r._mapping) for r in conn.execute(stmt)],
                          columns=list(CANDIDATE_COLUMNS))
    if ra is not None:
        df["sep_arcsec"] = separation_deg(ra, dec, df["ra"], df["dec"]) * 3600.0 if len(df) else []
        df = df[df["sep_arcsec"] <= radius_arcsec].head(limit)
    return df.reset_index(drop=True)


def _criteria(ctx, ra, dec, radius_arcsec, object_id, candid):
    if (ra is None) != (dec is None):
        raise bad_request("give both ra and dec, or neither")
    if ra is not None:
        check_radius(ctx, radius_arcsec)
    for oid in object_id or []:
        if not re.match(_OBJECT_ID, oid):
            raise bad_request(f"object_id must look like ZTF26abcdefg, not {oid!r}")
    return dict(ra=ra, dec=dec, radius_arcsec=radius_arcsec, object_id=object_id or None,
                candid=candid or None)


@router.get("/candidates", summary="Search candidates")
def candidates_endpoint(
    ra: float | None = Query(None, ge=0, lt=360, allow_inf_nan=False, description="Centre, deg"),
    dec: float | None = Query(None, ge=-90, le=90, allow_inf_nan=False, description="Centre, deg"),
    radius_arcsec: float = Query(5.0, gt=0, allow_inf_nan=False),
    jd_start: float | None = Query(None, allow_inf_nan=False),
    jd_end: float | None = Query(None, allow_inf_nan=False),
    object_id: list[str] | None = Query(None, description="ZTFyyaaaaaaa"),
    candid: list[ID] | None = Query(None, description="Candidate IDs"),
    rb_min: float | None = Query(None, ge=0, le=1, allow_inf_nan=False),
    limit: int = Query(1000, ge=1),
    format: Format = Query("json"),
    ctx: ApiContext = Depends(get_ctx), principal: Principal = Depends(get_principal),
):
    """Difference-image candidates by cone, time window, object ID or candid."""
    crit = _criteria(ctx, ra, dec, radius_arcsec, object_id, candid)
    df = search_candidates(ctx, principal, **crit, jd_start=jd_start, jd_end=jd_end, rb_min=rb_min,
                           limit=min(limit, ctx.config.api.max_rows))
    return table_response(df, format, name="candidates")


@router.get("/alerts", summary="Search alerts")
def alerts_endpoint(
    ra: float | None = Query(None, ge=0, lt=360, allow_inf_nan=False),
    dec: float | None = Query(None, ge=-90, le=90, allow_inf_nan=False),
    radius_arcsec: float = Query(5.0, gt=0, allow_inf_nan=False),
    jd_start: float | None = Query(None, allow_inf_nan=False),
    jd_end: float | None = Query(None, allow_inf_nan=False),
    object_id: list[str] | None = Query(None),
    candid: list[ID] | None = Query(None, description="Candidate IDs"),
    limit: int = Query(1000, ge=1),
    format: Format = Query("json"),
    ctx: ApiContext = Depends(get_ctx), principal: Principal = Depends(get_principal),
):
    """Alerts (one per candidate with a packet) by cone, time window, object ID or candid."""
    crit = _criteria(ctx, ra, dec, radius_arcsec, object_id, candid)
    df = search_candidates(ctx, principal, **crit, jd_start=jd_start, jd_end=jd_end,
                           limit=min(limit, ctx.config.api.max_rows))
    df = df[[_alert_path(ctx, row) is not None for row in df.to_dict("records")]] if len(df) else df
    out = df[["candid", "object_id", "jd", "ra", "dec", "fid", "programid", "magpsf", "sigmapsf",
              "rb"]].copy()
    out["url"] = [f"/alerts/{int(c)}" for c in out["candid"]]
    return table_response(out.reset_index(drop=True), format, name="alerts")


def _alert_path(ctx: ApiContext, row: dict) -> Path | None:
    """The archive file holding a candidate's alert, or None."""
    from ..alerts.archive import archive_file

    a = s.alerts.c
    with ctx.engine.connect() as conn:
        stored = conn.execute(select(a.path).where(a.candid == int(row["candid"]))).scalar()
    night = night_of_jd(float(row["jd"]))
    prog = int(row["programid"])
    candidates = [ctx.layout.root / stored] if stored else []
    candidates.append(archive_file(ctx.layout.root, night, prog, int(row["pid"])))
    return next((p for p in candidates if p.is_file()), None)


def _read_packet(path: Path, candid: int) -> dict:
    from ..alerts.archive import read_alert
    from ..alerts.packet import deserialize_alert

    return deserialize_alert(read_alert(path, candid))


def _filter_history(packet: dict, vis: Visibility) -> dict:
    """The packet with only the history entries ``vis`` allows, history counts recomputed."""
    from ..alerts.packet import _history_stats

    prv = [p for p in packet.get("prv_candidates") or [] if vis(p.get("programid"), p.get("jd"))]
    fph = [f for f in packet.get("fp_hists") or []
           if vis(f.get("programid"), f.get("jd"))]
    out = dict(packet, prv_candidates=prv or None, fp_hists=fph or None)
    cand = dict(packet["candidate"])
    cand.update(_history_stats(cand["jd"], prv))
    out["candidate"] = cand
    return out


def alert_for(ctx: ApiContext, principal: Principal, candid: int) -> dict:
    """The alert packet of ``candid`` as ``principal`` may see it.

    Raises
    ------
    fastapi.HTTPException
        404 if there is no such alert (or it is hidden), 401/403 if it is proprietary.
    """
    c = s.candidates.c
    with ctx.engine.connect() as conn:
        stmt = select(c.candid, c.pid, c.jd, c.programid).where(c.candid == candid)
        row = conn.execute(stmt).first()
    if row is None:
        raise not_found(f"no candidate {candid}")
    vis = Visibility(ctx, principal)
    if not vis(row.programid, row.jd):
        raise forbidden(principal, f"alert {candid}")
    path = _alert_path(ctx, dict(row._mapping))
    if path is None:
        raise not_found(f"no alert packet archived for candidate {candid}")
    return _filter_history(_read_packet(path, candid), vis)


def _jsonable(packet: dict) -> dict:
    def conv(v):
        if isinstance(v, bytes):
            return base64.b64encode(v).decode()
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, list):
            return [conv(x) for x in v]
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v
    return conv(packet)


@router.get("/alerts/{candid}", summary="One alert packet",
            responses={200: {"content": {"application/avro": {}, "application/json": {}}}})
def alert_endpoint(candid: int = PathParam(..., ge=0, le=MAX_ID),
                   format: Literal["avro", "json"] = Query("avro"),
                   ctx: ApiContext = Depends(get_ctx),
                   principal: Principal = Depends(get_principal)):
    """The alert of ``candid`` (Avro container in the ZTF schema, or JSON with base64 cutouts)."""
    from ..alerts.packet import serialize_alert

    packet = alert_for(ctx, principal, candid)
    if format == "json":
        return JSONResponse(json.loads(json.dumps(_jsonable(packet), allow_nan=False)))
    return Response(serialize_alert(packet, validate=False), media_type="application/avro",
                    headers={"Content-Disposition": f'attachment; filename="{candid}.avro"'})
