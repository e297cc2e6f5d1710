"""Linking intra-night tracklets across nights: a HelioLinC-style search, then orbit QA.

HelioLinC (Holman et al. 2018, AJ 156, 135; Heinze et al. 2022 for the 3-D variant) turns
each tracklet into a heliocentric state by assuming the object's heliocentric distance r
and radial rate rdot; tracklets of one object, propagated to a common epoch, then land at
the same state when the assumption is close to the truth. Here:

1. :func:`tracklet_states`: for one hypothesis (r, rdot), the topocentric distance rho
   solves ``|O + rho u| = r`` (``O`` the observer, ``u`` the tracklet direction), rho-dot
   follows from ``R . dR/dt = r rdot``; the state refers to the emission time
   ``t - rho / c``.
2. The states are propagated (two-body) to the window's epoch; each tracklet's neighbours
   within ``tol`` in the (position, velocity x ``vel_scale_days``) space (``cKDTree``)
   that span ``min_nights`` nights form a candidate track, keeping per night the tracklet
   nearest the seed. Candidates are deduplicated across seeds and hypotheses
   (:func:`link_tracklets`).
3. :func:`fit_tracks` fits a two-body orbit to every candidate (:mod:`zsds.core.orbitfit`,
   started from the hypothesis state), applies the track QA (rms, largest residual, nights),
   resolves tracks that share detections (more detections first, then lower rms), then
   joins the remaining unlinked detections (streaks included) that lie on a track's orbit
   and refits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from zsds.core.ephemeris import C_AU_PER_DAY, GM_SUN, elements_from_state, propagate_two_body
from zsds.core.known_objects import unit_vectors
from zsds.core.orbitfit import Geometry, OrbitFit, fit_orbits, model_positions

__all__ = ["LinkParams", "default_hypotheses", "tracklet_states", "link_tracklets",
           "fit_tracks"]


@dataclass(frozen=True)
class LinkParams:
    """Parameters of the linking and of the track QA.

    Attributes
    ----------
    tol_au : float
        Clustering radius in (position, velocity x ``vel_scale_days``), au, for
        hypotheses with ``r >= 1.6`` au; scaled by ``(r - 0.95) / 0.65`` (at least 0.1) below,
        where the objects are near the Earth and their states are better constrained.
    vel_scale_days : float
        Weight of the velocity in the clustering metric.
    min_nights : int
        Nights a track must span.
    max_rms_arcsec, max_resid_arcsec : float
        Track QA: rms and largest residual distance of the orbit fit.
    attach_arcsec : float
        An unlinked detection within this of a track's prediction is joined to it.
    sigma_arcsec : float
        Astrometric uncertainty assumed by the fit.
    """

    tol_au: float = 0.004
    vel_scale_days: float = 1.0
    min_nights: int = 3
    max_rms_arcsec: float = 0.5
    max_resid_arcsec: float = 1.5
    attach_arcsec: float = 2.0
    sigma_arcsec: float = 0.15


def default_hypotheses() -> np.ndarray:
    """(r au, rdot au/day) grid: main belt 1.7-3.7 au, near-Earth space 0.95-1.7 au."""
    mba = [(r, rd) for r in np.arange(1.7, 3.71, 0.1) for rd in (-0.004, -0.002, 0.0, 0.002,
                                                                  0.004)]
    nea = [(r, rd) for r in np.arange(0.95, 1.66, 0.05)
           for rd in np.arange(-0.015, 0.0151, 0.005)]
    return np.array(mba + nea, dtype=float)


def _sky_basis(ra_deg, dec_deg):
    ra, dec = np.deg2rad(ra_deg), np.deg2rad(dec_deg)
    e_ra = np.stack([-np.sin(ra), np.cos(ra), np.zeros_like(ra)], axis=-1)
    e_dec = np.stack([-np.sin(dec) * np.cos(ra), -np.sin(dec) * np.sin(ra), np.cos(dec)], axis=-1)
    return e_ra, e_dec


def tracklet_states(tracklets: pd.DataFrame, geometry: Geometry, r: float,
                    rdot: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Heliocentric states of tracklets under the hypothesis (r, rdot).

    Parameters
    ----------
    tracklets : pandas.DataFrame
        ``ra``, ``dec`` (deg), ``dra_cosdec``, ``ddec`` (deg/day), at the epochs of
        `geometry` (one per row).
    geometry : Geometry
        Observer state at each tracklet's ``jd``.
    r, rdot : float
        Assumed heliocentric distance (au) and radial rate (au/day).

    Returns
    -------
    R, V : ndarray, shape (N, 3)
        Heliocentric ICRS position (au) and velocity (au/day).
    t_emit : ndarray, shape (N,)
        Emission epoch (MJD TDB).
    ok : ndarray of bool
        The line of sight reaches distance `r` and the state is bound.
    """
    ra, dec = tracklets["ra"].to_numpy(float), tracklets["dec"].to_numpy(float)
    u = unit_vectors(ra, dec)
    e_ra, e_dec = _sky_basis(ra, dec)
    udot = (np.deg2rad(tracklets["dra_cosdec"].to_numpy(float))[:, None] * e_ra
            + np.deg2rad(tracklets["ddec"].to_numpy(float))[:, None] * e_dec)
    O, Ov = geometry.obs_r, geometry.obs_v
    b = np.sum(O * u, axis=1)
    disc = b * b - (np.sum(O * O, axis=1) - r * r)
    rho = -b + np.sqrt(np.maximum(disc, 0.0))
    R = O + rho[:, None] * u
    rudot = np.sum(R * u, axis=1)
    rhodot = (r * rdot - np.sum(R * (Ov + rho[:, None] * udot), axis=1)) / rudot
    V = Ov + rhodot[:, None] * u + rho[:, None] * udot
    energy = 0.5 * np.sum(V * V, axis=1) - GM_SUN / r
    ok = (disc > 0) & (rho > 0) & (energy < 0) & (np.abs(rudot) > 1e-6)
    return R, V, geometry.t_tdb - rho / C_AU_PER_DAY, ok


def _propagate(R, V, t_from, t_to) -> tuple[np.ndarray, np.ndarray]:
    el = elements_from_state(R, V, t_from)
    return propagate_two_body(el, t_to)


def _candidates_for_hypothesis(feat, nights, tol, min_nights):
    """Candidate tracklet sets: per seed, the nearest neighbour on each night."""
    tree = cKDTree(feat)
    out = {}
    for seed, nbrs in enumerate(tree.query_ball_point(feat, tol)):
        nb = np.asarray(nbrs)
        if np.unique(nights[nb]).size < min_nights:
            continue
        d = np.linalg.norm(feat[nb] - feat[seed], axis=1)
        pick = {}
        for k in np.argsort(d):
            pick.setdefault(nights[nb[k]], nb[k])
        key = tuple(sorted(pick.values()))
        spread = float(np.max(np.linalg.norm(feat[list(key)] - feat[seed], axis=1)))
        if key not in out or spread < out[key]:
            out[key] = spread
    return out


def link_tracklets(tracklets: pd.DataFrame, geometry: Geometry, *,
                   hypotheses: np.ndarray | None = None, epoch_mjd: float | None = None,
                   params: LinkParams = LinkParams()) -> pd.DataFrame:
    """Candidate tracks: sets of tracklets from `min_nights` nights with a common state.

    Parameters
    ----------
    tracklets : pandas.DataFrame
        :func:`zsds.core.tracklets.build_tracklets` output (``night``, ``ra``, ``dec``,
        ``dra_cosdec``, ``ddec``, ``jd``), with a default RangeIndex.
    geometry : Geometry
        :func:`zsds.core.orbitfit.observation_geometry` of the tracklets' ``jd``.
    hypotheses : ndarray, shape (H, 2), optional
        (r, rdot) grid; :func:`default_hypotheses` if not given.
    epoch_mjd : float, optional
        Common epoch (MJD TDB); default the middle of the tracklets' time span.
    params : LinkParams

    Returns
    -------
    pandas.DataFrame
        One row per distinct candidate: ``tracklets`` (tuple of row positions), ``r``,
        ``rdot`` (the hypothesis with the tightest cluster), ``spread_au``, ``epoch_mjd``
        and ``state0`` (mean propagated state, 6 floats).
    """
    hyp = default_hypotheses() if hypotheses is None else np.asarray(hypotheses, float)
    nights = tracklets["night"].to_numpy()
    if epoch_mjd is None:
        epoch_mjd = float(np.round(0.5 * (geometry.t_tdb.min() + geometry.t_tdb.max()), 3))
    best: dict[tuple, dict] = {}
    for r, rdot in hyp:
        R, V, t_emit, ok = tracklet_states(tracklets, geometry, r, rdot)
        idx = np.flatnonzero(ok)
        if np.unique(nights[idx]).size < params.min_nights:
            continue
        R0, V0 = _propagate(R[idx], V[idx], t_emit[idx], epoch_mjd)
        feat = np.hstack([R0, V0 * params.vel_scale_days])
        tol = params.tol_au * (1.0 if r >= 1.6 else max((r - 0.95) / 0.65, 0.1))
        for key, spread in _candidates_for_hypothesis(feat, nights[idx], tol,
                                                      params.min_nights).items():
            members = tuple(int(idx[k]) for k in key)
            if members in best and best[members]["spread_au"] <= spread:
                continue
            rows = [np.searchsorted(idx, m) for m in members]
            best[members] = {"tracklets": members, "r": r, "rdot": rdot, "spread_au": spread,
                             "epoch_mjd": epoch_mjd,
                             "state0": np.concatenate([R0[rows].mean(0), V0[rows].mean(0)])}
    return pd.DataFrame(list(best.values()),
                        columns=["tracklets", "r", "rdot", "spread_au", "epoch_mjd", "state0"])


def _passes(fit: OrbitFit, nights: np.ndarray, params: LinkParams) -> bool:
    return (fit.success and fit.rms_arcsec <= params.max_rms_arcsec
            and fit.max_resid_arcsec <= params.max_resid_arcsec
            and np.unique(nights).size >= params.min_nights)


def _fit_many(row_sets, states0, epoch, cands, geo_index, geometry, params,
              chunk: int = 400) -> list[OrbitFit]:
    ra, dec = cands["ra"].to_numpy(), cands["dec"].to_numpy()
    fits = []
    for start in range(0, len(row_sets), chunk):
        part = row_sets[start:start + chunk]
        obs = [(geo_index[rows], ra[rows], dec[rows]) for rows in part]
        fits += fit_orbits(obs, np.asarray(states0[start:start + chunk]), epoch, geometry,
                           sigma_arcsec=params.sigma_arcsec)
    return fits


def _attach(fit: OrbitFit, rows: np.ndarray, free: np.ndarray, cands, geo_index, geometry,
            params) -> np.ndarray:
    """Rows of free detections within `attach_arcsec` of the fitted orbit's prediction."""
    if free.size == 0:
        return rows
    jd = cands["jd"].to_numpy()
    have = set(jd[rows].round(7))
    cand = free[[j not in have for j in jd[free].round(7)]]
    if cand.size == 0:
        return rows
    ra, dec = model_positions(fit.state[None, :], fit.epoch_mjd, geometry.take(geo_index[cand]))
    dra = ((cands["ra"].to_numpy()[cand] - ra[0] + 180.0) % 360.0 - 180.0) * np.cos(
        np.deg2rad(dec[0]))
    sep = np.hypot(dra, cands["dec"].to_numpy()[cand] - dec[0]) * 3600.0
    near = cand[sep <= params.attach_arcsec]
    if near.size == 0:
        return rows
    order = np.argsort(sep[sep <= params.attach_arcsec])      # one detection per exposure
    _, first = np.unique(jd[near[order]].round(7), return_index=True)
    return np.union1d(rows, near[order][first])


def fit_tracks(links: pd.DataFrame, tracklets: pd.DataFrame, candidates: pd.DataFrame,
               geometry: Geometry, geo_index: np.ndarray, *,
               free: np.ndarray | None = None,
               params: LinkParams = LinkParams()) -> list[dict]:
    """Orbit fits, QA and conflict resolution of candidate tracks.

    Parameters
    ----------
    links : pandas.DataFrame
        :func:`link_tracklets` output.
    tracklets : pandas.DataFrame
        The tracklets (``rows``: positional indices into `candidates`, ``night``).
    candidates : pandas.DataFrame
        The candidates (``jd``, ``ra``, ``dec``), positional indexing.
    geometry : Geometry
        :func:`zsds.core.orbitfit.observation_geometry` of a set of epochs containing every
        candidate time; `geo_index` maps each candidate row to its epoch.
    free : ndarray of int, optional
        Candidate rows that may be joined to tracks after the fit (unlinked, non-stationary
        detections and streaks). None: every row not in a track.
    params : LinkParams

    Returns
    -------
    list of dict
        Accepted tracks: ``rows`` (candidate positions), ``fit`` (:class:`OrbitFit`),
        ``tracklets`` (tuple), ``r``, ``rdot`` (hypothesis).
    """
    nights_of = {}
    for tid, rec in tracklets.iterrows():
        for row in rec["rows"]:
            nights_of[int(row)] = rec["night"]
    night_arr = np.full(len(candidates), -1, dtype=np.int64)
    for row, n in nights_of.items():
        night_arr[row] = n
    row_sets = [np.unique(np.concatenate([tracklets["rows"].iloc[k] for k in link]))
                for link in links["tracklets"]]
    epoch = float(links["epoch_mjd"].iloc[0]) if len(links) else 0.0
    fits = _fit_many(row_sets, list(links["state0"]), epoch, candidates, geo_index, geometry,
                     params)
    good = [{"rows": rows, "fit": fit, "tracklets": link.tracklets, "r": link.r,
             "rdot": link.rdot}
            for rows, fit, link in zip(row_sets, fits, links.itertuples(index=False))
            if _passes(fit, night_arr[rows], params)]
    good.sort(key=lambda t: (-t["rows"].size, t["fit"].rms_arcsec))
    used = np.zeros(len(candidates), dtype=bool)
    accepted = []
    for track in good:
        if used[track["rows"]].any():
            continue
        used[track["rows"]] = True
        accepted.append(track)
    pool = np.flatnonzero(~used) if free is None else np.asarray(free)[~used[free]]
    return _join_free(accepted, pool, used, candidates, geo_index, geometry, params)


def _join_free(accepted, pool, used, candidates, geo_index, geometry, params) -> list[dict]:
    """Add free detections lying on each track's orbit, refit, keep refits that pass QA."""
    grown = []
    for track in accepted:
        rows = _attach(track["fit"], track["rows"], pool[~used[pool]], candidates, geo_index,
                       geometry, params)
        if rows.size > track["rows"].size:
            used[rows] = True
            grown.append((track, rows))
    fits = _fit_many([rows for _, rows in grown], [t["fit"].state for t, _ in grown],
                     accepted[0]["fit"].epoch_mjd if accepted else 0.0, candidates, geo_index,
                     geometry, params)
    for (track, rows), fit in zip(grown, fits):
        if fit.success and fit.rms_arcsec <= params.max_rms_arcsec \
                and fit.max_resid_arcsec <= params.max_resid_arcsec:
            track["rows"], track["fit"] = rows, fit
        else:
            used[np.setdiff1d(rows, track["rows"])] = False
    return accepted
