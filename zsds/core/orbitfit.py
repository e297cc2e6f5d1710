"""Least-squares two-body orbits from astrometric positions.

The parameters are the heliocentric ICRS state (position in au, velocity in au/day) at an
epoch (MJD TDB). The model of an observation is :func:`zsds.core.ephemeris.ephemeris_arrays`:
two-body propagation, iterated light time, topocentric from Palomar, exactly the model of
the known-object ephemerides (re-implemented here for many states with their own epochs).
The residuals, in arcsec (``dRA cos(Dec)``, ``dDec``), are minimised by Levenberg-Marquardt
vectorised over tracks (:func:`fit_orbits`): each iteration evaluates the 7 K perturbed
states of a finite-difference Jacobian in one call and solves K 6 x 6 damped normal
equations, so thousands of candidate tracks cost about as much as one. The initial state comes from
the linking hypothesis (:mod:`zsds.core.linking`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from astropy.coordinates import EarthLocation

from zsds.core.ephemeris import (C_AU_PER_DAY, GM_SUN, PALOMAR, elements_from_state,
                                 jd_utc_to_mjd_tdb, propagate_two_body, observer_state, sun_barycentric_velocity)

__all__ = ["Geometry", "OrbitFit", "observation_geometry", "model_positions", "fit_orbit",
           "fit_orbits", "predict_positions"]

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
        Root mean square of the 2N residual components (RA cos Dec and Dec), arcsec; the
        rms of the residual distance is sqrt(2) times this.
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
    r = np.linalg.norm(states[..., :3], axis=-1)
    energy = 0.5 * np.sum(states[..., 3:] ** 2, axis=-1) - GM_SUN / r
    return (energy < 0) & (r > 1e-3)


def _batch_radec(states, epoch_mjd, t_tdb, obs_r, sun_v, n_iter=2):
    """RA, Dec (deg), shape (K, M), of K states each at its own M epochs.

    ``t_tdb`` is (K, M), ``obs_r`` and ``sun_v`` are (K, M, 3); unbound states give NaN.
    """
    ra = np.full(t_tdb.shape, np.nan)
    dec = ra.copy()
    ok = _bound(states)
    if not ok.any():
        return ra, dec
    el = elements_from_state(states[ok, :3], states[ok, 3:], epoch_mjd)
    t, o, sv = t_tdb[ok], obs_r[ok], sun_v[ok]
    tau = np.zeros(t.shape)
    for _ in range(n_iter):
        r, _v = propagate_two_body(el, t - tau)
        tau = np.linalg.norm(r - o - sv * tau[..., None], axis=-1) / C_AU_PER_DAY
    r, _v = propagate_two_body(el, t - tau)
    rho = r - o - sv * tau[..., None]
    ra[ok] = np.remainder(np.rad2deg(np.arctan2(rho[..., 1], rho[..., 0])), 360.0)
    dec[ok] = np.rad2deg(np.arctan2(rho[..., 2], np.hypot(rho[..., 0], rho[..., 1])))
    return ra, dec


def model_positions(states, epoch_mjd: float, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Astrometric RA, Dec (deg), shape (K, T), of K states at the geometry's epochs.

    Unbound states give NaN.
    """
    states = np.atleast_2d(np.asarray(states, dtype=float))
    k = len(states)
    t = np.broadcast_to(geometry.t_tdb, (k, geometry.t_tdb.size))
    o = np.broadcast_to(geometry.obs_r, (k,) + geometry.obs_r.shape)
    sv = np.broadcast_to(geometry.sun_v, (k,) + geometry.sun_v.shape)
    return _batch_radec(states, epoch_mjd, t, o, sv)


def _residuals(ra_obs, dec_obs, ra, dec) -> tuple[np.ndarray, np.ndarray]:
    """O - C in arcsec (RA times cos Dec); NaN model positions become a large penalty."""
    dra = ((ra_obs - ra + 180.0) % 360.0 - 180.0) * np.cos(np.deg2rad(dec_obs)) * 3600.0
    ddec = (dec_obs - dec) * 3600.0
    return (np.where(np.isfinite(dra), dra, _UNBOUND_PENALTY),
            np.where(np.isfinite(ddec), ddec, _UNBOUND_PENALTY))


def _batch_residuals(states, epoch, t, o, sv, ra_obs, dec_obs, mask):
    """Residual vectors (K, 2M) in arcsec, zero where `mask` (K, M) is False."""
    ra, dec = _batch_radec(states, epoch, t, o, sv)
    dra, ddec = _residuals(ra_obs, dec_obs, ra, dec)
    return np.concatenate([dra * mask, ddec * mask], axis=1)


def fit_orbits(observations: list[tuple[np.ndarray, np.ndarray, np.ndarray]], states0,
               epoch_mjd: float, geometry: Geometry, *, max_iter: int = 25,
               sigma_arcsec: float = 0.15) -> list[OrbitFit]:
    """Levenberg-Marquardt fits of many orbits at once (vectorised over the tracks).

    Parameters
    ----------
    observations : list of (index, ra, dec)
        Per track: indices into `geometry` of its epochs, and RA, Dec (deg) observed then.
    states0 : array_like, shape (K, 6)
        Initial heliocentric ICRS states (au, au/day) at `epoch_mjd` (MJD TDB).
    geometry : Geometry
        Epochs and observer states (:func:`observation_geometry`).
    max_iter : int
        Iterations (each: one batch of 7 K trial states, a 6 x 6 solve per track).
    sigma_arcsec : float
        Astrometric uncertainty; only scales the cost.

    Returns
    -------
    list of OrbitFit, one per track.
    """
    k = len(observations)
    if k == 0:
        return []
    m = max(len(o[0]) for o in observations)
    idx = np.zeros((k, m), dtype=np.int64)
    mask = np.zeros((k, m))
    ra_obs, dec_obs = np.zeros((k, m)), np.zeros((k, m))
    for j, (ix, ra, dec) in enumerate(observations):
        n = len(ix)
        idx[j, :n], mask[j, :n], ra_obs[j, :n], dec_obs[j, :n] = ix, 1.0, ra, dec
        idx[j, n:], ra_obs[j, n:], dec_obs[j, n:] = ix[0], ra[0], dec[0]
    t, o, sv = geometry.t_tdb[idx], geometry.obs_r[idx], geometry.sun_v[idx]
    x = np.array(states0, dtype=float).reshape(k, 6)
    lam = np.full(k, 1e-3)

    def resid(states, rep=1):
        return _batch_residuals(states, epoch_mjd, np.repeat(t, rep, 0), np.repeat(o, rep, 0),
                                np.repeat(sv, rep, 0), np.repeat(ra_obs, rep, 0),
                                np.repeat(dec_obs, rep, 0), np.repeat(mask, rep, 0))

    res = resid(x)
    cost = np.sum(res**2, axis=1)
    for _ in range(max_iter):
        trial = (x[:, None, :] + np.diag(_STEP)[None, :, :]).reshape(-1, 6)
        rt = resid(trial, 6).reshape(k, 6, -1)
        J = -(rt - res[:, None, :]) / _STEP[None, :, None]          # d(model)/dx, (K, 6, 2M)
        A = J @ J.transpose(0, 2, 1)
        g = J @ res[:, :, None]
        diag = np.einsum("kii->ki", A)
        step = np.linalg.solve(A + (lam[:, None] * diag)[:, :, None] * np.eye(6)
                               + 1e-30 * np.eye(6), g)[..., 0]
        xn = x + step
        rn = resid(xn)
        cn = np.sum(rn**2, axis=1)
        better = cn < cost
        x[better], res[better], cost[better] = xn[better], rn[better], cn[better]
        lam = np.where(better, lam / 5.0, lam * 10.0)
        if np.all(np.abs(step / np.maximum(_STEP * 1e3, np.abs(x))) < 1e-12):
            break
    return _results(x, res, [len(o[0]) for o in observations], m, epoch_mjd)


def _results(x, res, counts, m, epoch_mjd) -> list[OrbitFit]:
    """OrbitFit objects from the final states and their residual vectors (K, 2M)."""
    ok = _bound(x)
    el = elements_from_state(x[ok, :3], x[ok, 3:], epoch_mjd) if ok.any() else {}
    pos = np.cumsum(ok) - 1
    out = []
    for j, n in enumerate(counts):
        if not ok[j]:
            out.append(OrbitFit(epoch_mjd, x[j].copy(), message="unbound orbit"))
            continue
        dra, ddec = res[j, :n].copy(), res[j, m:m + n].copy()
        rms = float(np.sqrt(np.mean(np.concatenate([dra, ddec]) ** 2)))
        out.append(OrbitFit(epoch_mjd, x[j].copy(), {k: float(v[pos[j]]) for k, v in el.items()},
                            dra, ddec, rms, bool(np.isfinite(rms)), "batch Levenberg-Marquardt"))
    return out


def fit_orbit(jd, ra, dec, state0, epoch_mjd: float, *, geometry: Geometry | None = None,
              sigma_arcsec: float = 0.15, max_iter: int = 25,
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
    max_iter : int
        Iteration limit (see :func:`fit_orbits`).
    site : astropy.coordinates.EarthLocation
        Observing site (if `geometry` is not given).

    Returns
    -------
    OrbitFit
    """
    geo = geometry if geometry is not None else observation_geometry(jd, site)
    obs = [(np.arange(geo.jd.size), np.asarray(ra, float), np.asarray(dec, float))]
    return fit_orbits(obs, np.asarray(state0, float)[None, :], epoch_mjd, geo,
                      max_iter=max_iter, sigma_arcsec=sigma_arcsec)[0]


def predict_positions(fit: OrbitFit, jd_utc, *, geometry: Geometry | None = None,
                      site: EarthLocation = PALOMAR) -> tuple[np.ndarray, np.ndarray]:
    """Predicted astrometric RA, Dec (deg) of a fitted orbit at UTC Julian dates."""
    geo = geometry if geometry is not None else observation_geometry(jd_utc, site)
    ra, dec = model_positions(fit.state[None, :], fit.epoch_mjd, geo)
    return ra[0], dec[0]
