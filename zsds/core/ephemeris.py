"""Two-body ephemerides of asteroids observed from Palomar.

Conventions (``shared/spec/survey-inputs.md``, "Known asteroids"):

* Orbital elements are osculating, heliocentric, referred to the ecliptic and equinox of
  J2000: ``a`` (au), ``e``, ``i``, ``node``, ``peri``, ``M`` (degrees), at ``epoch_mjd``
  (MJD, TDB). Only elliptic orbits (``0 <= e < 1``) are supported; Kepler's equation is
  solved by vectorised Newton iterations with Danby's starting value, robust up to at
  least ``e = 0.95``.
* Cartesian states are heliocentric, on ICRS (equatorial) axes, in au and au/day. The
  ecliptic is rotated to the equator by the J2000 obliquity 84381.448 arcsec (the 23 mas
  frame bias between the J2000 mean equator and the ICRS is neglected).
* Ephemerides are astrometric ICRS positions: two-body propagation, light-time corrected
  (iterated), topocentric from the observing site, no aberration, no light deflection, no
  planetary perturbations. Light travels in the barycentric frame: the vector from the
  observer at t to the object at t - tau includes the Sun's barycentric displacement
  ``-v_sun tau`` (up to ~10 mas for main-belt objects).
* Times given as ``jd_utc`` are Julian dates in UTC and are converted to TDB with
  ``astropy.time``; the Earth comes from astropy's built-in ERFA ``epv00`` ephemeris
  (accuracy a few km) and the site offset from ``EarthLocation.get_gcrs_posvel``. Nothing
  is downloaded: IERS tables come from the bundled ``astropy-iers-data`` package.

All functions are pure: arrays and tables in, arrays and tables out.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import pandas as pd
import astropy.units as u
from astropy.coordinates import EarthLocation, get_body_barycentric_posvel
from astropy.time import Time
from astropy.utils import iers

from zsds.errors import AlgorithmError, InputDataError

__all__ = [
    "GM_SUN", "C_AU_PER_DAY", "OBLIQUITY_J2000_ARCSEC", "MJD_OFFSET", "PALOMAR",
    "ELEMENT_COLUMNS", "ecliptic_to_equatorial", "equatorial_to_ecliptic",
    "jd_utc_to_mjd_tdb", "observer_state", "observer_heliocentric", "sun_barycentric_velocity",
    "solve_kepler",
    "propagate_two_body", "state_from_elements", "elements_from_state",
    "hg_magnitude", "ephemeris_arrays", "iter_ephemerides", "ephemerides",
]

#: Heliocentric gravitational parameter, au^3 / day^2.
GM_SUN = 2.9591220828559115e-4
#: Speed of light, au / day.
C_AU_PER_DAY = 299792.458 * 86400.0 / 149597870.7
#: Obliquity of the ecliptic at J2000 (IAU 1976/2006 value), arcsec.
OBLIQUITY_J2000_ARCSEC = 84381.448
#: JD - MJD.
MJD_OFFSET = 2400000.5
#: Palomar (ZTF / P48) observing site.
PALOMAR = EarthLocation.from_geodetic(lon=-116.8598 * u.deg, lat=33.3573 * u.deg,
                                      height=1668.0 * u.m)
#: Columns of an orbit table used for propagation.
ELEMENT_COLUMNS = ("epoch_mjd", "a", "e", "i", "node", "peri", "M")

_EPS = np.deg2rad(OBLIQUITY_J2000_ARCSEC / 3600.0)
#: Rotation matrix ecliptic J2000 -> equatorial (ICRS axes): v_eq = R @ v_ecl.
_ECL_TO_EQ = np.array([[1.0, 0.0, 0.0],
                       [0.0, np.cos(_EPS), -np.sin(_EPS)],
                       [0.0, np.sin(_EPS), np.cos(_EPS)]])


def ecliptic_to_equatorial(xyz: np.ndarray) -> np.ndarray:
    """Rotate vectors (..., 3) from ecliptic J2000 to equatorial (ICRS) axes."""
    return np.asarray(xyz, dtype=float) @ _ECL_TO_EQ.T


def equatorial_to_ecliptic(xyz: np.ndarray) -> np.ndarray:
    """Rotate vectors (..., 3) from equatorial (ICRS) to ecliptic J2000 axes."""
    return np.asarray(xyz, dtype=float) @ _ECL_TO_EQ


@contextmanager
def offline_iers():
    """Use only the bundled IERS tables; never try to download (no network here).

    Their predictions are used however old, and past their end UT1 - UTC is held: an error
    of a second in UT1 moves the observatory by under 0.5 km, nothing for airmass or an
    asteroid's topocentric position.
    """
    with iers.conf.set_temp("auto_download", False), \
            iers.conf.set_temp("auto_max_age", None), \
            iers.conf.set_temp("iers_degraded_accuracy", "ignore"):
        yield



def jd_utc_to_mjd_tdb(jd_utc) -> np.ndarray:
    """Convert Julian dates (UTC) to MJD (TDB), as a 1-D float array."""
    jd = np.atleast_1d(np.asarray(jd_utc, dtype=float))
    with offline_iers():
        tdb = Time(jd, format="jd", scale="utc").tdb
    return (tdb.jd1 - MJD_OFFSET) + tdb.jd2


def observer_state(jd_utc, site: EarthLocation = PALOMAR) -> tuple[np.ndarray, np.ndarray]:
    """Heliocentric position and velocity of an observing site.

    Parameters
    ----------
    jd_utc : float or array_like
        Julian dates (UTC).
    site : astropy.coordinates.EarthLocation
        Observing site (default Palomar).

    Returns
    -------
    r, v : ndarray, shape (N, 3)
        Heliocentric position (au) and velocity (au/day) on ICRS axes: the Earth's
        barycentric state minus the Sun's (astropy built-in ERFA ephemeris) plus the site's
        geocentric (GCRS) state.
    """
    jd = np.atleast_1d(np.asarray(jd_utc, dtype=float))
    with offline_iers():
        t = Time(jd, format="jd", scale="utc")
        tdb = t.tdb
        pe, ve = get_body_barycentric_posvel("earth", tdb, ephemeris="builtin")
        ps, vs = get_body_barycentric_posvel("sun", tdb, ephemeris="builtin")
        gp, gv = site.get_gcrs_posvel(t)
    r = (pe - ps + gp).xyz.to_value(u.au).T
    v = (ve - vs + gv).xyz.to_value(u.au / u.day).T
    return np.ascontiguousarray(r), np.ascontiguousarray(v)


def observer_heliocentric(jd_utc, site: EarthLocation = PALOMAR) -> np.ndarray:
    """Heliocentric ICRS position (au) of an observing site, shape (N, 3).

    See :func:`observer_state`.
    """
    return observer_state(jd_utc, site)[0]


def sun_barycentric_velocity(jd_utc) -> np.ndarray:
    """Barycentric ICRS velocity of the Sun (au/day), shape (N, 3), built-in ephemeris."""
    jd = np.atleast_1d(np.asarray(jd_utc, dtype=float))
    with offline_iers():
        tdb = Time(jd, format="jd", scale="utc").tdb
        _, vs = get_body_barycentric_posvel("sun", tdb, ephemeris="builtin")
    return np.ascontiguousarray(vs.xyz.to_value(u.au / u.day).T)


def solve_kepler(M, e, tol: float = 1e-13, max_iter: int = 50) -> np.ndarray:
    """Solve Kepler's equation ``E - e sin E = M`` for elliptic orbits.

    Parameters
    ----------
    M : array_like
        Mean anomaly, radians (any range).
    e : array_like
        Eccentricity, ``0 <= e < 1``; broadcast against `M`.
    tol, max_iter : float, int
        Newton stopping criterion on the step (radians) and the iteration limit.

    Returns
    -------
    ndarray
        Eccentric anomaly E in radians, on the same revolution as `M`.

    Raises
    ------
    ValueError
        If any eccentricity is outside [0, 1).
    AlgorithmError
        If Newton iterations do not converge.
    """
    M = np.asarray(M, dtype=float)
    e = np.asarray(e, dtype=float)
    if np.any(~((e >= 0) & (e < 1))):
        raise ValueError("eccentricity 'e' must satisfy 0 <= e < 1 (elliptic orbits only)")
    Mw = np.remainder(M + np.pi, 2.0 * np.pi) - np.pi          # [-pi, pi)
    E = Mw + 0.85 * e * np.where(Mw >= 0, 1.0, -1.0)            # Danby (1987) start
    for _ in range(max_iter):
        dE = (E - e * np.sin(E) - Mw) / (1.0 - e * np.cos(E))
        E = E - dE
        if np.all(np.abs(dE) < tol):
            break
    resid = np.abs(E - e * np.sin(E) - Mw)
    if resid.size and np.max(resid) > 1e-11:
        raise AlgorithmError("Kepler's equation did not converge",
                             max_residual=float(np.max(resid)), max_iter=max_iter)
    return E + (M - Mw)


def _element_arrays(elements) -> dict[str, np.ndarray]:
    """Element columns of a DataFrame or mapping as equal-length 1-D float arrays."""
    if not isinstance(elements, (pd.DataFrame, Mapping)):
        raise TypeError("elements must be a pandas DataFrame or a mapping of arrays")
    missing = [c for c in ELEMENT_COLUMNS if c not in elements]
    if missing:
        raise InputDataError("orbit table", f"missing column(s) {missing}")
    cols = np.broadcast_arrays(*[np.atleast_1d(np.asarray(elements[c], dtype=float))
                                 for c in ELEMENT_COLUMNS])
    out = {c: np.ascontiguousarray(x) for c, x in zip(ELEMENT_COLUMNS, cols)}
    bad = ~((out["e"] >= 0) & (out["e"] < 1) & (out["a"] > 0))
    if np.any(bad):
        raise InputDataError("orbit table", f"{int(bad.sum())} row(s) with column 'e' outside "
                             "[0, 1) or 'a' <= 0: only elliptic orbits are supported")
    return out


def _orbit_basis(i_deg, node_deg, peri_deg) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors P (to perihelion) and Q (90 deg ahead), ICRS axes, shape (N, 3)."""
    i, om, w = (np.deg2rad(x) for x in (i_deg, node_deg, peri_deg))
    cO, sO, cw, sw, ci, si = np.cos(om), np.sin(om), np.cos(w), np.sin(w), np.cos(i), np.sin(i)
    P = np.stack([cO * cw - sO * sw * ci, sO * cw + cO * sw * ci, sw * si], axis=-1)
    Q = np.stack([-cO * sw - sO * cw * ci, -sO * sw + cO * cw * ci, cw * si], axis=-1)
    return ecliptic_to_equatorial(P), ecliptic_to_equatorial(Q)


def propagate_two_body(elements, t_mjd_tdb) -> tuple[np.ndarray, np.ndarray]:
    """Heliocentric two-body state of elliptic orbits at given times.

    Parameters
    ----------
    elements : pandas.DataFrame or mapping
        Columns ``epoch_mjd`` (MJD TDB), ``a`` (au), ``e``, ``i``, ``node``, ``peri``, ``M``
        (deg; heliocentric ecliptic J2000 osculating elements), N rows.
    t_mjd_tdb : float or array_like
        Times (MJD, TDB). A scalar gives one epoch for every object; a 1-D array of length
        T the same T epochs for every object; a 2-D array of shape (N, T) (or (1, T))
        per-object epochs.

    Returns
    -------
    r, v : ndarray
        Heliocentric position (au) and velocity (au/day) on ICRS axes, shape (N, 3) for a
        scalar time, otherwise (N, T, 3).
    """
    el = _element_arrays(elements)
    t = np.asarray(t_mjd_tdb, dtype=float)
    scalar = t.ndim == 0
    if t.ndim > 2:
        raise ValueError("t_mjd_tdb must be a scalar, a 1-D or a 2-D array")
    tt = np.atleast_2d(t) if t.ndim < 2 else t          # (1, T) or (N, T)
    a, e = el["a"][:, None], el["e"][:, None]
    n = np.sqrt(GM_SUN / a**3)                            # rad / day
    M = np.deg2rad(el["M"])[:, None] + n * (tt - el["epoch_mjd"][:, None])
    E = solve_kepler(M, e)
    cE, sE = np.cos(E), np.sin(E)
    b = np.sqrt(1.0 - e * e)
    Edot = n / (1.0 - e * cE)
    P, Q = _orbit_basis(el["i"], el["node"], el["peri"])
    P, Q = P[:, None, :], Q[:, None, :]
    r = (a * (cE - e))[..., None] * P + (a * b * sE)[..., None] * Q
    v = (-a * sE * Edot)[..., None] * P + (a * b * cE * Edot)[..., None] * Q
    if scalar:
        return r[:, 0, :], v[:, 0, :]
    return r, v


def state_from_elements(elements) -> tuple[np.ndarray, np.ndarray]:
    """Heliocentric ICRS state (au, au/day), shape (N, 3), at each row's own epoch.

    The inverse of :func:`elements_from_state`.
    """
    el = _element_arrays(elements)
    r, v = propagate_two_body(el, el["epoch_mjd"][:, None])
    return r[:, 0, :], v[:, 0, :]


def elements_from_state(r, v, epoch_mjd_tdb) -> dict[str, np.ndarray]:
    """Osculating heliocentric ecliptic J2000 elements from a Cartesian state.

    Parameters
    ----------
    r, v : array_like, shape (3,) or (N, 3)
        Heliocentric position (au) and velocity (au/day) on ICRS axes.
    epoch_mjd_tdb : float or array_like
        Epoch of the state (MJD, TDB), broadcast to N.

    Returns
    -------
    dict of str -> ndarray, shape (N,)
        ``epoch_mjd``, ``a`` (au), ``e``, ``i``, ``node``, ``peri``, ``M`` (deg, angles in
        [0, 360)). For ``i = 0`` the node is set to 0; for ``e = 0`` the perihelion is put at
        the current position (``M = 0`` plus the argument of latitude in ``peri``).

    Raises
    ------
    ValueError
        If any state is not bound (``e >= 1``).
    """
    r = equatorial_to_ecliptic(np.atleast_2d(np.asarray(r, dtype=float)))
    v = equatorial_to_ecliptic(np.atleast_2d(np.asarray(v, dtype=float)))
    epoch = np.broadcast_to(np.asarray(epoch_mjd_tdb, dtype=float), r.shape[:1]).copy()
    rn = np.linalg.norm(r, axis=1)
    h = np.cross(r, v)
    hn = np.linalg.norm(h, axis=1)
    energy = 0.5 * np.sum(v * v, axis=1) - GM_SUN / rn
    if np.any(energy >= 0):
        raise ValueError(f"{int(np.sum(energy >= 0))} state(s) are not bound (e >= 1): "
                         "only elliptic orbits are supported")
    a = -GM_SUN / (2.0 * energy)
    inc = np.arccos(np.clip(h[:, 2] / hn, -1.0, 1.0))
    node = np.arctan2(h[:, 0], -h[:, 1])
    node = np.where(np.hypot(h[:, 0], h[:, 1]) < 1e-15 * hn, 0.0, node)
    nvec = np.stack([np.cos(node), np.sin(node), np.zeros_like(node)], axis=1)
    hhat = h / hn[:, None]
    mvec = np.cross(hhat, nvec)                        # in plane, 90 deg ahead of node
    u_lat = np.arctan2(np.sum(r * mvec, axis=1), np.sum(r * nvec, axis=1))
    rdotv = np.sum(r * v, axis=1)
    esinf = rdotv * hn / (GM_SUN * rn)
    ecosf = hn * hn / (GM_SUN * rn) - 1.0
    ecc = np.hypot(esinf, ecosf)
    f = np.arctan2(esinf, ecosf)
    E = 2.0 * np.arctan2(np.sqrt(1.0 - ecc) * np.sin(f / 2), np.sqrt(1.0 + ecc) * np.cos(f / 2))
    M = E - ecc * np.sin(E)
    wrap = lambda x: np.remainder(np.rad2deg(x), 360.0)  # noqa: E731
    return {"epoch_mjd": epoch, "a": a, "e": ecc, "i": np.rad2deg(inc), "node": wrap(node),
            "peri": wrap(u_lat - f), "M": wrap(M)}


def hg_magnitude(H, G, r_au, delta_au, phase_deg) -> np.ndarray:
    """V magnitude in the IAU (H, G) system (Bowell et al. 1989).

    ``V = H + 5 log10(r delta) - 2.5 log10((1 - G) phi1 + G phi2)`` with
    ``phi_k = exp(-A_k tan(alpha/2)^B_k)``, A = (3.33, 1.87), B = (0.63, 1.22).
    """
    t = np.tan(np.deg2rad(np.asarray(phase_deg, dtype=float)) / 2.0)
    phi1 = np.exp(-3.33 * t**0.63)
    phi2 = np.exp(-1.87 * t**1.22)
    G = np.asarray(G, dtype=float)
    return (np.asarray(H, dtype=float) + 5.0 * np.log10(np.asarray(r_au) * np.asarray(delta_au))
            - 2.5 * np.log10((1.0 - G) * phi1 + G * phi2))


def ephemeris_arrays(elements, t_mjd_tdb, obs_r, obs_v, sun_v=None, light_time: bool = True,
                     n_iter: int = 2) -> dict[str, np.ndarray]:
    """Topocentric astrometric positions and rates of N objects at T epochs.

    Parameters
    ----------
    elements : pandas.DataFrame or mapping
        Orbit table (see :func:`propagate_two_body`), N rows.
    t_mjd_tdb : array_like, shape (T,)
        Observation epochs (MJD, TDB) at the observer.
    obs_r, obs_v : array_like, shape (T, 3)
        Heliocentric ICRS observer position (au) and velocity (au/day), see
        :func:`observer_state`.
    sun_v : array_like, shape (T, 3), optional
        Barycentric velocity of the Sun (au/day, :func:`sun_barycentric_velocity`); the
        Sun's motion during the light time is neglected if not given.
    light_time : bool
        Iterate the light-time equation (``n_iter`` times); if False, geometric positions.
    n_iter : int
        Light-time iterations (each gains a factor ~v/c ~ 1e-4).

    Returns
    -------
    dict of str -> ndarray, shape (N, T)
        ``ra``, ``dec`` (deg, ICRS), ``delta_au`` (topocentric distance), ``r_au``
        (heliocentric distance at emission), ``phase_deg`` (Sun-object-observer angle),
        ``dra_cosdec``, ``ddec`` (deg/day; the small d(tau)/dt term is neglected),
        ``light_time_day``.
    """
    t = np.atleast_1d(np.asarray(t_mjd_tdb, dtype=float))
    o_r = np.asarray(obs_r, dtype=float).reshape(-1, 3)[None, :, :]
    o_v = np.asarray(obs_v, dtype=float).reshape(-1, 3)[None, :, :]
    s_v = (np.zeros_like(o_v) if sun_v is None
           else np.asarray(sun_v, dtype=float).reshape(-1, 3)[None, :, :])
    el = _element_arrays(elements)
    tau = np.zeros((el["a"].size, t.size))
    if light_time:
        for _ in range(n_iter):
            r, _v = propagate_two_body(el, t[None, :] - tau)
            tau = np.linalg.norm(r - o_r - s_v * tau[..., None], axis=-1) / C_AU_PER_DAY
    r, v = propagate_two_body(el, t[None, :] - tau)
    rho = r - o_r - s_v * tau[..., None]
    rhodot = v - o_v
    x, y, z = rho[..., 0], rho[..., 1], rho[..., 2]
    delta = np.linalg.norm(rho, axis=-1)
    rxy2 = x * x + y * y
    rxy = np.sqrt(rxy2)
    rn = np.linalg.norm(r, axis=-1)
    ddelta = np.sum(rho * rhodot, axis=-1) / delta
    dra = (x * rhodot[..., 1] - y * rhodot[..., 0]) / rxy2          # rad/day
    ddec = (rhodot[..., 2] - z * ddelta / delta) / rxy                  # rad/day
    cos_phase = np.sum(r * rho, axis=-1) / (rn * delta)
    return {
        "ra": np.remainder(np.rad2deg(np.arctan2(y, x)), 360.0),
        "dec": np.rad2deg(np.arctan2(z, rxy)),
        "delta_au": delta,
        "r_au": rn,
        "phase_deg": np.rad2deg(np.arccos(np.clip(cos_phase, -1.0, 1.0))),
        "dra_cosdec": np.rad2deg(dra * rxy / delta),
        "ddec": np.rad2deg(ddec),
        "light_time_day": tau if light_time else np.zeros_like(delta),
    }


def iter_ephemerides(orbits: pd.DataFrame, jd_utc, site: EarthLocation = PALOMAR,
                     light_time: bool = True, chunk_size: int = 250) -> Iterator[pd.DataFrame]:
    """Yield :func:`ephemerides` tables for successive chunks of `chunk_size` objects.

    The observer state and the UTC->TDB conversion are computed once for all epochs; use
    this for large problems (10^4 objects x thousands of epochs) to bound memory.
    """
    if "designation" not in orbits:
        raise InputDataError("orbit table", "missing column 'designation'")
    for col in ("H", "G"):
        if col not in orbits:
            raise InputDataError("orbit table", f"missing column '{col}'")
    jd = np.atleast_1d(np.asarray(jd_utc, dtype=float))
    t = jd_utc_to_mjd_tdb(jd)
    o_r, o_v = observer_state(jd, site)
    s_v = sun_barycentric_velocity(jd)
    n = len(orbits)
    for start in range(0, n, max(1, int(chunk_size))):
        chunk = orbits.iloc[start:start + chunk_size]
        eph = ephemeris_arrays(chunk, t, o_r, o_v, s_v, light_time=light_time)
        nobj = len(chunk)
        H = np.asarray(chunk["H"], dtype=float)[:, None]
        G = np.asarray(chunk["G"], dtype=float)[:, None]
        mag = hg_magnitude(H, G, eph["r_au"], eph["delta_au"], eph["phase_deg"])
        out = {"designation": np.repeat(np.asarray(chunk["designation"]), jd.size),
               "jd": np.tile(jd, nobj)}
        for key in ("ra", "dec", "delta_au", "r_au", "phase_deg"):
            out[key] = eph[key].ravel()
        out["mag_v"] = mag.ravel()
        out["dra_cosdec"] = eph["dra_cosdec"].ravel()
        out["ddec"] = eph["ddec"].ravel()
        yield pd.DataFrame(out)


def ephemerides(orbits: pd.DataFrame, jd_utc, site: EarthLocation = PALOMAR,
                light_time: bool = True, chunk_size: int = 250) -> pd.DataFrame:
    """Astrometric topocentric ephemerides of every object at every epoch.

    Parameters
    ----------
    orbits : pandas.DataFrame
        Known-asteroid table (``survey-inputs.md``): ``designation``, ``epoch_mjd`` (TDB),
        ``a``, ``e``, ``i``, ``node``, ``peri``, ``M``, ``H``, ``G``.
    jd_utc : float or array_like
        Observation epochs, Julian date (UTC).
    site : astropy.coordinates.EarthLocation
        Observing site (default Palomar).
    light_time : bool
        Apply the (iterated) light-time correction; True for astrometric positions.
    chunk_size : int
        Objects processed at a time.

    Returns
    -------
    pandas.DataFrame
        One row per (object, epoch), object-major: ``designation``, ``jd`` (UTC), ``ra``,
        ``dec`` (deg, ICRS astrometric), ``delta_au``, ``r_au``, ``phase_deg``, ``mag_v``
        (H, G system), ``dra_cosdec``, ``ddec`` (deg/day).
    """
    parts = list(iter_ephemerides(orbits, jd_utc, site, light_time, chunk_size))
    if not parts:
        cols = ["designation", "jd", "ra", "dec", "delta_au", "r_au", "phase_deg", "mag_v",
                "dra_cosdec", "ddec"]
        return pd.DataFrame({c: pd.Series(dtype=object if c == "designation" else float)
                             for c in cols})
    return pd.concat(parts, ignore_index=True)
