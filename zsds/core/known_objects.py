"""Known solar-system objects: predicted positions at every exposure and candidate tagging.

Two steps, both pure (tables in, tables out):

1. :func:`predict_positions` propagates the known-asteroid orbit file to every exposure with
   :mod:`zsds.core.ephemeris` (two-body, light-time corrected, topocentric for Palomar). It
   works coarse-then-fine: one cheap geometric ephemeris of every object per night keeps
   only the objects that can reach a field during that night (field radius + a margin + the
   object's rate times the time from the night's reference epoch); the precise light-time
   ephemeris is then computed only for those, at each exposure's mid-exposure time.
2. :func:`tag_candidates` matches candidates to the predictions of their exposure and fills
   the alert fields ``ssdistnr`` (arcsec), ``ssmagnr`` (V mag) and ``ssnamenr`` of
   ``candidate.avsc``. The schema types are ``["null", "float"]`` and ``["null", "string"]``
   (default null), so "no known object" is NaN / None here and null in the alert packet
   (``zsds.alerts.packet`` writes NaN as null), not ZTF's -999.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from astropy.coordinates import EarthLocation
from scipy.spatial import cKDTree

from zsds.core.ephemeris import (ELEMENT_COLUMNS, PALOMAR, ephemeris_arrays, hg_magnitude,
                                 jd_utc_to_mjd_tdb, observer_state, sun_barycentric_velocity)
from zsds.errors import InputDataError

__all__ = ["EXPOSURE_COLUMNS", "PREDICTION_COLUMNS", "night_index", "unit_vectors",
           "angular_separation", "predict_positions", "tag_candidates"]

#: Columns of the exposure table given to :func:`predict_positions`.
EXPOSURE_COLUMNS = ("expid", "jd", "ra", "dec", "radius_deg")
#: Columns of the prediction table.
PREDICTION_COLUMNS = ("expid", "jd", "designation", "ra", "dec", "mag_v", "dra_cosdec", "ddec")

_ARCSEC = 1.0 / 3600.0


def night_index(jd, site: EarthLocation = PALOMAR) -> np.ndarray:
    """Integer label of the local night (changes at local mean noon of `site`) of each JD."""
    return np.floor(np.asarray(jd, dtype=float) + site.lon.deg / 360.0).astype(np.int64)


def unit_vectors(ra_deg, dec_deg) -> np.ndarray:
    """Unit vectors (..., 3) of ICRS positions given in degrees."""
    ra, dec = np.deg2rad(np.asarray(ra_deg, float)), np.deg2rad(np.asarray(dec_deg, float))
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def angular_separation(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Angular separation (deg) of positions in degrees (Vincenty's formula, broadcast)."""
    r1, d1, r2, d2 = (np.deg2rad(np.asarray(x, float)) for x in (ra1, dec1, ra2, dec2))
    dra = r2 - r1
    num = np.hypot(np.cos(d2) * np.sin(dra),
                   np.cos(d1) * np.sin(d2) - np.sin(d1) * np.cos(d2) * np.cos(dra))
    den = np.sin(d1) * np.sin(d2) + np.cos(d1) * np.cos(d2) * np.cos(dra)
    return np.rad2deg(np.arctan2(num, den))


def _chord(arcsec: float) -> float:
    return 2.0 * np.sin(np.deg2rad(arcsec * _ARCSEC) / 2.0)


def _require(table: pd.DataFrame, columns, what: str):
    missing = [c for c in columns if c not in table]
    if missing:
        raise InputDataError(what, f"missing column(s) {missing}")


def _empty_predictions() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object if c == "designation" else
                                      np.int64 if c == "expid" else float)
                         for c in PREDICTION_COLUMNS})


def _night_predictions(elements: dict, H, G, names, exp: pd.DataFrame, margin_deg: float,
                       site: EarthLocation) -> list[pd.DataFrame]:
    """Coarse prefilter then precise ephemerides for the exposures of one night."""
    jd = exp["jd"].to_numpy(float)
    jd0 = float(np.median(jd))
    o_r, o_v = observer_state(jd0, site)
    coarse = ephemeris_arrays(elements, jd_utc_to_mjd_tdb(jd0), o_r, o_v, light_time=False)
    ra0, dec0 = coarse["ra"][:, 0], coarse["dec"][:, 0]
    rate = np.hypot(coarse["dra_cosdec"][:, 0], coarse["ddec"][:, 0])
    reach = (exp["radius_deg"].to_numpy(float)[None, :] + margin_deg
             + rate[:, None] * np.abs(jd - jd0)[None, :])
    near = angular_separation(ra0[:, None], dec0[:, None], exp["ra"].to_numpy(float)[None, :],
                              exp["dec"].to_numpy(float)[None, :]) < reach   # (N, E)
    t = jd_utc_to_mjd_tdb(jd)
    obs_r, obs_v = observer_state(jd, site)
    sun_v = sun_barycentric_velocity(jd)
    out = []
    for k, row in enumerate(exp.itertuples(index=False)):
        sel = np.flatnonzero(near[:, k])
        if sel.size == 0:
            continue
        sub = {c: v[sel] for c, v in elements.items()}
        eph = ephemeris_arrays(sub, t[k:k + 1], obs_r[k:k + 1], obs_v[k:k + 1], sun_v[k:k + 1])
        ra, dec = eph["ra"][:, 0], eph["dec"][:, 0]
        inside = angular_separation(row.ra, row.dec, ra, dec) <= row.radius_deg
        if not inside.any():
            continue
        keep = sel[inside]
        mag = hg_magnitude(H[keep], G[keep], eph["r_au"][inside, 0], eph["delta_au"][inside, 0],
                           eph["phase_deg"][inside, 0])
        out.append(pd.DataFrame({
            "expid": np.full(keep.size, row.expid, dtype=np.int64),
            "jd": np.full(keep.size, row.jd), "designation": names[keep],
            "ra": ra[inside], "dec": dec[inside], "mag_v": mag,
            "dra_cosdec": eph["dra_cosdec"][inside, 0], "ddec": eph["ddec"][inside, 0]}))
    return out


def predict_positions(orbits: pd.DataFrame, exposures: pd.DataFrame, *,
                      margin_deg: float = 3.0, site: EarthLocation = PALOMAR) -> pd.DataFrame:
    """Positions of the known objects inside each exposure's field.

    Parameters
    ----------
    orbits : pandas.DataFrame
        Known-asteroid orbit file (``survey-inputs.md``): ``designation``, ``epoch_mjd``,
        ``a``, ``e``, ``i``, ``node``, ``peri``, ``M``, ``H``, ``G``.
    exposures : pandas.DataFrame
        One row per exposure: ``expid``, ``jd`` (UTC, mid-exposure), ``ra``, ``dec`` (field
        centre, deg) and ``radius_deg`` (radius of a circle containing the field).
    margin_deg : float
        Margin of the nightly prefilter beyond the field radius and the object's motion; it
        absorbs the curvature of the motion and the light time (a few degrees is plenty).
    site : astropy.coordinates.EarthLocation
        Observing site (default Palomar).

    Returns
    -------
    pandas.DataFrame
        One row per (exposure, object inside its circle): ``expid``, ``jd``,
        ``designation``, ``ra``, ``dec`` (deg, astrometric ICRS), ``mag_v``, ``dra_cosdec``,
        ``ddec`` (deg/day).
    """
    _require(orbits, ("designation", "H", "G") + ELEMENT_COLUMNS, "orbit table")
    _require(exposures, EXPOSURE_COLUMNS, "exposure table")
    if len(orbits) == 0 or len(exposures) == 0:
        return _empty_predictions()
    elements = {c: orbits[c].to_numpy(float) for c in ELEMENT_COLUMNS}
    H, G = orbits["H"].to_numpy(float), orbits["G"].to_numpy(float)
    names = orbits["designation"].to_numpy(object)
    exp = exposures.loc[:, list(EXPOSURE_COLUMNS)].sort_values("jd", kind="stable")
    parts = []
    for _, night in exp.groupby(night_index(exp["jd"], site), sort=True):
        parts += _night_predictions(elements, H, G, names, night, margin_deg, site)
    if not parts:
        return _empty_predictions()
    return pd.concat(parts, ignore_index=True)


def _exposure_keys(cand_jd: np.ndarray, pred_jd: np.ndarray, tol_day: float) -> np.ndarray:
    """Index into sorted unique `pred_jd` of each candidate's exposure (-1 if none)."""
    if pred_jd.size == 0:
        return np.full(cand_jd.size, -1)
    j = np.clip(np.searchsorted(pred_jd, cand_jd), 1, max(pred_jd.size - 1, 1))
    lo = np.clip(j - 1, 0, pred_jd.size - 1)
    hi = np.clip(j, 0, pred_jd.size - 1)
    best = np.where(np.abs(pred_jd[lo] - cand_jd) <= np.abs(pred_jd[hi] - cand_jd), lo, hi)
    return np.where(np.abs(pred_jd[best] - cand_jd) <= tol_day, best, -1)


def tag_candidates(candidates: pd.DataFrame, predictions: pd.DataFrame,
                   radius_arcsec: float = 5.0, *, jd_tolerance_s: float = 1.0) -> pd.DataFrame:
    """Nearest known object of each candidate, within `radius_arcsec`.

    Parameters
    ----------
    candidates : pandas.DataFrame
        ``jd`` (mid-exposure, UTC), ``ra``, ``dec`` (deg).
    predictions : pandas.DataFrame
        Output of :func:`predict_positions`.
    radius_arcsec : float
        Tagging radius. The issue's 5 arcsec by default; ZTF's alert convention is 30.
    jd_tolerance_s : float
        A candidate belongs to the exposure whose prediction time is within this.

    Returns
    -------
    pandas.DataFrame
        Indexed like `candidates`: ``ssdistnr`` (arcsec, float32), ``ssmagnr`` (V mag,
        float32) and ``ssnamenr`` (str); NaN, NaN and None when no known object is within
        the radius.
    """
    _require(candidates, ("jd", "ra", "dec"), "candidate table")
    _require(predictions, ("jd", "ra", "dec", "designation", "mag_v"), "prediction table")
    n = len(candidates)
    dist = np.full(n, np.nan, dtype=np.float32)
    mag = np.full(n, np.nan, dtype=np.float32)
    name = np.full(n, None, dtype=object)
    pred_jd = predictions["jd"].to_numpy(float)
    ujd, pred_key = np.unique(pred_jd, return_inverse=True)
    cand_key = _exposure_keys(candidates["jd"].to_numpy(float), ujd, jd_tolerance_s / 86400.0)
    cvec = unit_vectors(candidates["ra"], candidates["dec"])
    pvec = unit_vectors(predictions["ra"], predictions["dec"])
    pmag = predictions["mag_v"].to_numpy(float)
    pname = predictions["designation"].to_numpy(object)
    chord = _chord(radius_arcsec)
    order = np.argsort(pred_key, kind="stable")
    bounds = np.searchsorted(pred_key[order], np.arange(ujd.size + 1))
    for key in np.unique(cand_key[cand_key >= 0]):
        rows = np.flatnonzero(cand_key == key)
        pidx = order[bounds[key]:bounds[key + 1]]
        d, j = cKDTree(pvec[pidx]).query(cvec[rows], k=1, distance_upper_bound=chord)
        hit = np.isfinite(d)
        src = pidx[j[hit]]
        dist[rows[hit]] = np.rad2deg(2.0 * np.arcsin(d[hit] / 2.0)) * 3600.0
        mag[rows[hit]] = pmag[src]
        name[rows[hit]] = pname[src]
    return pd.DataFrame({"ssdistnr": dist, "ssmagnr": mag, "ssnamenr": name},
                        index=candidates.index)
