"""Helpers shared by the endpoint modules: context access, errors, tables out, sky geometry.

Every endpoint answers a bad request with a 4xx and a message (``{"detail": "..."}``), never
a 500: parameters are validated by FastAPI (422) or by the helpers here (400).
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Iterable

import numpy as np
import pandas as pd
from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import Field

from ..alerts.sky import in_footprint, separation_deg
from .access import Principal, is_visible
from .context import ApiContext

__all__ = ["get_ctx", "bad_request", "not_found", "forbidden", "TABLE_FORMATS", "table_response",
           "records", "circle_overlaps_footprint", "covers", "Visibility", "FILTER_CODES",
           "parse_filters", "check_radius", "MAX_FOOTPRINT_DEG", "MAX_ID", "ID"]

#: Table formats of the ``format`` parameters (``json`` plus those of zsds.archive.export).
TABLE_FORMATS = ("json", "csv", "ipac_table", "votable", "fits", "parquet")
#: Filter codes and the short band names of the public ZTF services.
FILTER_CODES = {"zg": "zg", "zr": "zr", "zi": "zi", "g": "zg", "r": "zr", "i": "zi"}
#: Largest integer ID accepted (64-bit signed, as stored).
MAX_ID = 2**63 - 1
#: An integer ID (candid, oid, pid) as a query parameter item.
ID = Annotated[int, Field(ge=0, le=MAX_ID)]
#: Largest circumscribed radius of an image footprint considered by sky searches, deg.
MAX_FOOTPRINT_DEG = 1.0


def get_ctx(request: Request) -> ApiContext:
    """FastAPI dependency: the :class:`ApiContext` of the application."""
    return request.app.state.ctx


def bad_request(message: str) -> HTTPException:
    """A 400 error with ``message``."""
    return HTTPException(status_code=400, detail=message)


def not_found(message: str) -> HTTPException:
    """A 404 error with ``message``."""
    return HTTPException(status_code=404, detail=message)


def forbidden(principal: Principal, what: str) -> HTTPException:
    """401 for an anonymous principal, 403 for an authenticated one, naming ``what``."""
    if principal.authenticated:
        return HTTPException(status_code=403, detail=f"{what} is proprietary and your token "
                                                     "is not entitled to its program")
    return HTTPException(status_code=401, detail=f"{what} is proprietary; send "
                         "'Authorization: Bearer <token>' of an entitled user",
                         headers={"WWW-Authenticate": "Bearer"})


def check_radius(ctx: ApiContext, radius_arcsec: float) -> float:
    """``radius_arcsec`` if within ``(0, api.max_cone_radius_arcsec]``, else a 400."""
    limit = ctx.config.api.max_cone_radius_arcsec
    if not (math.isfinite(radius_arcsec) and 0 < radius_arcsec <= limit):
        raise bad_request(f"radius must be > 0 and <= {limit} arcsec, not {radius_arcsec} arcsec")
    return float(radius_arcsec)


def parse_filters(values: Iterable[str] | str | None) -> list[str] | None:
    """Filter codes from ``zg,zr`` / ``g,r`` (lists or comma-separated); None if not given."""
    if values is None:
        return None
    items = [values] if isinstance(values, str) else list(values)
    out = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip().lower()
            if not part:
                continue
            if part not in FILTER_CODES:
                raise bad_request(f"unknown filter {part!r}; use zg, zr, zi (or g, r, i)")
            out.append(FILTER_CODES[part])
    return sorted(set(out)) or None


class Visibility:
    """The visibility rule bound to a request: ``vis(programid, jd) -> bool``.

    Parameters
    ----------
    ctx : ApiContext
    principal : Principal
    """

    def __init__(self, ctx: ApiContext, principal: Principal):
        self.principal = principal
        self.now_jd = float(ctx.now_jd())
        self.days = ctx.proprietary_days

    def __call__(self, programid, jd) -> bool:
        if programid is None or jd is None:
            return False
        return is_visible(self.principal, int(programid), float(jd), self.now_jd, self.days)

    def mask(self, programids, jds) -> np.ndarray:
        """Element-wise :meth:`__call__` over arrays (NaN programids are hidden)."""
        out = np.zeros(len(programids), bool)
        for i, (p, j) in enumerate(zip(programids, jds)):
            ok = p is not None and j is not None and not (isinstance(p, float) and math.isnan(p))
            out[i] = ok and self(int(p), float(j))
        return out

    def until_jd(self, obsjd: float) -> float:
        """JD when an observation at ``obsjd`` becomes public."""
        return float(obsjd) + self.days


# -- tables out -------------------------------------------------------------------------------
def _clean(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is pd.NaT:
        return None
    return value


def records(df: pd.DataFrame) -> list[dict]:
    """Rows of a DataFrame as JSON-safe dicts (NaN/inf -> null, numpy scalars -> Python)."""
    cols = list(df.columns)
    return [{c: _clean(v) for c, v in zip(cols, row)} for row in df.itertuples(index=False)]


def table_response(df: pd.DataFrame, fmt: str, *, name: str = "table",
                   meta: dict | None = None) -> Response:
    """A response with ``df`` in ``fmt`` (``json`` or a format of :mod:`zsds.archive.export`).

    JSON is ``{"count": n, "columns": [...], "rows": [{...}], **meta}``; the other formats
    are written by :func:`zsds.archive.export.write_table` and sent as an attachment.
    """
    key = str(fmt).lower()
    if key == "json":
        body = {"count": int(len(df)), "columns": [str(c) for c in df.columns], **(meta or {}),
                "rows": records(df)}
        return JSONResponse(json.loads(json.dumps(body, default=_clean)))
    from astropy.io.ascii.ipac import IpacFormatError

    from ..archive.export import EXTENSIONS, normalize_format, write_table

    try:
        key = normalize_format(key)
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    try:
        data, media = write_table(df.reset_index(drop=True), key)
    except IpacFormatError as exc:  # the format cannot hold these columns (names > 40 chars)
        raise bad_request(f"this table cannot be written as {key}: {exc}; "
                          "use another format") from None
    return Response(data, media_type=media, headers={
        "Content-Disposition": f'inline; filename="{name}{EXTENSIONS[key]}"'})


# -- sky geometry -------------------------------------------------------------------------------
def _gnomonic(ra, dec, ra0: float, dec0: float):
    """Tangent-plane coordinates (radians) of (ra, dec) about (ra0, dec0), degrees in."""
    ra, dec = np.radians(np.asarray(ra, float)), np.radians(np.asarray(dec, float))
    a0, d0 = math.radians(ra0), math.radians(dec0)
    cosc = np.sin(d0) * np.sin(dec) + np.cos(d0) * np.cos(dec) * np.cos(ra - a0)
    x = np.cos(dec) * np.sin(ra - a0) / cosc
    y = (np.cos(d0) * np.sin(dec) - np.sin(d0) * np.cos(dec) * np.cos(ra - a0)) / cosc
    return x, y, cosc


def _segment_distance(px, py, ax, ay, bx, by) -> float:
    dx, dy = bx - ax, by - ay
    t = ((px - ax) * dx + (py - ay) * dy) / max(dx * dx + dy * dy, 1e-300)
    t = min(max(t, 0.0), 1.0)
    return math.hypot(px - (ax + t * dx), py - (ay + t * dy))


def circle_overlaps_footprint(ra: float, dec: float, radius_deg: float, corners) -> bool:
    """Whether a circle on the sky overlaps a convex quadrilateral footprint.

    The footprint is projected on the plane tangent at the circle's centre (gnomonic, where
    great circles are straight lines): the circle overlaps if its centre is inside the
    quadrilateral or an edge comes closer than the radius (tangent-plane distance
    ``tan(radius)`` from the centre, exact for the centre of the projection).

    Parameters
    ----------
    ra, dec : float
        Circle centre, deg.
    radius_deg : float
        Radius, deg (0 for a point; < 90).
    corners : sequence of [ra, dec]
        Four corners in order, deg.
    """
    c = np.asarray(corners, float)
    if in_footprint(ra, dec, c):
        return True
    if radius_deg <= 0:
        return False
    x, y, cosc = _gnomonic(c[:, 0], c[:, 1], ra, dec)
    if np.any(cosc <= 0):  # a corner on the far hemisphere: only if the radius is huge
        return bool(np.min(separation_deg(ra, dec, c[:, 0], c[:, 1])) <= radius_deg)
    r = math.tan(math.radians(min(radius_deg, 89.0)))
    n = len(c)
    return any(_segment_distance(0.0, 0.0, x[i], y[i], x[(i + 1) % n], y[(i + 1) % n]) <= r
               for i in range(n))


def covers(row, ra: float, dec: float, radius_deg: float = 0.0) -> bool:
    """Whether an image row (``ra, dec, radius_deg, footprint``) covers a point or circle.

    Rows without a footprint fall back to the circumscribed circle.
    """
    if row["ra"] is None or row["dec"] is None:
        return False
    sep = float(separation_deg(ra, dec, row["ra"], row["dec"]))
    if sep > float(row["radius_deg"] or MAX_FOOTPRINT_DEG) + radius_deg:
        return False
    if not row["footprint"]:
        return True
    try:
        corners = json.loads(row["footprint"])
    except (TypeError, ValueError):
        return True
    return circle_overlaps_footprint(ra, dec, radius_deg, corners)
