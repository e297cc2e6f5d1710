"""IVOA services usable by an unmodified ``pyvo``: Simple Cone Search and SIA v2.

* SCS 1.03 (``GET /scs/objects``, ``GET /scs/candidates``; ``RA``, ``DEC``, ``SR`` in degrees,
  ``VERB`` 1-3): VOTable with the UCDs ``ID_MAIN``, ``POS_EQ_RA_MAIN``, ``POS_EQ_DEC_MAIN``;
  ``SR=0`` returns the columns only. ``pyvo.dal.SCSService(base + "/scs/objects")``.
* SIA 2.0 (``GET /sia/query``, VOSI ``GET /sia/capabilities``): ``POS`` (``CIRCLE ra dec r``,
  ``RANGE ra1 ra2 dec1 dec2``), ``BAND`` (wavelength interval, m), ``TIME`` (MJD interval),
  ``EXPTIME``, ``ID``, ``COLLECTION``, ``FACILITY``, ``INSTRUMENT``, ``DPTYPE``, ``CALIB``,
  ``MAXREC``; several values of one parameter are OR-ed, different parameters AND-ed.
  Records are ObsCore (``access_url`` to ``/products/...``; ``data_rights`` ``public`` or
  ``proprietary`` for this user). ``pyvo.dal.SIA2Service(base + "/sia")``.

Errors are VOTables with ``INFO name="QUERY_STATUS" value="ERROR"`` and HTTP status 400.
"""

from __future__ import annotations

import io
import json
import math
import re

import numpy as np
import pandas as pd
from astropy.io.votable import from_table
from astropy.io.votable.tree import Info, Resource, VOTableFile
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response
from sqlalchemy import select

from ..db import schema as s
from . import lcquery
from .access import Principal, get_principal
from .candidates import search_candidates
from .common import get_ctx
from .context import ApiContext
from .images import search_images

__all__ = ["router", "votable_response", "votable_error"]

router = APIRouter(tags=["IVOA"])

VOTABLE = "application/x-votable+xml"
SIA2_STANDARD_ID = "ivo://ivoa.net/std/SIA#query-2.0"
#: Nominal wavelength ranges of the filters, m (ObsCore em_min, em_max).
FILTER_BANDS = {"zg": (4.0e-7, 5.5e-7), "zr": (5.6e-7, 7.3e-7), "zi": (7.0e-7, 9.0e-7)}
COLLECTION = "zsds"
FACILITY = "P48"
INSTRUMENT = "ZTF"
_MJD0 = 2400000.5


class VOError(Exception):
    """A request error reported as a VOTable (QUERY_STATUS=ERROR, HTTP 400)."""


def votable_error(message: str, status: int = 400) -> Response:
    """A VOTable error document: ``INFO QUERY_STATUS=ERROR`` in the results resource (DALI)
    and ``INFO name="Error"`` below the root (Simple Cone Search 1.03)."""
    vot = VOTableFile()
    vot.infos.append(Info(name="Error", value=message))
    res = Resource(type="results")
    info = Info(name="QUERY_STATUS", value="ERROR")
    info.content = message
    res.infos.append(info)
    vot.resources.append(res)
    buf = io.BytesIO()
    vot.to_xml(buf)
    return Response(buf.getvalue(), status_code=status, media_type=VOTABLE)


def votable_response(df: pd.DataFrame, ucds: dict[str, str] | None = None,
                     units: dict[str, str] | None = None, overflow: bool = False) -> Response:
    """A VOTable of ``df`` with UCDs and units on the named columns and QUERY_STATUS OK
    (``OVERFLOW`` when the result was truncated at MAXREC)."""
    from ..archive.export import to_astropy

    vot = from_table(to_astropy(df.reset_index(drop=True)))
    table = vot.get_first_table()
    for f in table.fields:
        if ucds and f.name in ucds:
            f.ucd = ucds[f.name]
        if units and f.name in units:
            f.unit = units[f.name]
    vot.resources[0].infos.append(Info(name="QUERY_STATUS", value="OK"))
    if overflow:
        vot.resources[0].infos.append(Info(name="QUERY_STATUS", value="OVERFLOW"))
    buf = io.BytesIO()
    vot.to_xml(buf)
    return Response(buf.getvalue(), media_type=VOTABLE)


def _guard(fn):
    """Turn 4xx errors of an IVOA endpoint into VOTable error documents."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except VOError as exc:
            return votable_error(str(exc))
        except HTTPException as exc:
            if exc.status_code in (401, 403):
                raise
            return votable_error(str(exc.detail), exc.status_code)
    return wrapper


# -- Simple Cone Search -------------------------------------------------------------------------
_SCS_OBJECT_COLUMNS = {1: ["oid", "ra", "dec"],
                       2: ["oid", "ra", "dec", "sep_arcsec", "filter_code", "field_id", "ccd_id",
                           "qid", "nobs", "ngoodobs", "lc_median", "lc_standard_deviation",
                           "ls_period_1", "metrics_complete"]}
_SCS_CANDIDATE_COLUMNS = {1: ["candid", "ra", "dec"],
                          2: ["candid", "ra", "dec", "sep_arcsec", "object_id", "jd", "fid",
                              "magpsf", "sigmapsf", "isdiffpos", "rb", "programid"]}
#: Columns added by the query, not read from the store.
_COMPUTED = {"oid", "ra", "dec", "sep_arcsec", "metrics_complete"}
_SCS_UCDS = {"ra": "POS_EQ_RA_MAIN", "dec": "POS_EQ_DEC_MAIN"}
_UNITS = {"ra": "deg", "dec": "deg", "sep_arcsec": "arcsec", "magpsf": "mag", "sigmapsf": "mag",
          "lc_median": "mag", "lc_standard_deviation": "mag", "ls_period_1": "d"}


def _scs_radius(ctx: ApiContext, sr: float) -> float:
    limit = ctx.config.api.max_cone_radius_arcsec / 3600.0
    if not (math.isfinite(sr) and 0 <= sr <= limit):
        raise VOError(f"SR must be in [0, {limit:g}] deg, not {sr}")
    return sr


def _columns(df: pd.DataFrame, table: dict, verb: int) -> pd.DataFrame:
    cols = list(df.columns) if verb >= 3 else [c for c in table[verb] if c in df.columns]
    return df[cols]


_RA = Query(..., ge=0, lt=360, allow_inf_nan=False, description="deg")
_DEC = Query(..., ge=-90, le=90, allow_inf_nan=False, description="deg")
_SR = Query(..., ge=0, allow_inf_nan=False, description="search radius, deg")
_VERB = Query(2, ge=1, le=3, description="1 id and position, 2 main columns, 3 all")


@router.get("/scs/objects", summary="Simple Cone Search over lightcurve objects",
            response_class=Response, responses={200: {"content": {VOTABLE: {}}}})
@_guard
def scs_objects(RA: float = _RA, DEC: float = _DEC, SR: float = _SR, VERB: int = _VERB,
                ctx: ApiContext = Depends(get_ctx),
                principal: Principal = Depends(get_principal)):
    """Objects of the lightcurve store within SR degrees (SCS 1.03, VOTable)."""
    sr = _scs_radius(ctx, SR)
    if sr == 0:
        df = pd.DataFrame({"oid": pd.Series(dtype=np.int64), "ra": pd.Series(dtype=float),
                           "dec": pd.Series(dtype=float)})
    else:
        wanted = None if VERB >= 3 else [c for c in _SCS_OBJECT_COLUMNS[VERB] if c not in _COMPUTED]
        res = lcquery.cone(ctx, principal, RA, DEC, sr * 3600.0, columns=wanted)
        hive = [c for c in ("Norder", "Dir", "Npix") if c in res.objects]
        objects = res.objects.drop(columns=hive)
        df = _columns(objects, _SCS_OBJECT_COLUMNS, VERB)
    return votable_response(df, {"oid": "ID_MAIN", **_SCS_UCDS}, _UNITS)


@router.get("/scs/candidates", summary="Simple Cone Search over candidates",
            response_class=Response, responses={200: {"content": {VOTABLE: {}}}})
@_guard
def scs_candidates(RA: float = _RA, DEC: float = _DEC, SR: float = _SR, VERB: int = _VERB,
                   ctx: ApiContext = Depends(get_ctx),
                   principal: Principal = Depends(get_principal)):
    """Difference-image candidates within SR degrees (SCS 1.03, VOTable)."""
    sr = _scs_radius(ctx, SR)
    if sr == 0:
        df = pd.DataFrame({"candid": pd.Series(dtype=np.int64), "ra": pd.Series(dtype=float),
                           "dec": pd.Series(dtype=float)})
    else:
        df = search_candidates(ctx, principal, ra=RA, dec=DEC, radius_arcsec=sr * 3600.0,
                               limit=ctx.config.api.max_rows)
        df = _columns(df, _SCS_CANDIDATE_COLUMNS, VERB)
    return votable_response(df, {"candid": "ID_MAIN", **_SCS_UCDS}, _UNITS)


# -- SIA v2 -------------------------------------------------------------------------------------
def _floats(text: str, n: int | None, name: str) -> list[float]:
    parts = [p for p in re.split(r"\s+", str(text).strip()) if p]
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise VOError(f"{name}: expected numbers, got {text!r}") from None
    if (n is not None and len(vals) != n) or any(math.isnan(v) for v in vals):
        raise VOError(f"{name}: expected {n} numbers, got {text!r}")
    return vals


def _interval(text: str, name: str) -> tuple[float, float]:
    lo, hi = _floats(text, 2, name)
    if lo > hi:
        raise VOError(f"{name}: interval lower bound above upper bound in {text!r}")
    return lo, hi


def _pos_filter(text: str, max_deg: float):
    """A predicate on image rows from one SIA POS value (CIRCLE or RANGE)."""
    from .common import covers

    shape, _, rest = str(text).strip().partition(" ")
    shape = shape.upper()
    if shape == "CIRCLE":
        ra, dec, r = _floats(rest, 3, "POS")
        if not (0 <= ra <= 360 and -90 <= dec <= 90 and 0 <= r <= max_deg):
            raise VOError(f"POS: CIRCLE needs 0<=ra<=360, -90<=dec<=90, 0<=r<={max_deg:g}; "
                          f"got {text!r}")
        pred = lambda row: covers(row, ra % 360.0, dec, r)  # noqa: E731
        pred.circle = (ra % 360.0, dec, r)
        return pred
    if shape == "RANGE":
        ra1, ra2, dec1, dec2 = _floats(rest, 4, "POS")
        if not (ra1 <= ra2 and dec1 <= dec2):
            raise VOError(f"POS: RANGE needs ra1<=ra2 and dec1<=dec2; got {text!r}")

        def in_range(row):
            return (row["dec"] is not None and dec1 - (row["radius_deg"] or 0) <= row["dec"]
                    <= dec2 + (row["radius_deg"] or 0) and ra1 <= row["ra"] <= ra2)
        return in_range
    raise VOError(f"POS: supported shapes are CIRCLE and RANGE, not {shape or text!r}")


def _bands(filter_codes) -> np.ndarray:
    """(n, 2) nominal wavelength ranges (m) of filter codes (NaN if unknown)."""
    return np.array([FILTER_BANDS.get(fc, (np.nan, np.nan)) for fc in filter_codes]).reshape(-1, 2)


def _obscore(df: pd.DataFrame, base: str) -> pd.DataFrame:
    """ObsCore records of image-search rows."""
    em = _bands(df["filter_code"])
    regions = []
    for fp in df["footprint"]:
        corners = json.loads(fp) if fp else []
        text = " ".join(f"{a:.7f} {b:.7f}" for a, b in corners)
        regions.append(f"POLYGON ICRS {text}" if corners else "")
    exptime = df["exptime"].astype(float) if "exptime" in df else np.full(len(df), np.nan)
    t_min = df["obsjd"].astype(float) - _MJD0
    return pd.DataFrame({
        "dataproduct_type": "image", "calib_level": 2, "obs_collection": COLLECTION,
        "obs_id": [f"ztf_{f}_{fid:06d}_{fc}_c{c:02d}_o_q{q}" for f, fid, fc, c, q in
                   zip(df["filefracday"], df["field_id"], df["filter_code"], df["ccd_id"],
                       df["qid"])],
        "obs_publisher_did": [f"ivo://zsds/sci?{int(p)}" for p in df["pid"]],
        "access_url": [f"{base}/products/{p}" for p in df["path"]],
        "access_format": "application/fits",
        "target_name": [f"field {int(f)}" for f in df["field_id"]],
        "s_ra": df["ra"], "s_dec": df["dec"], "s_fov": 2 * df["radius_deg"].astype(float),
        "s_region": regions, "s_resolution": df["seeing_arcsec"],
        "t_min": t_min, "t_max": t_min + np.nan_to_num(exptime, nan=30.0) / 86400.0,
        "t_exptime": exptime, "em_min": em[:, 0], "em_max": em[:, 1], "o_ucd": "phot.count",
        "facility_name": FACILITY, "instrument_name": INSTRUMENT,
        "data_rights": np.where(df["access"].astype(bool), "public", "proprietary"),
        "pid": df["pid"], "field": df["field_id"], "ccdid": df["ccd_id"], "qid": df["qid"],
        "filtercode": df["filter_code"], "programid": df["programid"], "maglim": df["maglim"],
        "infobits": df["infobits"], "status": df["status"]})


_SIA_UCDS = {"s_ra": "pos.eq.ra", "s_dec": "pos.eq.dec", "access_url": "meta.ref.url",
             "obs_publisher_did": "meta.ref.ivoid", "t_min": "time.start", "t_max": "time.end"}
_SIA_UNITS = {"s_ra": "deg", "s_dec": "deg", "s_fov": "deg", "s_resolution": "arcsec", "t_min": "d",
              "t_max": "d", "t_exptime": "s", "em_min": "m", "em_max": "m", "maglim": "mag"}


def _match_any(values, allowed: list[str]) -> bool:
    return not allowed or any(str(v).lower() == a.lower() for v in values for a in allowed)


def _sia_rows(ctx, principal, params: dict) -> pd.DataFrame:
    max_deg = ctx.config.api.max_cone_radius_arcsec / 3600.0
    pos = [_pos_filter(p, max_deg) for p in params["POS"]]
    times = [_interval(t, "TIME") for t in params["TIME"]]
    bands = [_interval(b, "BAND") for b in params["BAND"]]
    exps = [_interval(e, "EXPTIME") for e in params["EXPTIME"]]
    for name, allowed in (("COLLECTION", [COLLECTION]), ("FACILITY", [FACILITY]),
                          ("INSTRUMENT", [INSTRUMENT]), ("DPTYPE", ["image"]), ("CALIB", ["2"])):
        if params[name] and not _match_any(params[name], allowed):
            return pd.DataFrame()
    q = {"ra": None, "radius_deg": 0.0}
    if len(pos) == 1 and hasattr(pos[0], "circle"):  # one circle: let SQL narrow the sky first
        q["ra"], q["dec"], q["radius_deg"] = pos[0].circle
    if len(times) == 1:
        q.update(jd_start=times[0][0] + _MJD0, jd_end=times[0][1] + _MJD0)
    df = search_images(ctx, principal, q, limit=10**9)
    if not len(df):
        return df
    keep = np.ones(len(df), bool)
    rows = df.to_dict("records")
    if pos:
        keep &= [any(p(r) for p in pos) for r in rows]
    if times:
        mjd = df["obsjd"].to_numpy() - _MJD0
        keep &= np.any([(mjd >= lo) & (mjd <= hi) for lo, hi in times], axis=0)
    if bands:
        em = _bands(df["filter_code"])
        keep &= np.any([(em[:, 1] >= lo) & (em[:, 0] <= hi) for lo, hi in bands], axis=0)
    if params["ID"]:
        ids = {str(i) for i in params["ID"]}
        keep &= [f"ivo://zsds/sci?{int(p)}" in ids or str(int(p)) in ids for p in df["pid"]]
    df = _exptimes(ctx, df[keep])
    if exps and len(df):
        t = df["exptime"].to_numpy()
        df = df[np.any([(t >= lo) & (t <= hi) for lo, hi in exps], axis=0)]
    return df


def _exptimes(ctx, df: pd.DataFrame) -> pd.DataFrame:
    if not len(df):
        return df.assign(exptime=pd.Series(dtype=float))
    e = s.exposures.c
    with ctx.engine.connect() as conn:
        rows = dict(conn.execute(select(e.expid, e.exptime).where(e.expid.in_(sorted(set(
            int(x) for x in df["expid"]))))).all())
    return df.assign(exptime=df["expid"].map(rows).astype(float))


@router.get("/sia/query", summary="SIA v2 image query (ObsCore VOTable)",
            response_class=Response, responses={200: {"content": {VOTABLE: {}}}})
@_guard
def sia_query(
    request: Request,
    POS: list[str] = Query([], description="CIRCLE ra dec r | RANGE ra1 ra2 dec1 dec2 (deg)"),
    BAND: list[str] = Query([], description="wavelength interval 'lo hi', m"),
    TIME: list[str] = Query([], description="MJD interval 'lo hi'"),
    EXPTIME: list[str] = Query([], description="s interval 'lo hi'"),
    ID: list[str] = Query([], description="obs_publisher_did or pid"),
    COLLECTION: list[str] = Query([]), FACILITY: list[str] = Query([]),
    INSTRUMENT: list[str] = Query([]), DPTYPE: list[str] = Query([]), CALIB: list[str] = Query([]),
    MAXREC: int | None = Query(None, ge=0),
    RESPONSEFORMAT: str | None = Query(None, description="votable only"),
    ctx: ApiContext = Depends(get_ctx), principal: Principal = Depends(get_principal),
):
    """Science images as ObsCore records (SIA 2.0)."""
    fmt = (RESPONSEFORMAT or "votable").lower()
    if "votable" not in fmt and "xml" not in fmt:
        raise VOError(f"RESPONSEFORMAT {RESPONSEFORMAT!r} not supported (VOTable only)")
    params = dict(POS=POS, BAND=BAND, TIME=TIME, EXPTIME=EXPTIME, ID=ID, COLLECTION=COLLECTION,
                  FACILITY=FACILITY, INSTRUMENT=INSTRUMENT, DPTYPE=DPTYPE, CALIB=CALIB)
    df = _sia_rows(ctx, principal, params)
    limit = min(MAXREC if MAXREC is not None else ctx.config.api.max_rows, ctx.config.api.max_rows)
    overflow = len(df) > limit
    df = df.head(limit)
    if not len(df):
        from .images import IMAGE_COLUMNS
        df = pd.DataFrame(columns=[*IMAGE_COLUMNS, "access", "exptime"])
    base = str(request.base_url).rstrip("/")
    out = _obscore(df, base)
    return votable_response(out, _SIA_UCDS, _SIA_UNITS, overflow=overflow)


@router.get("/sia/capabilities", summary="VOSI capabilities of the SIA v2 service",
            response_class=Response, responses={200: {"content": {"application/xml": {}}}})
def sia_capabilities(request: Request):
    """VOSI capabilities: SIA 2.0 query at ``/sia/query``."""
    base = str(request.base_url).rstrip("/")
    xml = f"""<?xml version="1.0" encoding="UTF-8"?>
<vosi:capabilities xmlns:vosi="http://www.ivoa.net/xml/VOSICapabilities/v1.0"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
    xmlns:vr="http://www.ivoa.net/xml/VOResource/v1.0"
    xmlns:vs="http://www.ivoa.net/xml/VODataService/v1.1">
  <capability standardID="ivo://ivoa.net/std/VOSI#capabilities">
    <interface xsi:type="vs:ParamHTTP">
      <accessURL use="full">{base}/sia/capabilities</accessURL>
    </interface>
  </capability>
  <capability standardID="{SIA2_STANDARD_ID}">
    <interface xsi:type="vs:ParamHTTP" role="std" version="2.0">
      <accessURL use="base">{base}/sia/query</accessURL>
    </interface>
  </capability>
</vosi:capabilities>
"""
    return Response(xml, media_type="application/xml")

