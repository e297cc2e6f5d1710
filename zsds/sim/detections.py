"""Synthetic candidate tables for the moving-object kernels (no images rendered).

Detections of a simulated asteroid population at the mid-exposure of each exposure of a
synthetic schedule, as the difference-imaging stage will report them: astrometric noise,
magnitude noise, only objects inside a field and brighter than a limit; fast objects carry
streak columns. Stationary transients (the same place in every exposure of a field) and
random false detections are mixed in. The ``truth`` column (designation, or None) and
``kind`` (``asteroid``, ``stationary``, ``false``) are for measuring, not for the kernels.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from zsds.core.ephemeris import ephemerides
from zsds.core.known_objects import angular_separation
from zsds.core.tracklets import from_tangent_plane

__all__ = ["synthetic_schedule", "simulate_candidates", "QUADRANT_AREA_DEG2"]

#: Sky area of a readout quadrant (3072 x 3080 pixels of 1.012 arcsec), deg^2.
QUADRANT_AREA_DEG2 = 3072 * 3080 * (1.012 / 3600.0) ** 2


def synthetic_schedule(fields: pd.DataFrame, night_jds, visits_per_night: int = 2,
                       visit_gap_minutes: float = 35.0, exptime: float = 30.0) -> pd.DataFrame:
    """Exposures of every field `visits_per_night` times a night, ``visit_gap`` apart.

    Parameters
    ----------
    fields : pandas.DataFrame
        ``field``, ``ra``, ``dec``, ``radius_deg``.
    night_jds : sequence of float
        Start of each night's first visit (JD UTC).

    Returns
    -------
    pandas.DataFrame
        ``expid``, ``obsjd`` (shutter open), ``jd`` (mid-exposure), ``field``, ``ra``,
        ``dec``, ``radius_deg``, ``fid`` (alternating 1/2), ``exptime``.
    """
    rows = []
    for jd0 in night_jds:
        for v in range(visits_per_night):
            for k, f in enumerate(fields.itertuples(index=False)):
                obsjd = jd0 + (v * visit_gap_minutes + k * 0.75) / 1440.0
                rows.append({"obsjd": obsjd, "jd": obsjd + exptime / 172800.0, "field": f.field,
                             "ra": f.ra, "dec": f.dec, "radius_deg": f.radius_deg,
                             "fid": 1 + v % 2, "exptime": exptime})
    sched = pd.DataFrame(rows).sort_values("obsjd", ignore_index=True)
    sched.insert(0, "expid", np.arange(1, len(sched) + 1, dtype=np.int64))
    return sched


def _random_in_circle(rng, n, ra, dec, radius):
    sep = radius * np.sqrt(rng.uniform(0, 1, n))
    ang = rng.uniform(0, 2 * np.pi, n)
    return from_tangent_plane(sep * np.sin(ang), sep * np.cos(ang), ra, dec)


def _asteroid_detections(population, schedule, rng, mag_limit, sigma_arcsec, exptime):
    eph = ephemerides(population, schedule["jd"].to_numpy())
    eph["expid"] = np.tile(schedule["expid"].to_numpy(), len(population))
    eph = eph.merge(schedule[["expid", "field", "ra", "dec", "radius_deg", "fid"]]
                    .rename(columns={"ra": "fra", "dec": "fdec"}), on="expid")
    inside = angular_separation(eph["fra"], eph["fdec"], eph["ra"], eph["dec"]) <= eph["radius_deg"]
    eph = eph.loc[inside & (eph["mag_v"] < mag_limit)].reset_index(drop=True)
    n = len(eph)
    sig = sigma_arcsec / 3600.0
    out = pd.DataFrame({"jd": eph["jd"], "field": eph["field"], "fid": eph["fid"],
                        "expid": eph["expid"],
                        "ra": eph["ra"] + rng.normal(0, sig, n) / np.cos(np.deg2rad(eph["dec"])),
                        "dec": eph["dec"] + rng.normal(0, sig, n),
                        "magpsf": eph["mag_v"] + rng.normal(0, 0.05, n),
                        "truth": eph["designation"], "kind": "asteroid"})
    length = np.hypot(eph["dra_cosdec"], eph["ddec"]) * 3600.0 * exptime / 86400.0
    streak = length > 10.0
    out["length"] = np.where(streak, length, np.nan)
    out["pa"] = np.where(streak, np.rad2deg(np.arctan2(eph["dra_cosdec"], eph["ddec"])) % 180.0,
                         np.nan)
    half = 0.5 * exptime / 86400.0
    cosd = np.cos(np.deg2rad(out["dec"]))
    for sign, suffix in ((-1, "1"), (1, "2")):
        out["ra" + suffix] = np.where(streak, out["ra"] + sign * half * eph["dra_cosdec"] / cosd,
                                      np.nan)
        out["dec" + suffix] = np.where(streak, out["dec"] + sign * half * eph["ddec"], np.nan)
    return out


def _stationary(fields, schedule, rng, per_field, sigma_arcsec):
    parts = []
    sig = sigma_arcsec / 3600.0
    for f in fields.itertuples(index=False):
        ra, dec = _random_in_circle(rng, per_field, f.ra, f.dec, f.radius_deg)
        exp = schedule.loc[schedule["field"] == f.field]
        for e in exp.itertuples(index=False):
            parts.append(pd.DataFrame({
                "jd": e.jd, "field": f.field, "fid": e.fid, "expid": e.expid,
                "ra": ra + rng.normal(0, sig, per_field) / np.cos(np.deg2rad(dec)),
                "dec": dec + rng.normal(0, sig, per_field),
                "magpsf": rng.uniform(17.0, 20.5, per_field), "truth": None,
                "kind": "stationary"}))
    return parts


def _false(schedule, rng, per_quadrant):
    parts = []
    for e in schedule.itertuples(index=False):
        quads = np.pi * e.radius_deg**2 / QUADRANT_AREA_DEG2
        n = int(rng.poisson(rng.uniform(*per_quadrant) * quads))
        ra, dec = _random_in_circle(rng, n, e.ra, e.dec, e.radius_deg)
        parts.append(pd.DataFrame({"jd": e.jd, "field": e.field, "fid": e.fid,
                                   "expid": e.expid, "ra": ra, "dec": dec,
                                   "magpsf": rng.uniform(18.5, 20.8, n), "truth": None,
                                   "kind": "false"}))
    return parts


def simulate_candidates(population: pd.DataFrame, schedule: pd.DataFrame, fields: pd.DataFrame,
                        seed: int, *, mag_limit: float = 20.5, sigma_arcsec: float = 0.15,
                        stationary_per_field: int = 20,
                        false_per_quadrant: tuple[float, float] = (5.0, 20.0),
                        exptime: float = 30.0) -> pd.DataFrame:
    """A candidate table: asteroid detections, stationary transients and false detections.

    Parameters
    ----------
    population : pandas.DataFrame
        :func:`zsds.sim.asteroids.simulate_asteroids` output (all objects).
    schedule, fields : pandas.DataFrame
        :func:`synthetic_schedule` output and its fields.
    seed : int
        Random seed.
    mag_limit : float
        Asteroids fainter than this (V) are not detected.
    sigma_arcsec : float
        Astrometric noise per coordinate.
    stationary_per_field : int
        Stationary transients per field, detected in every exposure.
    false_per_quadrant : (float, float)
        Range of the mean number of random false detections per exposure quadrant.

    Returns
    -------
    pandas.DataFrame
        ``candid``, ``jd`` (mid-exposure), ``ra``, ``dec``, ``magpsf``, ``sigmapsf``,
        ``fid``, ``field``, ``rcid``, ``pid``, ``isdiffpos``, streak columns ``ra1``,
        ``dec1``, ``ra2``, ``dec2``, ``length`` (arcsec), ``pa`` (deg, NaN for points), and
        the truth columns ``truth``, ``kind``.
    """
    rng = np.random.default_rng(seed)
    parts = [_asteroid_detections(population, schedule, rng, mag_limit, sigma_arcsec, exptime)]
    parts += _stationary(fields, schedule, rng, stationary_per_field, sigma_arcsec)
    parts += _false(schedule, rng, false_per_quadrant)
    cands = pd.concat([p for p in parts if len(p)], ignore_index=True)
    cands = cands.sort_values(["jd", "ra"], ignore_index=True)
    n = len(cands)
    cands.insert(0, "candid", np.arange(1, n + 1, dtype=np.int64) + 3_000_000_000)
    cands["sigmapsf"] = rng.uniform(0.03, 0.15, n)
    cands["rcid"] = rng.integers(0, 64, n)
    cands["pid"] = cands.pop("expid").astype(np.int64)
    cands["isdiffpos"] = "t"
    return cands
