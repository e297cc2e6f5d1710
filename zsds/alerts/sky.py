"""Small spherical-geometry helpers for cone searches in SQL (pure functions)."""

from __future__ import annotations

import math

import numpy as np
from sqlalchemy import and_, or_

__all__ = ["separation_deg", "cone_clause", "in_footprint"]


def separation_deg(ra1, dec1, ra2, dec2):
    """Angular separation (deg), haversine; accepts scalars or arrays."""
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(v, dtype=float)) for v in (ra1, dec1, ra2, dec2))
    h = (np.sin((dec2 - dec1) / 2) ** 2
         + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2)
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0))))


def cone_clause(ra_col, dec_col, ra: float, dec: float, radius_deg: float):
    """A SQL condition selecting a box enclosing the cone (exact test afterwards)."""
    dec_lo, dec_hi = dec - radius_deg, dec + radius_deg
    cond = [dec_col >= dec_lo, dec_col <= dec_hi]
    if dec_hi >= 90.0 or dec_lo <= -90.0:
        return and_(*cond)
    half = radius_deg / max(math.cos(math.radians(max(abs(dec_lo), abs(dec_hi)))), 1e-9)
    if half >= 180.0:
        return and_(*cond)
    lo, hi = (ra - half) % 360.0, (ra + half) % 360.0
    ra_cond = (and_(ra_col >= lo, ra_col <= hi) if lo <= hi
               else or_(ra_col >= lo, ra_col <= hi))
    return and_(*cond, ra_cond)


def _tangent(ra, dec, ra0, dec0):
    ra, dec, ra0, dec0 = (np.radians(np.asarray(v, dtype=float)) for v in (ra, dec, ra0, dec0))
    cosc = np.sin(dec0) * np.sin(dec) + np.cos(dec0) * np.cos(dec) * np.cos(ra - ra0)
    x = np.cos(dec) * np.sin(ra - ra0) / cosc
    y = (np.cos(dec0) * np.sin(dec) - np.sin(dec0) * np.cos(dec) * np.cos(ra - ra0)) / cosc
    return x, y


def in_footprint(ra: float, dec: float, corners) -> bool:
    """Whether (ra, dec) lies inside the convex quadrilateral ``corners`` [[ra, dec] x 4]."""
    c = np.asarray(corners, dtype=float)
    ra0, dec0 = c[:, 0].mean() if np.ptp(c[:, 0]) < 180 else ra, c[:, 1].mean()
    xs, ys = _tangent(c[:, 0], c[:, 1], ra0, dec0)
    px, py = _tangent(ra, dec, ra0, dec0)
    cross = [(xs[(i + 1) % 4] - xs[i]) * (py - ys[i]) - (ys[(i + 1) % 4] - ys[i]) * (px - xs[i])
             for i in range(4)]
    return bool(all(v >= 0 for v in cross) or all(v <= 0 for v in cross))
