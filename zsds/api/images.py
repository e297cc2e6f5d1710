"""Image metadata search and product download.

``GET /images``: science images (readout-quadrant epochs) covering a point or overlapping a
circle, in a time window, by filter, field, CCD, quadrant and QA (seeing, depth, status).
``GET /products/{path}``: a product file by its archive path in the public ZTF layout.
"""

from __future__ import annotations

from typing import Literal

import pandas as pd
from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse
from sqlalchemy import select

from ..alerts.sky import cone_clause
from ..db import schema as s
from .access import Principal, get_principal, visible_sql
from .common import (MAX_FOOTPRINT_DEG, Visibility, bad_request, check_radius, covers, get_ctx,
                     parse_filters, table_response)
from .context import ApiContext
from .products import resolve_product

__all__ = ["router", "search_images", "IMAGE_COLUMNS"]

router = APIRouter(tags=["images"])

#: Columns of an image search result (science_images), then ``access``.
IMAGE_COLUMNS = ("pid", "expid", "obsjd", "night", "filefracday", "field_id", "ccd_id", "qid",
                 "rcid", "filter_code", "programid", "status", "infobits", "seeing_arcsec",
                 "maglim", "magzp", "magzpunc", "airmass", "sky", "ra", "dec", "radius_deg",
                 "footprint", "path")

Format = Literal["json", "csv", "ipac_table", "votable", "fits", "parquet"]


def _where(principal: Principal, ctx: ApiContext, q: dict) -> list:
    c = s.science_images.c
    cond = []
    if q.get("ra") is not None:
        reach = q["radius_deg"] + MAX_FOOTPRINT_DEG
        cond.append(cone_clause(c.ra, c.dec, q["ra"], q["dec"], reach))
    clauses = {"jd_start": lambda v: c.obsjd >= v, "jd_end": lambda v: c.obsjd <= v,
               "seeing_max": lambda v: c.seeing_arcsec <= v, "maglim_min": lambda v: c.maglim >= v,
               "status": lambda v: c.status == v, "field": lambda v: c.field_id == v,
               "ccd": lambda v: c.ccd_id == v, "qid": lambda v: c.qid == v,
               "programid": lambda v: c.programid == v}
    cond += [make(q[key]) for key, make in clauses.items() if q.get(key) is not None]
    if q.get("filters"):
        cond.append(c.filter_code.in_(q["filters"]))
    if not ctx.config.api.metadata_public:
        cond.append(visible_sql(principal, c.programid, c.obsjd, ctx.now_jd(),
                                ctx.proprietary_days))
    return cond


def search_images(ctx: ApiContext, principal: Principal, q: dict, limit: int) -> pd.DataFrame:
    """Science images matching the query ``q`` (keys as the ``/images`` parameters).

    ``q["ra"], q["dec"], q["radius_deg"]`` select images whose footprint contains the point
    (radius 0) or overlaps the circle. Rows the principal may not see are left out when
    ``api.metadata_public`` is false; otherwise they are listed with ``access = false``.

    Returns
    -------
    pandas.DataFrame
        :data:`IMAGE_COLUMNS` plus ``access`` (pixels downloadable by this principal),
        sorted by ``obsjd, pid``; at most ``limit`` rows.
    """
    c = s.science_images.c
    stmt = (select(*[getattr(c, k) for k in IMAGE_COLUMNS]).where(*_where(principal, ctx, q))
            .order_by(c.obsjd, c.pid))
    spatial = q.get("ra") is not None
    if not spatial:
        stmt = stmt.limit(limit)
    with ctx.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(stmt)]
    if spatial:
        rows = [r for r in rows if covers(r, q["ra"], q["dec"], q["radius_deg"])][:limit]
    df = pd.DataFrame(rows, columns=list(IMAGE_COLUMNS))
    vis = Visibility(ctx, principal)
    df["access"] = vis.mask(df["programid"].tolist(), df["obsjd"].tolist()) if len(df) else []
    return df


@router.get("/images", summary="Search image metadata")
def images_endpoint(
    ra: float | None = Query(None, ge=0, lt=360, allow_inf_nan=False,
                             description="Right ascension of the point or circle centre, deg"),
    dec: float | None = Query(None, ge=-90, le=90, allow_inf_nan=False,
                              description="Declination, deg"),
    radius_arcsec: float = Query(0.0, ge=0, allow_inf_nan=False,
                                 description="0: images containing the point; "
                                             "> 0: overlapping the circle"),
    jd_start: float | None = Query(None, allow_inf_nan=False, description="Earliest OBSJD"),
    jd_end: float | None = Query(None, allow_inf_nan=False, description="Latest OBSJD"),
    filter: list[str] | None = Query(None, description="zg, zr, zi (repeat or comma-separate)"),
    field: int | None = Query(None, ge=0, le=999999), ccd: int | None = Query(None, ge=1, le=16),
    qid: int | None = Query(None, ge=1, le=4),
    seeing_max: float | None = Query(None, gt=0, allow_inf_nan=False,
                                     description="Worst FWHM, arcsec"),
    maglim_min: float | None = Query(None, allow_inf_nan=False,
                                     description="Shallowest 5-sigma limit, mag"),
    status: int | None = Query(None, ge=0, le=1, description="1 good, 0 bad"),
    programid: int | None = Query(None, ge=1, le=3),
    limit: int = Query(1000, ge=1, description="Most rows returned (capped by api.max_rows)"),
    format: Format = Query("json", description="Output table format"),
    ctx: ApiContext = Depends(get_ctx), principal: Principal = Depends(get_principal),
):
    """Science images (readout quadrants) by position, time, filter, field, CCD, quadrant and QA.

    ``access`` tells whether this user may download the pixels (``/products/{path}``).
    """
    if (ra is None) != (dec is None):
        raise bad_request("give both ra and dec, or neither")
    if ra is None and radius_arcsec > 0:
        raise bad_request("radius_arcsec needs ra and dec")
    if radius_arcsec > 0:
        check_radius(ctx, radius_arcsec)
    q = dict(ra=ra, dec=dec, radius_deg=radius_arcsec / 3600.0, jd_start=jd_start, jd_end=jd_end,
             filters=parse_filters(filter), field=field, ccd=ccd, qid=qid, seeing_max=seeing_max,
             maglim_min=maglim_min, status=status, programid=programid)
    df = search_images(ctx, principal, q, min(limit, ctx.config.api.max_rows))
    return table_response(df, format, name="images")


@router.get("/products/{path:path}", summary="Download a product",
            responses={200: {"content": {"application/fits": {}}}})
def product_endpoint(path: str, ctx: ApiContext = Depends(get_ctx),
                     principal: Principal = Depends(get_principal)):
    """A product file by its path in the public ZTF layout, e.g.
    ``sci/2026/1121/151041/ztf_20261121151041_000655_zr_c13_o_q1_sciimg.fits``."""
    product = resolve_product(ctx, principal, path)
    media = "application/fits" if ".fits" in product.path.name else "application/octet-stream"
    if product.path.suffix == ".txt":
        media = "text/plain"
    return FileResponse(product.path, media_type=media, filename=product.path.name)
