"""Least-squares two-body orbits from astrometric positions.

The parameters are the heliocentric ICRS state (position in au, velocity in au/day) at an
epoch (MJD TDB). The model of an observation is :func:`zsds.core.ephemeris.ephemeris_arrays`:
two-body propagation, iterated light time, topocentric from Palomar, exactly the model of
the known-object ephemerides. The residuals, in arcsec (``dRA cos(Dec)``, ``dDec``), are
minimised by :func:`scipy.optimize.least_squares` with a finite-difference Jacobian that
evaluates the seven perturbed states in one vectorised call. The initial state comes from
the linking hypothesis (:mod:`zsds.core.linking`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from astropy.coordinates import EarthLocation
from scipy.optimize import least_squares

from zsds.core.ephemeris import (GM_SUN, PALOMAR, elements_from_state, ephemeris_arrays,
                                 jd_utc_to_mjd_tdb, observer_state, sun_barycentric_velocity)

__all__ = ["Geometry", "OrbitFit", "observation_geometry", "model_positions", "fit_orbit",
           "predict_positions"]

_STEP = np.array([1e-7, 1e-7, 1e-7, 1e-9, 1e-9, 1e-9])   # finite-difference steps, au, au/day
_UNBOUND_PENALTY = 1e6                                    # arcsec, for unbound trial states


@dataclass(frozen=True)
class Geometry:
    """Observation epochs and the observer: what the model needs besides the orbit."""

    jd: np.ndarray          # (T,) UTC
    t_tdb: np.ndarray       # (T,) MJD TDB
    obs_r: np.ndarray       # (T, 3) au, heliocentric ICRS
    obs_v: np.ndarray       # (T, 3) au/day
    sun_v: np.ndarray       # (T, 3) au/day, barycentric

    def take(self, index) -> "Geometry":
        """The geometry of a subset of the epochs."""
        index = np.asarray(index)
        return Geometry(self.jd[index], self.t_tdb[index], self.obs_r[index],
                        self.obs_v[index], self.sun_v[index])


def observation_geometry(jd_utc, site: EarthLocation = PALOMAR) -> Geometry:
    """Observer state and TDB epochs of observation times (UTC Julian dates)."""
    jd = np.atleast_1d(np.asarray(jd_utc, dtype=float))
    obs_r, obs_v = observer_state(jd, site)
    return Geometry(jd, jd_utc_to_mjd_tdb(jd), obs_r, obs_v, sun_barycentric_velocity(jd))


@dataclass
class OrbitFit:
    """Result of :func:`fit_orbit`.

    Attributes
    ----------
    epoch_mjd : float
        Epoch of the state (MJD TDB).
    state : ndarray, shape (6,)
        Heliocentric ICRS position (au) and velocity (au/day) at the epoch.
    elements : dict
        Osculating heliocentric ecliptic J2000 elements (``zsds.core.ephemeris`` columns).
    resid_ra, resid_dec : ndarray
        Residuals observed - computed, arcsec (RA residual times cos Dec).
    rms_arcsec : float
        Root mean square of the 2N residual components times sqrt(2): the rms of the
        residual distance.
    success : bool
        The optimiser converged to a bound orbit.
    message : str
        The optimiser's message.
    """

    epoch_mjd: float
    state: np.ndarray
    elements: dict = field(default_factory=dict)
    resid_ra: np.ndarray = field(default_factory=lambda: np.empty(0))
    resid_dec: np.ndarray = field(default_factory=lambda: np.empty(0))
    rms_arcsec: float = np.inf
    success: bool = False
    message: str = ""

    @property
    def max_resid_arcsec(self) -> float:
        """Largest residual distance, arcsec."""
        if self.resid_ra.size == 0:
            return np.inf
        return float(np.max(np.hypot(self.resid_ra, self.resid_dec)))


def _bound(states: np.ndarray) -> np.ndarray:
    r = np.linalg.norm(states[:, :3], axis=1)
    energy = 0.5 * np.sum(states[:, 3:] ** 2, axis=1) - GM_SUN / r
    return (energy < 0) & (r > 1e-3)


def model_positions(states, epoch_mjd: float, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Astrometric RA, Dec (deg), shape (K, T), of K states at the geometry's epochs.

    Unbound states give NaN.
    """
    states = np.atleast_2d(np.asarray(states, dtype=float))
    ra = np.full((len(states), geometry.jd.size), np.nan)
    dec = ra.copy()
    ok = _bound(states)
    if ok.any():
        el = elements_from_state(states[ok, :3], states[ok, 3:], epoch_mjd)
        eph = ephemeris_arrays(el, geometry.t_tdb, geometry.obs_r, geometry.obs_v,
                               geometry.sun_v)
        ra[ok], dec[ok] = eph["ra"], eph["dec"]
    return ra, dec


def _residuals(ra_obs, dec_obs, ra, dec) -> tuple[np.ndarray, np.ndarray]:
    """O - C in arcsec (RA times cos Dec); NaN model positions become a large penalty."""
    dra = ((ra_obs - ra + 180.0) % 360.0 - 180.0) * np.cos(np.deg2rad(dec_obs)) * 3600.0
    ddec = (dec_obs - dec) * 3600.0
    return (np.where(np.isfinite(dra), dra, _UNBOUND_PENALTY),
            np.where(np.isfinite(ddec), ddec, _UNBOUND_PENALTY))


def fit_orbit(jd, ra, dec, state0, epoch_mjd: float, *, geometry: Geometry | None = None,
              sigma_arcsec: float = 0.15, max_nfev: int = 60,
              site: EarthLocation = PALOMAR) -> OrbitFit:
    """Least-squares heliocentric state at `epoch_mjd` from RA/Dec observations.

    Parameters
    ----------
    jd, ra, dec : array_like, shape (N,)
        Observation times (UTC, mid-exposure) and astrometric positions (deg); N >= 3.
    state0 : array_like, shape (6,)
        Initial heliocentric ICRS state (au, au/day) at `epoch_mjd`.
    epoch_mjd : float
        Epoch of the fitted state (MJD TDB).
    geometry : Geometry, optional
        Precomputed :func:`observation_geometry` of `jd` (saves the ephemeris calls).
    sigma_arcsec : float
        Astrometric uncertainty per coordinate; only scales the cost.
    max_nfev : int
        Iteration limit of the optimiser.
    site : astropy.coordinates.EarthLocation
        Observing site (if `geometry` is not given).

    Returns
    -------
    OrbitFit
    """
    ra_obs, dec_obs = np.asarray(ra, float), np.asarray(dec, float)
    geo = geometry if geometry is not None else observation_geometry(jd, site)

    def fun(x):
        mra, mdec = model_positions(x[None, :], epoch_mjd, geo)
        dra, ddec = _residuals(ra_obs, dec_obs, mra[0], mdec[0])
        return np.concatenate([dra, ddec]) / sigma_arcsec

    def jac(x):
        trial = x[None, :] + np.vstack([np.zeros(6), np.diag(_STEP)])
        mra, mdec = model_positions(trial, epoch_mjd, geo)
        dra, ddec = _residuals(ra_obs[None, :], dec_obs[None, :], mra, mdec)
        res = np.concatenate([dra, ddec], axis=1) / sigma_arcsec
        return ((res[1:] - res[0]) / _STEP[:, None]).T

    x0 = np.asarray(state0, dtype=float)
    try:
        sol = least_squares(fun, x0, jac=jac, method="lm", max_nfev=max_nfev, xtol=1e-12,
                            ftol=1e-10)
        x, message = sol.x, sol.message
    except (ValueError, FloatingPointError) as exc:      # degenerate trial state
        x, message = x0, f"optimiser failed: {exc}"
    return _result(x, epoch_mjd, geo, ra_obs, dec_obs, message)


def _result(x, epoch_mjd, geo, ra_obs, dec_obs, message) -> OrbitFit:
    if not _bound(x[None, :])[0]:
        return OrbitFit(epoch_mjd, x, message=f"unbound orbit ({message})")
    mra, mdec = model_positions(x[None, :], epoch_mjd, geo)
    dra, ddec = _residuals(ra_obs, dec_obs, mra[0], mdec[0])
    el = {k: float(v[0]) for k, v in elements_from_state(x[:3], x[3:], epoch_mjd).items()}
    rms = float(np.sqrt(np.mean(dra**2 + ddec**2)))
    return OrbitFit(epoch_mjd, x, el, dra, ddec, rms, bool(np.isfinite(rms)), str(message))


def predict_positions(fit: OrbitFit, jd_utc, *, geometry: Geometry | None = None,
                      site: EarthLocation = PALOMAR) -> tuple[np.ndarray, np.ndarray]:
    """Predicted astrometric RA, Dec (deg) of a fitted orbit at UTC Julian dates."""
    geo = geometry if geometry is not None else observation_geometry(jd_utc, site)
    ra, dec = model_positions(fit.state[None, :], fit.epoch_mjd, geo)
    return ra[0], dec[0]
