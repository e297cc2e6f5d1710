"""Intra-night tracklets: detections of one moving object within a night.

Pure functions on a candidate table with the columns of the difference-imaging stage:
``candid``, ``jd`` (mid-exposure, UTC), ``ra``, ``dec`` (deg), ``magpsf``, ``fid``, ``field``
and, for streaks, ``length`` (arcsec) and ``pa`` (deg, E of N; NaN for point sources).

1. :func:`flag_stationary`: detections repeated at the same place (within ~1.5 arcsec) in
   another exposure of the night are fixed sources (variables, transients, artefacts of
   subtraction) and take no further part.
2. :func:`build_tracklets`: in each (night, field), every pair of detections from two
   exposures at least ``min_dt_minutes`` apart whose rate is below ``max_rate_deg_per_day``
   is a seed; its linear motion is extrapolated to the other exposures of the field, and
   detections within ``linear_tol_arcsec`` are added. Tracklets of three or more
   detections claim their members (largest first, then the best linear fit); pairs are kept
   whenever their detections are not claimed, even when they share a detection: the right
   partner of an object seen twice in a night cannot be told from a chance alignment
   until the linking across nights.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from zsds.core.known_objects import night_index, unit_vectors
from zsds.errors import InputDataError

__all__ = ["CANDIDATE_COLUMNS", "TRACKLET_COLUMNS", "tangent_plane", "from_tangent_plane",
           "flag_stationary", "build_tracklets"]

#: Columns a candidate table needs here.
CANDIDATE_COLUMNS = ("candid", "jd", "ra", "dec", "field")
#: Columns of the tracklet table.
TRACKLET_COLUMNS = ("tracklet_id", "night", "field", "n", "jd", "ra", "dec", "dra_cosdec",
                    "ddec", "rms_arcsec", "rows")


def tangent_plane(ra, dec, ra0, dec0) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic projection (deg) of positions about the tangent point (ra0, dec0)."""
    ra, dec, ra0, dec0 = (np.deg2rad(np.asarray(x, float)) for x in (ra, dec, ra0, dec0))
    cosc = np.sin(dec0) * np.sin(dec) + np.cos(dec0) * np.cos(dec) * np.cos(ra - ra0)
    xi = np.cos(dec) * np.sin(ra - ra0) / cosc
    eta = (np.cos(dec0) * np.sin(dec) - np.sin(dec0) * np.cos(dec) * np.cos(ra - ra0)) / cosc
    return np.rad2deg(xi), np.rad2deg(eta)


def from_tangent_plane(xi, eta, ra0, dec0) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`tangent_plane`: positions (deg) from projected coordinates (deg)."""
    xi, eta, ra0, dec0 = (np.deg2rad(np.asarray(x, float)) for x in (xi, eta, ra0, dec0))
    den = np.cos(dec0) - eta * np.sin(dec0)
    ra = ra0 + np.arctan2(xi, den)
    dec = np.arctan2(np.sin(dec0) + eta * np.cos(dec0), np.hypot(xi, den))
    return np.remainder(np.rad2deg(ra), 360.0), np.rad2deg(dec)


def _require(candidates: pd.DataFrame):
    missing = [c for c in CANDIDATE_COLUMNS if c not in candidates]
    if missing:
        raise InputDataError("candidate table", f"missing column(s) {missing}")


def flag_stationary(candidates: pd.DataFrame, radius_arcsec: float = 1.5,
                    min_dt_minutes: float = 5.0) -> np.ndarray:
    """True for detections repeated within `radius_arcsec` in another exposure of the night.

    Parameters
    ----------
    candidates : pandas.DataFrame
        ``jd``, ``ra``, ``dec``.
    radius_arcsec : float
        Positions closer than this are the same source.
    min_dt_minutes : float
        Only repeats at least this much later or earlier count (not the same exposure).

    Returns
    -------
    ndarray of bool, one per candidate row.
    """
    jd = candidates["jd"].to_numpy(float)
    vec = unit_vectors(candidates["ra"], candidates["dec"])
    chord = 2.0 * np.sin(np.deg2rad(radius_arcsec / 3600.0) / 2.0)
    flag = np.zeros(len(candidates), dtype=bool)
    nights = night_index(jd)
    for night in np.unique(nights):
        rows = np.flatnonzero(nights == night)
        pairs = cKDTree(vec[rows]).query_pairs(chord, output_type="ndarray")
        if len(pairs) == 0:
            continue
        i, j = rows[pairs[:, 0]], rows[pairs[:, 1]]
        apart = np.abs(jd[i] - jd[j]) * 1440.0 >= min_dt_minutes
        flag[i[apart]] = True
        flag[j[apart]] = True
    return flag


def _seed_pairs(x, y, t, max_rate, min_dt) -> np.ndarray:
    """Row pairs (i, j), t_i < t_j, of detections that a motion below `max_rate` can join."""
    times = np.unique(t)
    trees = {k: (np.flatnonzero(t == tk), None) for k, tk in enumerate(times)}
    out = []
    for a in range(times.size):
        ia = trees[a][0]
        for b in range(a + 1, times.size):
            dt = times[b] - times[a]
            if dt < min_dt:
                continue
            ib, tree = trees[b]
            if tree is None:
                tree = cKDTree(np.column_stack([x[ib], y[ib]]))
                trees[b] = (ib, tree)
            hits = tree.query_ball_point(np.column_stack([x[ia], y[ia]]), r=max_rate * dt)
            for k, js in enumerate(hits):
                out.extend((ia[k], ib[j]) for j in js)
    return np.array(out, dtype=np.int64).reshape(-1, 2)


def _streak_consistent(pairs, x, y, t, length, pa, exptime_s, rate_tol, pa_tol_deg):
    """False for pairs whose motion contradicts the length or angle of a member streak."""
    vx = (x[pairs[:, 1]] - x[pairs[:, 0]]) / (t[pairs[:, 1]] - t[pairs[:, 0]])
    vy = (y[pairs[:, 1]] - y[pairs[:, 0]]) / (t[pairs[:, 1]] - t[pairs[:, 0]])
    rate = np.hypot(vx, vy) * 3600.0 * exptime_s / 86400.0     # arcsec per exposure
    ang = np.rad2deg(np.arctan2(vx, vy))
    ok = np.ones(len(pairs), dtype=bool)
    for col in (0, 1):
        L, P = length[pairs[:, col]], pa[pairs[:, col]]
        streak = np.isfinite(L)
        dang = np.abs((ang - P + 90.0) % 180.0 - 90.0)
        bad = streak & ((np.abs(rate - L) > rate_tol * np.maximum(L, 1.0)) | (dang > pa_tol_deg))
        ok &= ~bad
    return ok


def _extend(pairs, x, y, t, tol) -> list[np.ndarray]:
    """Member rows of each seed pair after adding detections on its line at other times."""
    members = [list(p) for p in pairs]
    if len(pairs) == 0:
        return []
    i, j = pairs[:, 0], pairs[:, 1]
    vx, vy = (x[j] - x[i]) / (t[j] - t[i]), (y[j] - y[i]) / (t[j] - t[i])
    for tk in np.unique(t):
        rows = np.flatnonzero(t == tk)
        d, k = cKDTree(np.column_stack([x[rows], y[rows]])).query(
            np.column_stack([x[i] + vx * (tk - t[i]), y[i] + vy * (tk - t[i])]),
            distance_upper_bound=tol)
        other = np.isfinite(d) & (t[i] != tk) & (t[j] != tk)
        for p in np.flatnonzero(other):
            members[p].append(rows[k[p]])
    return [np.unique(m) for m in members]


def _linear_fit(x, y, t):
    """Mean time, position at it, velocity (deg/day) and rms (arcsec) of a linear motion."""
    tm = t.mean()
    A = np.column_stack([np.ones_like(t), t - tm])
    cx, *_ = np.linalg.lstsq(A, x, rcond=None)
    cy, *_ = np.linalg.lstsq(A, y, rcond=None)
    res = np.hypot(x - A @ cx, y - A @ cy)
    rms = float(np.sqrt(np.mean(res**2))) * 3600.0 if t.size > 2 else 0.0
    return tm, cx[0], cy[0], cx[1], cy[1], rms


def _select(member_sets, x, y, t):
    """Tracklets kept: >=3 detections claim their members, unclaimed pairs all stay."""
    uniq = {tuple(m): m for m in member_sets}
    fits = {k: _linear_fit(x[m], y[m], t[m]) for k, m in uniq.items()}
    long = sorted((k for k in uniq if len(k) > 2), key=lambda k: (-len(k), fits[k][5]))
    used: set[int] = set()
    kept = []
    for k in long:
        if used.isdisjoint(k):
            used.update(k)
            kept.append(k)
    kept += [k for k in uniq if len(k) == 2 and used.isdisjoint(k)]
    return kept, fits


def _group_tracklets(g: pd.DataFrame, params: dict) -> list[dict]:
    ra0, dec0 = float(np.median(g["ra"])), float(np.median(g["dec"]))
    x, y = tangent_plane(g["ra"], g["dec"], ra0, dec0)
    t = g["jd"].to_numpy(float)
    pairs = _seed_pairs(x, y, t, params["max_rate_deg_per_day"],
                        params["min_dt_minutes"] / 1440.0)
    if len(pairs) and "length" in g:
        ok = _streak_consistent(pairs, x, y, t, g["length"].to_numpy(float),
                                g["pa"].to_numpy(float), params["exptime_s"], 0.5, 25.0)
        pairs = pairs[ok]
    members = _extend(pairs, x, y, t, params["linear_tol_arcsec"] / 3600.0)
    kept, fits = _select(members, x, y, t)
    rows = g.index.to_numpy()
    out = []
    for k in kept:
        tm, xm, ym, vx, vy, rms = fits[k]
        if rms > params["linear_tol_arcsec"]:
            continue
        ra, dec = from_tangent_plane(xm, ym, ra0, dec0)
        # rates on the sky at the tracklet's position (tangent-plane velocity, rotated)
        ra2, dec2 = from_tangent_plane(xm + vx * 1e-3, ym + vy * 1e-3, ra0, dec0)
        out.append({"jd": tm, "ra": float(ra), "dec": float(dec),
                    "dra_cosdec": float(((ra2 - ra + 180.0) % 360.0 - 180.0)
                                        * np.cos(np.deg2rad(dec)) / 1e-3),
                    "ddec": float((dec2 - dec) / 1e-3), "n": len(k), "rms_arcsec": rms,
                    "rows": rows[list(k)]})
    return out


def build_tracklets(candidates: pd.DataFrame, *, max_rate_deg_per_day: float = 10.0,
                    min_dt_minutes: float = 10.0, linear_tol_arcsec: float = 1.0,
                    stationary_radius_arcsec: float = 1.5, exptime_s: float = 30.0,
                    stationary: np.ndarray | None = None) -> pd.DataFrame:
    """Intra-night tracklets of the non-stationary candidates.

    Parameters
    ----------
    candidates : pandas.DataFrame
        ``candid``, ``jd``, ``ra``, ``dec``, ``field``; optional streak columns ``length``
        (arcsec) and ``pa`` (deg E of N), NaN for point sources.
    max_rate_deg_per_day : float
        Fastest motion searched (10 deg/day reaches near-Earth objects).
    min_dt_minutes : float
        Shortest interval between two detections of a tracklet.
    linear_tol_arcsec : float
        Largest distance of a third detection from the pair's line, and the largest rms of
        a tracklet's linear fit.
    stationary_radius_arcsec : float
        See :func:`flag_stationary`.
    exptime_s : float
        Exposure time: a streak's length must match the tracklet's rate times it.
    stationary : ndarray of bool, optional
        Precomputed :func:`flag_stationary` result.

    Returns
    -------
    pandas.DataFrame
        One row per tracklet: ``tracklet_id`` (0..), ``night`` (:func:`night_index`),
        ``field``, ``n`` (detections), ``jd`` (mean time), ``ra``, ``dec`` (deg, at ``jd``
        on the linear fit), ``dra_cosdec``, ``ddec`` (deg/day), ``rms_arcsec`` and ``rows``
        (positional indices of the member candidates in `candidates`).
    """
    _require(candidates)
    cands = candidates.reset_index(drop=True)
    if stationary is None:
        stationary = flag_stationary(cands, stationary_radius_arcsec)
    params = {"max_rate_deg_per_day": max_rate_deg_per_day, "min_dt_minutes": min_dt_minutes,
              "linear_tol_arcsec": linear_tol_arcsec, "exptime_s": exptime_s}
    moving = cands.loc[~np.asarray(stationary, bool)]
    rows = []
    keys = [night_index(moving["jd"]), moving["field"].to_numpy()]
    for (night, field), g in moving.groupby(keys, sort=True):
        for rec in _group_tracklets(g, params):
            rows.append({"night": int(night), "field": field, **rec})
    table = pd.DataFrame(rows, columns=[c for c in TRACKLET_COLUMNS if c != "tracklet_id"])
    table.insert(0, "tracklet_id", np.arange(len(table), dtype=np.int64))
    return table.astype({"night": np.int64, "n": np.int64})
