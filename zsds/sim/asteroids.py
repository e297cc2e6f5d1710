"""A simulated asteroid population placed where the simulated survey looks.

Every object is constructed backwards from a chosen sky position: a point drawn uniformly
inside one of the given sky circles at a reference time (the window's middle, or the
pointing's own time when one is given), a topocentric distance appropriate to its
population, and a heliocentric velocity drawn from a main-belt or near-Earth orbit through
that point. The state (at the light-time-retarded epoch) is converted to osculating
heliocentric ecliptic J2000 elements with :mod:`zsds.core.ephemeris` and moved (two-body)
to a common integer-MJD epoch near the window, so :func:`zsds.core.ephemeris.ephemerides`
puts the object back at the chosen position at the reference time.

Populations
-----------
MBA
    heliocentric distance 2.1-3.3 au at the reference time, ``a`` 2.1-3.3 au, ``e < 0.3``,
    ``i`` drawn in 0-20 deg but raised to the object's heliocentric ecliptic latitude
    (+0.2-3 deg) when the pointing requires it (high-latitude fields), H 12-18.
NEA
    topocentric distance 0.05-0.5 au (density proportional to distance; the nearest move
    several deg/day and streak in a 30 s exposure), perihelion ``q < 1.3`` au,
    ``e <= 0.9``, ``i`` from a half-normal of 15 deg (capped at 40, raised like the MBAs'),
    H 18-24.

H is chosen so that the V magnitude at the reference time is 16-20.5 for 85 % of the
objects and 20.5-22 for the rest, then clipped to the population's H range. A fraction
``known_fraction`` (default 80 %) is flagged ``known`` (the public orbit file); the rest
exist only in the simulator's truth. Everything is deterministic for a seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from astropy.coordinates import EarthLocation

from zsds.core.ephemeris import (C_AU_PER_DAY, GM_SUN, PALOMAR, elements_from_state,
                                 equatorial_to_ecliptic, ecliptic_to_equatorial, hg_magnitude,
                                 jd_utc_to_mjd_tdb, observer_state,
                                 sun_barycentric_velocity)

__all__ = ["ORBIT_COLUMNS", "simulate_asteroids", "public_orbit_table"]

#: Columns of the known-asteroid orbit file (``survey-inputs.md``).
ORBIT_COLUMNS = ["designation", "epoch_mjd", "a", "e", "i", "node", "peri", "M", "H", "G"]

_H_RANGE = {"MBA": (12.0, 18.0), "NEA": (18.0, 24.0)}


def _parse_pointings(pointings, jd_mid: float) -> np.ndarray:
    """Pointings as an (P, 4) float array ra, dec, radius_deg, jd_utc (jd_mid if absent)."""
    rows = []
    for k, p in enumerate(pointings):
        p = [float(x) for x in p]
        if len(p) not in (3, 4):
            raise ValueError(f"pointing {k}: expected (ra, dec, radius_deg[, jd_utc]), got {p}")
        if not (p[2] > 0 and -90.0 <= p[1] <= 90.0):
            raise ValueError(f"pointing {k}: radius_deg must be > 0 and |dec| <= 90, got {p}")
        rows.append(p if len(p) == 4 else p + [jd_mid])
    return np.array(rows, dtype=float).reshape(-1, 4)


def _offset_position(ra_deg, dec_deg, sep_deg, pa_deg) -> tuple[np.ndarray, np.ndarray]:
    """Point at angular separation `sep_deg` and position angle `pa_deg` (E of N), deg."""
    ra, dec, s, pa = (np.deg2rad(x) for x in (ra_deg, dec_deg, sep_deg, pa_deg))
    sin_d2 = np.sin(dec) * np.cos(s) + np.cos(dec) * np.sin(s) * np.cos(pa)
    dec2 = np.arcsin(np.clip(sin_d2, -1.0, 1.0))
    ra2 = ra + np.arctan2(np.sin(pa) * np.sin(s) * np.cos(dec),
                          np.cos(s) - np.sin(dec) * sin_d2)
    return np.remainder(np.rad2deg(ra2), 360.0), np.rad2deg(dec2)


def _unit_vector(ra_deg, dec_deg) -> np.ndarray:
    ra, dec = np.deg2rad(ra_deg), np.deg2rad(dec_deg)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def _distance_for_heliocentric(obs: np.ndarray, uhat: np.ndarray, r_h: np.ndarray) -> np.ndarray:
    """Positive distance along `uhat` from `obs` where the heliocentric distance is `r_h`."""
    b = np.sum(obs * uhat, axis=1)
    c = np.sum(obs * obs, axis=1) - r_h**2
    return -b + np.sqrt(b * b - c)


def _draw_shape(rng, pop_is_nea: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Semi-major axis (au) and eccentricity of an orbit passing through distance `r`."""
    n = r.size
    r_mba = np.clip(r, 2.1, 3.3)      # each branch is evaluated for every row, used for its own
    r_nea = np.clip(r, 0.3, 1.8)
    # main belt: |r/a - 1| <= e < 0.3, a in 2.1-3.3
    a_lo = np.maximum(2.1, r_mba / 1.28)
    a_hi = np.minimum(3.3, r_mba / 0.72)
    a_mba = rng.uniform(a_lo, a_hi)
    emin_mba = np.abs(r_mba / a_mba - 1.0)
    e_mba = rng.uniform(emin_mba, 0.3)
    # near-Earth: q = a(1-e) < min(1.3, r), Q >= r, e <= 0.9
    a_nea = rng.uniform(np.maximum(0.6, r_nea / 1.8), 3.0, n)
    emin_nea = np.maximum.reduce([np.zeros(n), 1.0 - np.minimum(1.3, r_nea) / a_nea + 1e-3,
                                  r_nea / a_nea - 1.0 + 1e-3])
    e_nea = rng.uniform(emin_nea, np.minimum(emin_nea + 0.35, 0.9))
    return np.where(pop_is_nea, a_nea, a_mba), np.where(pop_is_nea, e_nea, e_mba)


def _velocity_through(rng, R_ecl: np.ndarray, a, e, inc_deg) -> np.ndarray:
    """Ecliptic heliocentric velocity (au/day) at `R_ecl` for an orbit with a, e, i.

    The orbit plane contains `R_ecl` and has inclination `inc_deg` (which must exceed the
    point's heliocentric latitude); the two possible planes and the inbound/outbound
    branches are chosen at random. Motion is prograde.
    """
    r = np.linalg.norm(R_ecl, axis=1)
    rhat = R_ecl / r[:, None]
    zhat = np.array([0.0, 0.0, 1.0])
    e1 = zhat[None, :] - rhat[:, 2:3] * rhat                  # in-plane-perpendicular, nearest z
    e1 /= np.linalg.norm(e1, axis=1)[:, None]
    e2 = np.cross(rhat, e1)
    cos_phi = np.clip(np.cos(np.deg2rad(inc_deg)) / np.sqrt(1.0 - rhat[:, 2] ** 2), -1.0, 1.0)
    sin_phi = np.sqrt(1.0 - cos_phi**2) * rng.choice([-1.0, 1.0], size=r.size)
    hhat = cos_phi[:, None] * e1 + sin_phi[:, None] * e2
    that = np.cross(hhat, rhat)
    hmag = np.sqrt(GM_SUN * a * (1.0 - e * e))
    v2 = GM_SUN * (2.0 / r - 1.0 / a)
    vt = hmag / r
    vr = np.sqrt(np.maximum(v2 - vt * vt, 0.0)) * rng.choice([-1.0, 1.0], size=r.size)
    return vr[:, None] * rhat + vt[:, None] * that


def _empty_table(include_construction: bool) -> pd.DataFrame:
    cols = ORBIT_COLUMNS + ["population", "known"]
    if include_construction:
        cols += ["jd_ref", "ra_ref", "dec_ref", "delta_ref_au", "pointing_index"]
    return pd.DataFrame({c: pd.Series(dtype=object if c in ("designation", "population")
                                      else bool if c == "known" else float) for c in cols})


def simulate_asteroids(pointings: Sequence[Sequence[float]], jd_start: float, jd_end: float,
                       seed: int, n_mba: int, n_nea: int, known_fraction: float = 0.8,
                       site: EarthLocation = PALOMAR,
                       nea_delta_au: tuple[float, float] = (0.05, 0.5),
                       include_construction: bool = False) -> pd.DataFrame:
    """Simulate main-belt and near-Earth asteroids that fall inside the survey's fields.

    Parameters
    ----------
    pointings : sequence of (ra, dec, radius_deg) or (ra, dec, radius_deg, jd_utc)
        Sky circles (deg, ICRS). Each object is put at a uniformly random point of a
        randomly chosen circle at the circle's time if given, else at the window's middle.
    jd_start, jd_end : float
        Survey window, Julian date (UTC).
    seed : int
        Seed of the random generator; the result is a deterministic function of all inputs.
    n_mba, n_nea : int
        Numbers of main-belt and near-Earth asteroids.
    known_fraction : float
        Fraction flagged ``known`` (exactly ``round(known_fraction * n)`` objects).
    site : astropy.coordinates.EarthLocation
        Observing site (default Palomar).
    nea_delta_au : (float, float)
        Range of NEA topocentric distances (au) at the reference time, drawn with a
        density proportional to the distance. Within 0.05-0.5 au most NEAs move faster
        than 1.2 deg/day (streaks longer than 10 pixels in 30 s).
    include_construction : bool
        Add the construction truth: ``jd_ref`` (UTC), ``ra_ref``, ``dec_ref`` (deg, the
        astrometric position at ``jd_ref``), ``delta_ref_au`` and ``pointing_index``.

    Returns
    -------
    pandas.DataFrame
        Known-asteroid orbit-file columns (``designation``, ``epoch_mjd`` (TDB), ``a``,
        ``e``, ``i``, ``node``, ``peri``, ``M``, ``H``, ``G``) plus ``population``
        ('MBA'/'NEA') and ``known`` (bool); designations ``ZS000000``... are unique.
    """
    if jd_end < jd_start:
        raise ValueError(f"jd_end ({jd_end}) is before jd_start ({jd_start})")
    if n_mba < 0 or n_nea < 0:
        raise ValueError(f"n_mba and n_nea must be >= 0, got {n_mba}, {n_nea}")
    if not 0.0 < nea_delta_au[0] <= nea_delta_au[1]:
        raise ValueError(f"nea_delta_au must be an increasing positive range, got {nea_delta_au}")
    if not 0.0 <= known_fraction <= 1.0:
        raise ValueError(f"known_fraction must be in [0, 1], got {known_fraction}")
    n = int(n_mba) + int(n_nea)
    if n == 0:
        return _empty_table(include_construction)
    jd_mid = 0.5 * (jd_start + jd_end)
    pts = _parse_pointings(pointings, jd_mid)
    if len(pts) == 0:
        raise ValueError("pointings is empty: objects need a sky circle to fall in")
    rng = np.random.default_rng(seed)
    is_nea = np.arange(n) >= n_mba
    population = np.where(is_nea, "NEA", "MBA")

    # 1. sky position at the reference time
    k = rng.integers(len(pts), size=n)
    sep = pts[k, 2] * np.sqrt(rng.uniform(0.0, 1.0, n))
    ra, dec = _offset_position(pts[k, 0], pts[k, 1], sep, rng.uniform(0.0, 360.0, n))
    jd_ref = pts[k, 3]
    uhat = _unit_vector(ra, dec)
    obs_r, _ = observer_state(jd_ref, site)
    t_obs = jd_utc_to_mjd_tdb(jd_ref)

    # 2. distance along the line of sight
    r_mba = rng.uniform(2.1, 3.3, n)
    delta_mba = _distance_for_heliocentric(obs_r, uhat, r_mba)
    d_lo, d_hi = nea_delta_au                              # density proportional to delta
    delta_nea = np.sqrt(rng.uniform(d_lo**2, d_hi**2, n))
    delta = np.where(is_nea, delta_nea, delta_mba)
    tau = delta / C_AU_PER_DAY
    # heliocentric position at emission (the Sun moves by v_sun tau meanwhile)
    R = obs_r + delta[:, None] * uhat + sun_barycentric_velocity(jd_ref) * tau[:, None]
    r = np.linalg.norm(R, axis=1)
    t_emit = t_obs - tau

    # 3. an orbit through that point
    a, e = _draw_shape(rng, is_nea, r)
    R_ecl = equatorial_to_ecliptic(R)
    beta = np.rad2deg(np.arcsin(np.abs(R_ecl[:, 2]) / r))
    inc_draw = np.where(is_nea, np.minimum(np.abs(rng.normal(0.0, 15.0, n)), 40.0),
                        rng.uniform(0.0, 20.0, n))
    inc = np.maximum(inc_draw, beta + rng.uniform(0.2, 3.0, n))
    V = ecliptic_to_equatorial(_velocity_through(rng, R_ecl, a, e, inc))
    el = elements_from_state(R, V, t_emit)

    # 4. move to a common epoch (integer MJD TDB nearest the window's middle)
    epoch = float(np.round(jd_utc_to_mjd_tdb(jd_mid)[0]))
    mean_motion = np.rad2deg(np.sqrt(GM_SUN / el["a"] ** 3))     # deg/day
    M = np.remainder(el["M"] + mean_motion * (epoch - t_emit), 360.0)

    # 5. photometry: H giving V 16-20.5 (85 %) or 20.5-22 at the reference time
    G = np.clip(rng.normal(0.15, 0.05, n), 0.0, 0.4)
    phase = np.rad2deg(np.arccos(np.clip(np.sum(R * uhat, axis=1) / r, -1.0, 1.0)))
    v_target = np.where(rng.uniform(0.0, 1.0, n) < 0.85, rng.uniform(16.0, 20.5, n),
                        rng.uniform(20.5, 22.0, n))
    H = v_target - hg_magnitude(0.0, G, r, delta, phase)
    lo = np.where(is_nea, _H_RANGE["NEA"][0], _H_RANGE["MBA"][0])
    hi = np.where(is_nea, _H_RANGE["NEA"][1], _H_RANGE["MBA"][1])
    H = np.round(np.clip(H, lo, hi), 2)

    # 6. known flag and designations
    known = np.zeros(n, dtype=bool)
    known[rng.permutation(n)[:int(round(known_fraction * n))]] = True
    designation = np.array([f"ZS{j:06d}" for j in rng.permutation(n)], dtype=object)

    table = pd.DataFrame({
        "designation": designation, "epoch_mjd": np.full(n, epoch), "a": el["a"],
        "e": el["e"], "i": el["i"], "node": el["node"], "peri": el["peri"], "M": M,
        "H": H, "G": np.round(G, 2), "population": population, "known": known,
    })
    if include_construction:
        table["jd_ref"] = jd_ref
        table["ra_ref"] = ra
        table["dec_ref"] = dec
        table["delta_ref_au"] = delta
        table["pointing_index"] = k
    return table


def public_orbit_table(population: pd.DataFrame) -> pd.DataFrame:
    """The public known-asteroid orbit file: the ``known`` rows, orbit-file columns only."""
    missing = [c for c in ORBIT_COLUMNS + ["known"] if c not in population]
    if missing:
        raise ValueError(f"asteroid table lacks column(s) {missing}")
    known = population["known"].to_numpy(dtype=bool)
    return population.loc[known, ORBIT_COLUMNS].reset_index(drop=True)
