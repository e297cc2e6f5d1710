"""Relative photometric refinement of the epochs of one field/CCD/quadrant/filter.

Pure numpy kernel; thread-safe (no state). The model of the calibrated magnitudes of the
reference stars is (Honeycutt 1992, PASP 104, 435, "inhomogeneous ensemble photometry")::

    m_ij = M_i + dz_j + noise,       weights w_ij = 1 / (sigma_ij**2 + floor**2)

with ``M_i`` the mean magnitude of star ``i`` and ``dz_j`` the zero-point error of epoch ``j``,
solved by weighted least squares (alternating exact updates of ``M`` and ``dz`` until the
change is below ``tol``), under the constraint ``median_j dz_j = 0`` so that the absolute
calibration of the epochs (their MAGZP) is kept on average. Reference stars are the bright,
unflagged, frequently detected objects; stars whose reduced chi-square about the model exceeds
``chi2_clip`` times the median (variables) and single points beyond ``point_clip`` sigma
are rejected, and the solution is iterated until the rejected set no longer changes.
Corrected magnitudes are ``m_ij - dz_j``; the refined zero point of epoch ``j`` is
``MAGZP_j - dz_j``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["RefineParams", "RefineResult", "refine_zero_points"]


@dataclass(frozen=True)
class RefineParams:
    """Thresholds of :func:`refine_zero_points`."""

    max_err_mag: float = 0.02          #: brightest stars only: median error below this, mag
    min_epoch_fraction: float = 0.6    #: detected (unflagged) in at least this fraction of epochs
    floor_mag: float = 0.002           #: error floor added in quadrature in the weights, mag
    chi2_clip: float = 3.0             #: reject stars with chi2/dof > chi2_clip x median
    point_clip: float = 5.0            #: reject single points beyond this many sigma
    min_stars: int = 5                 #: fewest reference stars for a correction of an epoch
    max_iter: int = 10                 #: rejection iterations
    tol: float = 1e-6                  #: convergence of the least-squares solution, mag


@dataclass(frozen=True)
class RefineResult:
    """Per-epoch corrections (arrays of shape (n_epochs,)) and QA numbers."""

    dz: np.ndarray            #: zero-point correction, mag (subtract from magnitudes)
    dz_err: np.ndarray        #: its 1-sigma uncertainty, mag
    n_stars: np.ndarray       #: reference stars used in each epoch
    rms: np.ndarray           #: robust RMS of reference-star residuals per epoch, mag
    reference: np.ndarray     #: bool per object: used as a reference star at the end
    n_iter: int               #: rejection iterations done


def _solve(obj, ep, m, w, n_obj, n_ep, tol, max_loops=200):
    dz = np.zeros(n_ep)
    for _ in range(max_loops):
        M = np.bincount(obj, w * (m - dz[ep]), n_obj) / np.maximum(np.bincount(obj, w, n_obj), 1e-300)
        wsum = np.bincount(ep, w, n_ep)
        new = np.bincount(ep, w * (m - M[obj]), n_ep) / np.maximum(wsum, 1e-300)
        new = np.where(wsum > 0, new, 0.0)
        new -= np.median(new[wsum > 0]) if np.any(wsum > 0) else 0.0
        done = np.max(np.abs(new - dz)) < tol
        dz = new
        if done:
            break
    M = np.bincount(obj, w * (m - dz[ep]), n_obj) / np.maximum(np.bincount(obj, w, n_obj), 1e-300)
    return M, dz


def _candidates(obj, ep, m, err, usable, n_obj, n_ep, p: RefineParams) -> np.ndarray:
    good = usable & np.isfinite(m) & np.isfinite(err) & (err > 0)
    n_good = np.bincount(obj[good], minlength=n_obj)
    med_err = np.full(n_obj, np.inf)
    order = np.argsort(obj[good], kind="stable")
    o, e = obj[good][order], err[good][order]
    starts = np.searchsorted(o, np.arange(n_obj))
    ends = np.searchsorted(o, np.arange(n_obj), side="right")
    for i in np.flatnonzero(ends > starts):
        med_err[i] = np.median(e[starts[i]:ends[i]])
    return (n_good >= p.min_epoch_fraction * n_ep) & (med_err < p.max_err_mag)


def refine_zero_points(obj_index, epoch_index, mag, mag_err, usable, n_objects: int,
                       n_epochs: int, params: RefineParams = RefineParams()) -> RefineResult:
    """Solve for per-epoch zero-point corrections from the least variable bright stars.

    Parameters
    ----------
    obj_index, epoch_index : array of int, shape (N,)
        Object row (0..n_objects-1) and epoch (0..n_epochs-1) of each measurement.
    mag, mag_err : array of float, shape (N,)
        Calibrated magnitude and its error, mag.
    usable : array of bool, shape (N,)
        Measurement may be used (unflagged, good image).
    n_objects, n_epochs : int
    params : RefineParams

    Returns
    -------
    RefineResult
        ``dz`` is zero for epochs with fewer than ``params.min_stars`` reference stars.
    """
    obj = np.asarray(obj_index, np.int64)
    ep = np.asarray(epoch_index, np.int64)
    m, err = np.asarray(mag, float), np.asarray(mag_err, float)
    ref = _candidates(obj, ep, m, err, np.asarray(usable, bool), n_objects, n_epochs, params)
    point_ok = np.asarray(usable, bool) & np.isfinite(m) & np.isfinite(err) & (err > 0)
    w_all = 1.0 / (np.where(point_ok, err, 1.0) ** 2 + params.floor_mag**2)
    dz = np.zeros(n_epochs)
    it = 0
    for it in range(1, params.max_iter + 1):
        sel = point_ok & ref[obj]
        M, dz = _solve(obj[sel], ep[sel], m[sel], w_all[sel], n_objects, n_epochs, params.tol)
        resid = m - M[obj] - dz[ep]
        chi = resid * np.sqrt(w_all)
        new_ok = point_ok & (np.abs(chi) < params.point_clip)
        sel_pts = new_ok & ref[obj]
        dof = np.bincount(obj[sel_pts], minlength=n_objects) - 1
        chi2 = np.bincount(obj[sel_pts], chi[sel_pts] ** 2, n_objects) / np.maximum(dof, 1)
        med = np.median(chi2[ref & (dof > 0)]) if np.any(ref & (dof > 0)) else 1.0
        new_ref = ref & (dof > 0) & (chi2 <= params.chi2_clip * max(med, 1e-12))
        changed = np.any(new_ref != ref) or np.any(new_ok != point_ok)
        ref, point_ok = new_ref, new_ok
        if not changed:
            break
    return _finish(obj, ep, m, w_all, point_ok & ref[obj], M, dz, ref, it, n_epochs, params)


def _finish(obj, ep, m, w, sel, M, dz, ref, it, n_epochs, params) -> RefineResult:
    n_stars = np.bincount(ep[sel], minlength=n_epochs)
    wsum = np.bincount(ep[sel], w[sel], n_epochs)
    dz_err = np.where(wsum > 0, 1.0 / np.sqrt(np.maximum(wsum, 1e-300)), np.nan)
    resid = m[sel] - M[obj[sel]] - dz[ep[sel]]
    rms = np.full(n_epochs, np.nan)
    for j in np.flatnonzero(n_stars > 0):
        r = resid[ep[sel] == j]
        rms[j] = 1.4826 * np.median(np.abs(r - np.median(r)))
    few = n_stars < params.min_stars
    dz = np.where(few, 0.0, dz)
    return RefineResult(dz=dz, dz_err=np.where(few, np.nan, dz_err), n_stars=n_stars, rms=rms,
                        reference=ref, n_iter=it)
