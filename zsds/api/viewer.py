"""Web pages of the archive: a lightcurve viewer and a candidate viewer (``/viewer/...``).

Pages (HTML, drawn in the browser by ``static/viewer.js`` as plain SVG; no external resources):

* ``/viewer/`` - a search form;
* ``/viewer/lightcurve?ra=&dec=&radius=`` - the lightcurves within ``radius`` arcsec of a
  position: per-filter points with error bars, upper limits, periodogram, phase-folded view;
* ``/viewer/object/{oid}`` - the same for one lightcurve object;
* ``/viewer/candidate/{candid}`` - a difference-image candidate: its science, reference and
  difference cutouts, its fields and the alert history of its object.

The pages read their data from JSON endpoints of this router (``/viewer/api/...``), which
apply the access rule of :mod:`zsds.api.access` exactly like the rest of the API: the page
script sends the token typed in the page (kept in the browser's session storage) as
``Authorization: Bearer``.

Upper limits are the 5-sigma limits (``science_images.maglim``; ``diffmaglim`` of the
difference image alongside) of the good, visible science images whose footprint covers the
position and that have no detection of a displayed object.
"""

from __future__ import annotations

import html
import io
import json
import math
from importlib import resources
from typing import Literal

import numpy as np
import pandas as pd
from fastapi import APIRouter, Depends, Path as PathParam, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy import select

from ..alerts.ids import split_candid
from ..alerts.sky import cone_clause
from ..db import schema as s
from .access import Principal, get_principal, visible_sql
from .common import MAX_FOOTPRINT_DEG, MAX_ID, covers, get_ctx, not_found, records
from .context import ApiContext

__all__ = ["router", "lightcurve_data", "upper_limits", "candidate_data", "cutout_arrays",
           "render_png"]

router = APIRouter(prefix="/viewer", tags=["viewer"])

_STATIC = ("viewer.js", "viewer.css")
_MEDIA = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
_MJD0 = 2400000.5
#: Largest number of periodogram points sent to the page (max-pooled from the full grid).
PERIODOGRAM_POINTS = 1500
#: Fewest good epochs for a periodogram.
MIN_PERIODOGRAM_EPOCHS = 5
_CUTOUT_KINDS = ("science", "reference", "difference")
_BIG_IDS = ("candid", "pid", "expid")


# ---------------------------------------------------------------------------------------
# pages
# ---------------------------------------------------------------------------------------
def _page(title: str, kind: str, data: dict) -> HTMLResponse:
    """An HTML page whose script draws view ``kind`` from the JSON ``data`` parameters."""
    body = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} - zsds</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/viewer/static/viewer.css">
</head><body>
<header><a href="/viewer/">zsds viewer</a> <span class="title">{html.escape(title)}</span>
<form class="token" id="tokenform"><label>token <input id="token" type="password" size="24"
 autocomplete="off" placeholder="API token (optional)"></label></form></header>
<main id="main" data-kind="{html.escape(kind)}" data-params="{html.escape(json.dumps(data))}">
<p id="status">loading...</p></main>
<script src="/viewer/static/viewer.js"></script>
</body></html>"""
    return HTMLResponse(body)


@router.get("/", response_class=HTMLResponse, summary="Viewer: search form", include_in_schema=False)
def index_page():
    """The viewer's start page: a position or candidate to look at."""
    return _page("search", "index", {})


@router.get("/lightcurve", response_class=HTMLResponse, summary="Viewer: lightcurves at a position")
def lightcurve_page(ra: float = Query(..., ge=0, lt=360, allow_inf_nan=False),
                    dec: float = Query(..., ge=-90, le=90, allow_inf_nan=False),
                    radius: float = Query(2.0, gt=0, le=60, allow_inf_nan=False,
                                          description="arcsec")):
    """Lightcurves within ``radius`` arcsec of (ra, dec), deg."""
    return _page(f"lightcurves at {ra:.6f} {dec:+.6f}", "lightcurve",
                 {"ra": ra, "dec": dec, "radius": radius})


@router.get("/object/{oid}", response_class=HTMLResponse, summary="Viewer: one lightcurve object")
def object_page(oid: int = PathParam(..., ge=0, le=MAX_ID)):
    """The lightcurve of one object of the lightcurve store."""
    return _page(f"object {oid}", "lightcurve", {"oid": str(oid)})


@router.get("/candidate/{candid}", response_class=HTMLResponse, summary="Viewer: one candidate")
def candidate_page(candid: int = PathParam(..., ge=0, le=MAX_ID)):
    """A candidate with its three cutouts."""
    return _page(f"candidate {candid}", "candidate", {"candid": str(candid)})


@router.get("/static/{name}", include_in_schema=False)
def static_file(name: str):
    """The viewer's script and style sheet (packaged in ``zsds/api/static``)."""
    if name not in _STATIC:
        raise not_found(f"no static file {name!r}")
    data = resources.files("zsds.api").joinpath("static", name).read_bytes()
    return Response(data, media_type=_MEDIA[name[name.rfind("."):]],
                    headers={"Cache-Control": "no-cache"})


# ---------------------------------------------------------------------------------------
# lightcurve data
# ---------------------------------------------------------------------------------------
def upper_limits(ctx: ApiContext, principal: Principal, ra: float, dec: float,
                 exclude_pids) -> pd.DataFrame:
    """5-sigma limits of the visible good images covering (ra, dec) without a detection.

    Parameters
    ----------
    ctx : ApiContext
    principal : Principal
    ra, dec : float
        Position, deg.
    exclude_pids : iterable of int
        Images with a detection (left out).

    Returns
    -------
    pandas.DataFrame
        ``pid, mjd, filter_code, maglim, diffmaglim, programid, field_id, ccd_id, qid``,
        sorted by ``mjd``.
    """
    c, q = s.science_images.c, s.quadrant_images.c
    stmt = (select(c.pid, c.obsjd, c.filter_code, c.maglim, c.programid, c.field_id, c.ccd_id,
                   c.qid, c.ra, c.dec, c.radius_deg, c.footprint, q.diffmaglim)
            .outerjoin(s.quadrant_images, (q.expid == c.expid) & (q.ccd_id == c.ccd_id)
                       & (q.qid == c.qid))
            .where(cone_clause(c.ra, c.dec, ra, dec, MAX_FOOTPRINT_DEG), c.status == 1,
                   c.maglim.isnot(None),
                   visible_sql(principal, c.programid, c.obsjd, ctx.now_jd(),
                               ctx.proprietary_days)))
    with ctx.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(stmt)]
    skip = {int(p) for p in exclude_pids}
    rows = [r for r in rows if int(r["pid"]) not in skip and covers(r, ra, dec)]
    cols = ["pid", "mjd", "filter_code", "maglim", "diffmaglim", "programid", "field_id",
            "ccd_id", "qid"]
    df = pd.DataFrame(rows)
    if not len(df):
        return pd.DataFrame(columns=cols)
    df["mjd"] = df["obsjd"] - _MJD0
    return df[cols].sort_values("mjd", kind="stable").reset_index(drop=True)


def _periodogram(dets: pd.DataFrame) -> dict | None:
    """Periodogram of the object with the most good epochs (catflags 0), or None."""
    from .lightcurves import periodogram

    if not len(dets):
        return None
    mag, err = dets["mag"].astype(float), dets["mag_err"].astype(float)
    good = dets[(dets["catflags"].astype(np.int64) == 0) & np.isfinite(mag) & (err > 0)]
    if not len(good):
        return None
    oid = int(good.groupby("oid").size().idxmax())
    g = good[good["oid"] == oid]
    span = float(g["mjd"].max() - g["mjd"].min())
    if len(g) < MIN_PERIODOGRAM_EPOCHS or span <= 0:
        return None
    fmin, fmax = 0.5 / span, max(20.0, 1.0 / span)
    nfreq = int(np.clip(math.ceil(10 * span * (fmax - fmin)), 200, 200_000))
    pg = periodogram(g["mjd"], g["mag"], g["mag_err"], fmin, fmax, nfreq)
    freq, power = pg["frequency"].to_numpy(), pg["power"].to_numpy()
    best = int(np.argmax(power))
    if len(freq) > PERIODOGRAM_POINTS:  # keep the peaks: max-pool onto a coarser grid
        edges = np.linspace(0, len(freq), PERIODOGRAM_POINTS + 1).astype(int)
        idx = [a + int(np.argmax(power[a:b])) for a, b in zip(edges[:-1], edges[1:]) if b > a]
        freq, power = freq[idx], power[idx]
    return {"oid": oid, "filter_code": str(g["filter_code"].iloc[0]), "n_epochs": int(len(g)),
            "frequency": [float(f) for f in freq], "power": [float(p) for p in power],
            "best_frequency": float(pg["frequency"].iloc[best]),
            "best_period": float(pg["period"].iloc[best]), "best_power": float(pg["power"].iloc[best])}


def lightcurve_data(ctx: ApiContext, principal: Principal, *, ra: float | None = None,
                    dec: float | None = None, radius: float = 2.0, oid: int | None = None) -> dict:
    """What the lightcurve page draws: objects, visible detections, upper limits, periodogram.

    Parameters
    ----------
    ctx : ApiContext
    principal : Principal
    ra, dec : float, optional
        Cone centre, deg (with ``radius`` in arcsec).
    oid : int, optional
        One lightcurve object instead of a cone.

    Returns
    -------
    dict
        ``objects`` (oid, ra, dec, filter_code, field_id, ccd_id, qid, ndet), ``detections``
        (oid, pid, mjd, mag, mag_err, catflags, filter_code, programid), ``upper_limits``
        (:func:`upper_limits`), ``periodogram`` (or None) and the query.
    """
    from . import lcquery

    if oid is not None:
        res = lcquery.by_ids(ctx, principal, [oid])
        if not len(res.objects):
            raise not_found(f"no lightcurve object {oid} (or none of its epochs is visible)")
        ra, dec = float(res.objects["ra"].iloc[0]), float(res.objects["dec"].iloc[0])
    else:
        res = lcquery.cone(ctx, principal, ra, dec, radius, detections=True)
    objects, dets = res.objects, res.detections
    if dets is None or not len(dets):
        dets = pd.DataFrame(columns=["oid", "pid", "mjd", "mag", "mag_err", "catflags",
                                     "filter_code", "programid"])
    dets = dets.sort_values(["oid", "mjd"], kind="stable").reset_index(drop=True)
    ndet = dets.groupby("oid").size()
    obj_cols = [c for c in ("oid", "ra", "dec", "sep_arcsec", "filter_code", "field_id", "ccd_id",
                            "qid") if c in objects.columns]
    objs = objects[obj_cols].copy()
    objs["ndet"] = objs["oid"].map(ndet).fillna(0).astype(int)
    det_cols = ["oid", "pid", "mjd", "mag", "mag_err", "catflags", "filter_code", "programid"]
    dets = dets[det_cols].copy()
    limits = upper_limits(ctx, principal, ra, dec, dets["pid"].tolist())
    return {"query": {"ra": ra, "dec": dec, "radius": radius, "oid": oid},
            "objects": records(objs), "detections": records(dets),
            "upper_limits": records(limits), "periodogram": _periodogram(dets)}


@router.get("/api/lightcurve", summary="Viewer data: lightcurves of a position or object")
def lightcurve_api(ra: float | None = Query(None, ge=0, lt=360, allow_inf_nan=False),
                   dec: float | None = Query(None, ge=-90, le=90, allow_inf_nan=False),
                   radius: float = Query(2.0, gt=0, le=60, allow_inf_nan=False,
                                         description="arcsec"),
                   oid: int | None = Query(None, ge=0, le=MAX_ID),
                   ctx: ApiContext = Depends(get_ctx),
                   principal: Principal = Depends(get_principal)):
    """Objects, visible detections, upper limits and periodogram (JSON) for the lightcurve page."""
    from .common import bad_request

    if oid is None and (ra is None or dec is None):
        raise bad_request("give ra and dec, or oid")
    if oid is not None and ra is not None:
        raise bad_request("give ra and dec, or oid, not both")
    data = lightcurve_data(ctx, principal, ra=ra, dec=dec, radius=radius, oid=oid)
    return JSONResponse(data)


# ---------------------------------------------------------------------------------------
# candidates and cutouts
# ---------------------------------------------------------------------------------------
def _visible_candidate(ctx: ApiContext, principal: Principal, candid: int) -> dict:
    from .candidates import search_candidates
    from .common import forbidden

    df = search_candidates(ctx, principal, candid=[int(candid)])
    if len(df):
        return records(df)[0]
    with ctx.engine.connect() as conn:
        exists = conn.execute(select(s.candidates.c.candid)
                              .where(s.candidates.c.candid == int(candid))).first()
    if exists is None:
        raise not_found(f"no candidate {candid}")
    raise forbidden(principal, f"candidate {candid}")


def cutout_arrays(ctx: ApiContext, principal: Principal, candid: int) -> dict[str, np.ndarray]:
    """Science, reference and difference stamps of a visible candidate.

    From the quadrant's ``diffimcutouts.fits`` (written by the subtraction), else from the
    archived alert packet (gzipped FITS stamps).

    Raises
    ------
    fastapi.HTTPException
        404 if the candidate or its cutouts do not exist; 401/403 if it is proprietary.
    """
    row = _visible_candidate(ctx, principal, candid)
    pid, index = split_candid(int(candid))
    with ctx.engine.connect() as conn:
        path = conn.execute(select(s.science_images.c.path)
                            .where(s.science_images.c.pid == pid)).scalar()
    if path and path.endswith("sciimg.fits"):
        cut = ctx.layout.root / (path[: -len("sciimg.fits")] + "diffimcutouts.fits")
        if cut.is_file():
            from ..stages.subtract import read_cutouts

            stamps = read_cutouts(cut).get(index)
            if stamps is not None:
                return dict(zip(_CUTOUT_KINDS, stamps))
    from .candidates import alert_for
    from ..alerts.packet import read_cutout

    packet = alert_for(ctx, principal, int(row["candid"]))
    out = {}
    for kind, key in zip(_CUTOUT_KINDS, ("cutoutScience", "cutoutTemplate", "cutoutDifference")):
        if packet.get(key):
            out[kind] = read_cutout(packet[key])[0]
    if not out:
        raise not_found(f"no cutouts of candidate {candid}")
    return out


def render_png(data: np.ndarray, *, scale: int = 4) -> bytes:
    """A grey-scale PNG of a stamp: zscale limits, NaN shown at the lower limit, north up.

    ``scale`` replicates pixels (nearest neighbour) so small stamps stay sharp in the page.
    """
    from astropy.visualization import ZScaleInterval
    from matplotlib.image import imsave

    img = np.asarray(data, float)
    finite = np.isfinite(img)
    vmin, vmax = ZScaleInterval().get_limits(img[finite]) if finite.any() else (0.0, 1.0)
    if not vmax > vmin:
        vmin, vmax = vmin - 1.0, vmin + 1.0
    img = np.where(finite, img, vmin)
    if scale > 1:
        img = np.kron(img, np.ones((scale, scale)))
    buf = io.BytesIO()
    imsave(buf, img, vmin=vmin, vmax=vmax, cmap="gray", origin="lower", format="png")
    return buf.getvalue()


def candidate_data(ctx: ApiContext, principal: Principal, candid: int) -> dict:
    """What the candidate page shows: fields, cutout URLs, the object's visible history."""
    from .candidates import search_candidates

    row = _visible_candidate(ctx, principal, candid)
    history = []
    if row.get("object_id"):
        hist = search_candidates(ctx, principal, object_id=[row["object_id"]])
        history = records(hist[["candid", "jd", "fid", "magpsf", "sigmapsf", "diffmaglim",
                                "isdiffpos", "programid"]])
    # 64-bit IDs as text: JavaScript numbers hold integers exactly only up to 2**53
    row = {k: (str(v) if k in _BIG_IDS and v is not None else v) for k, v in row.items()}
    for h in history:
        h["candid"] = str(h["candid"])
    return {"candidate": row,
            "cutouts": {k: f"/viewer/api/cutout/{int(candid)}/{k}.png" for k in _CUTOUT_KINDS},
            "history": history,
            "lightcurve_url": f"/viewer/lightcurve?ra={row['ra']:.7f}&dec={row['dec']:.7f}&radius=2"}


@router.get("/api/candidate/{candid}", summary="Viewer data: one candidate")
def candidate_api(candid: int = PathParam(..., ge=0, le=MAX_ID),
                  ctx: ApiContext = Depends(get_ctx),
                  principal: Principal = Depends(get_principal)):
    """Candidate fields, cutout URLs and the visible history of its object (JSON)."""
    return JSONResponse(candidate_data(ctx, principal, candid))


@router.get("/api/cutout/{candid}/{kind}.png", summary="Viewer data: a cutout as PNG",
            response_class=Response, responses={200: {"content": {"image/png": {}}}})
def cutout_png(candid: int = PathParam(..., ge=0, le=MAX_ID),
               kind: Literal["science", "reference", "difference"] = PathParam(...),
               ctx: ApiContext = Depends(get_ctx),
               principal: Principal = Depends(get_principal)):
    """The science, reference or difference cutout of a candidate (PNG, zscale)."""
    stamps = cutout_arrays(ctx, principal, candid)
    if kind not in stamps:
        raise not_found(f"no {kind} cutout of candidate {candid}")
    return Response(render_png(stamps[kind]), media_type="image/png")
