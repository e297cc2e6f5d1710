"""Streaks (trails of fast-moving objects) in difference images: detection and measurement.

A near-Earth asteroid moving faster than ~8 deg/day trails over more than 10 pixels in a
30 s exposure. The point-source detection on ``S_corr`` (:mod:`zsds.core.candidates`) cuts
such a trail into pieces or rejects it for its shape; this module finds the trail as one
object and measures its endpoints, length, angle and flux. Pure functions, no I/O.

Steps of :func:`detect_streaks` (both signs: science-minus-reference trails are positive,
a trail in the reference shows as a negative one):

1. **Segmentation** on the PSF-matched S/N image (ZOGY's ``S_corr``): hysteresis
   thresholding (regions of ``S/N >= grow_threshold`` holding a pixel ``>= threshold``),
   8-connected, excluded pixels (bad pixels, masked bright stars, borders, outside the
   reference) removed first.
2. **Selection by shape**, vectorised over all regions (label-weighted ``bincount``): the
   S/N-weighted second moments give the eigenvalues ``l1 >= l2``. A segment of length ``L``
   blurred by any round profile has ``l1 - l2 = L**2 / 12``, so the moment length
   ``sqrt(12 (l1 - l2))`` estimates the trail length whatever the seeing; regions with a
   moment length of at least ``0.7 min_length_px`` go on. Pieces of one trail (cut by a
   masked cosmic ray or a noise dip) are found by :func:`collinear_groups` and tried as one
   region first, each piece alone when the whole fails.
3. **Geometry fit** of every selected region on the flux image ``D_flux`` (least squares,
   weights ``1 / var``, pixels within ``margin_px`` of the region; pixels within
   ``bad_reach_px`` of a bad pixel are left out here and in the photometry, as the
   subtraction rings around masked pixels):
   the trailed-Gaussian model (a segment convolved with a round Gaussian, Veres et al.
   2012, PASP 124, 1197)::

       m(u, v) = F / L  g_s(v)  [Phi((u + L/2) / s) - Phi((u - L/2) / s)]

   with ``u``, ``v`` the coordinates along and across the trail from its centre, ``g_s`` a
   unit Gaussian of width ``s`` and ``Phi`` the normal CDF; free parameters the centre,
   ``L``, the angle, ``F`` and ``s``. The endpoints are the centre -/+ ``L/2`` along the
   angle.
4. **Photometry**: with the geometry fixed, the segment is convolved with the PSF of the
   difference image ``P_D`` and its amplitude fitted linearly (optimal weighting), giving
   ``flux`` (times ``apcorr``: the PSF-fit-to-total correction, as for point candidates),
   ``flux_err`` and the total ``snr``; ``snr_per_px = snr / sqrt(L)`` is the S/N of one
   pixel of trail length (the optimal S/N of a trail grows as ``sqrt(L)``).
5. **Acceptance**: fit converged, ``L >= min_length_px``, ``snr >= min_snr``, width within
   ``width_range`` times the PSF's (cosmic rays are sharper, blends broader) and reduced
   chi-square <= ``max_chi2`` (ignored above ``chi2_snr`` S/N, where PSF-model mismatch
   dominates), uniform flux along the trail (the amplitudes of 3-12 consecutive sections
   of ~1 FWHM, fitted jointly: none lower than ``min_section_ratio`` times the median of
   the brighter half and more than 4 sigma below it; two point sources side by side, or a
   line fitted across two crossing trails, fail this), endpoints
   inside the image, and at most ``max_bad_fraction`` of the trail's
   length within ``bad_reach_px`` of a bad pixel (the subtraction leaves ringing around
   masked pixels, e.g. a cosmic ray on a star, which can line up into a short "trail").

Conventions: numpy ``[y, x]`` arrays; positions 0-based (the centre of the first pixel is
0, 0); ``theta_deg`` is the direction of the trail in the pixel frame, counter-clockwise
from +x, in [0, 180); endpoint 1 is ``centre - L/2 (cos theta, sin theta)`` (so
``y1 <= y2``); the direction of motion is unknown from one trail.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from scipy import ndimage
from scipy.optimize import least_squares
from scipy.signal import fftconvolve
from scipy.special import ndtr

from . import filters

__all__ = ["StreakParams", "STREAK_COLUMNS", "detect_streaks", "segment_regions",
           "region_moments", "trailed_gaussian", "line_model", "trail_photometry",
           "section_amplitudes", "collinear_groups", "psf_sigma"]

#: Columns of the table returned by :func:`detect_streaks`.
STREAK_COLUMNS = ("x1", "y1", "x2", "y2", "xc", "yc", "length_px", "length_err_px",
                  "theta_deg", "theta_err_deg", "width_px", "flux", "flux_err", "snr",
                  "snr_per_px", "peak_snr", "npix", "chi2", "isdiffpos")


@dataclass(frozen=True)
class StreakParams:
    """Parameters of :func:`detect_streaks`.

    Attributes
    ----------
    threshold : float
        A region must hold a pixel with ``|S/N| >= threshold``.
    grow_threshold : float
        Regions are grown down to ``|S/N| >= grow_threshold`` (hysteresis).
    min_length_px : float
        Shortest accepted trail (fitted length), pixels.
    min_snr : float
        Lowest accepted total S/N of the trail photometry.
    width_range : (float, float)
        Accepted fitted Gaussian width, in units of the PSF's Gaussian sigma.
    max_chi2 : float
        Largest accepted reduced chi-square of the geometry fit ...
    chi2_snr : float
        ... checked only below this total S/N.
    margin_px : int
        Pixels around a region used by the fits.
    max_gap_px : float
        Regions in line with each other and at most this far apart are tried as one trail
        first (:func:`collinear_groups`).
    min_section_ratio : float
        Lowest accepted section amplitude relative to the median of the brighter half of
        the sections (uniformity).
    bad_reach_px : int
        Pixels closer than this to a bad pixel count as "near a bad pixel".
    max_bad_fraction : float
        Largest accepted fraction of the trail's length near bad pixels.
    max_regions : int
        At most this many elongated regions are fitted (the longest first); a guard against
        a pathological image (e.g. a failed subtraction).
    """

    threshold: float = 5.0
    grow_threshold: float = 2.5
    min_length_px: float = 10.0
    min_snr: float = 10.0
    width_range: tuple[float, float] = (0.6, 2.0)
    max_chi2: float = 4.0
    chi2_snr: float = 60.0
    margin_px: int = 5
    max_gap_px: float = 10.0
    min_section_ratio: float = 0.35
    bad_reach_px: int = 2
    max_bad_fraction: float = 0.5
    max_regions: int = 500


def psf_sigma(psf) -> float:
    """Gaussian sigma (pixels) of a PSF stamp, from its noise-equivalent area.

    A round Gaussian of sigma ``s`` has ``1 / sum(P**2) = 4 pi s**2``.
    """
    p = np.asarray(psf, np.float64)
    p = p / p.sum()
    return float(np.sqrt(1.0 / (4.0 * np.pi * np.sum(p * p))))


# ---------------------------------------------------------------------------------------
# segmentation and moments
# ---------------------------------------------------------------------------------------
def segment_regions(snr, threshold: float, grow_threshold: float, exclude=None):
    """Hysteresis regions of ``snr >= grow_threshold`` holding a pixel ``>= threshold``.

    Parameters
    ----------
    snr : 2-D array
        S/N image (one sign: pass ``-S_corr`` for negative trails). Non-finite pixels never
        belong to a region.
    threshold, grow_threshold : float
    exclude : 2-D bool array, optional
        Pixels that belong to no region.

    Returns
    -------
    labels : 2-D int array
        Region labels (0: background); not consecutive.
    ids : 1-D int array
        The labels of the kept regions, increasing.
    """
    s = np.asarray(snr)
    low = np.isfinite(s) & (s >= grow_threshold)
    if exclude is not None:
        low &= ~np.asarray(exclude, bool)
    labels, n = ndimage.label(low, structure=np.ones((3, 3), bool))
    if n == 0:
        return labels, np.empty(0, int)
    flat = labels.ravel()
    pix = np.flatnonzero(flat)
    seeds = flat[pix[s.ravel()[pix] >= threshold]]
    return labels, np.unique(seeds).astype(int)


def region_moments(weights, labels, ids) -> dict:
    """Weighted centroid and second moments of labelled regions (vectorised).

    Parameters
    ----------
    weights : 2-D array
        Weights (the S/N inside the regions; negative values count as 0).
    labels, ids
        :func:`segment_regions` output.

    Returns
    -------
    dict of 1-D arrays (one entry per id)
        ``npix``, ``xc``, ``yc`` (0-based), ``l1 >= l2`` (eigenvalues of the covariance,
        px^2), ``theta_deg`` (major-axis direction, CCW from +x, [0, 180)),
        ``moment_length`` (``sqrt(12 (l1 - l2))``, px), ``peak`` (largest weight) and the
        bounding box ``ymin, ymax, xmin, xmax`` (0-based, inclusive).
    """
    ids = np.asarray(ids, int)
    nx = labels.shape[1]
    flat = labels.ravel()
    pix = np.flatnonzero(flat)
    lab = flat[pix]
    keep = np.isin(lab, ids)
    pix, lab = pix[keep], lab[keep]
    w = np.clip(np.nan_to_num(np.asarray(weights).ravel()[pix].astype(np.float64)), 0, None)
    yy, xx = np.divmod(pix, nx)
    yy, xx = yy.astype(np.float64), xx.astype(np.float64)
    size = int(ids.max()) + 1 if ids.size else 1

    def total(v):
        return np.bincount(lab, weights=v, minlength=size)[ids]

    one = np.bincount(lab, minlength=size)[ids]
    sw = np.maximum(total(w), 1e-30)
    xc, yc = total(w * xx) / sw, total(w * yy) / sw
    mxx = total(w * xx * xx) / sw - xc**2
    myy = total(w * yy * yy) / sw - yc**2
    mxy = total(w * xx * yy) / sw - xc * yc
    half_tr, det_term = 0.5 * (mxx + myy), np.sqrt(0.25 * (mxx - myy) ** 2 + mxy**2)
    l1, l2 = half_tr + det_term, np.maximum(half_tr - det_term, 0.0)
    theta = np.degrees(0.5 * np.arctan2(2 * mxy, mxx - myy)) % 180.0
    peak = np.zeros(size)
    np.maximum.at(peak, lab, w)
    lo, hi = np.full((2, size), np.inf), np.full((2, size), -np.inf)
    for axis, v in enumerate((yy, xx)):
        np.minimum.at(lo[axis], lab, v)
        np.maximum.at(hi[axis], lab, v)
    return {"npix": one.astype(int), "xc": xc, "yc": yc, "l1": l1, "l2": l2,
            "theta_deg": theta, "moment_length": np.sqrt(12.0 * np.clip(l1 - l2, 0, None)),
            "peak": peak[ids], "ymin": lo[0][ids], "ymax": hi[0][ids], "xmin": lo[1][ids],
            "xmax": hi[1][ids]}


# ---------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------
def trailed_gaussian(x, y, xc, yc, length, theta_deg, flux, sigma):
    """The trailed-Gaussian model (module doc) at pixel centres ``x``, ``y``.

    A segment of total flux ``flux``, centre ``(xc, yc)``, length ``length`` (px) and
    direction ``theta_deg`` convolved with a round Gaussian of sigma ``sigma`` (px); the
    value is the surface brightness per pixel (no pixel integration).
    """
    t = np.radians(theta_deg)
    dx, dy = x - xc, y - yc
    u = dx * np.cos(t) + dy * np.sin(t)
    v = -dx * np.sin(t) + dy * np.cos(t)
    across = np.exp(-0.5 * (v / sigma) ** 2) / (np.sqrt(2 * np.pi) * sigma)
    along = ndtr((u + 0.5 * length) / sigma) - ndtr((u - 0.5 * length) / sigma)
    return flux / length * across * along


def _trailed_gaussian_jac(x, y, xc, yc, length, theta_deg, flux, sigma) -> np.ndarray:
    """Derivatives (n, 6) of :func:`trailed_gaussian` w.r.t. its six parameters."""
    t = np.radians(theta_deg)
    c, sn = np.cos(t), np.sin(t)
    dx, dy = x - xc, y - yc
    u, v = dx * c + dy * sn, -dx * sn + dy * c
    a, b = (u + 0.5 * length) / sigma, (u - 0.5 * length) / sigma
    pa, pb = np.exp(-0.5 * a * a), np.exp(-0.5 * b * b)
    pa, pb = pa / np.sqrt(2 * np.pi), pb / np.sqrt(2 * np.pi)
    A = np.exp(-0.5 * (v / sigma) ** 2) / (np.sqrt(2 * np.pi) * sigma)
    B = ndtr(a) - ndtr(b)
    k = flux / length
    m = k * A * B
    dm_du = k * A * (pa - pb) / sigma
    dm_dv = -m * v / sigma**2
    d_xc = -c * dm_du + sn * dm_dv
    d_yc = -sn * dm_du - c * dm_dv
    d_len = -m / length + k * A * (pa + pb) / (2 * sigma)
    d_theta = (dm_du * v - dm_dv * u) * (np.pi / 180.0)
    d_flux = A * B / length
    d_sigma = k * (A * (v * v / sigma**3 - 1.0 / sigma) * B - A * (pa * a - pb * b) / sigma)
    return np.stack([d_xc, d_yc, d_len, d_theta, d_flux, d_sigma], axis=-1)


def line_model(shape, x1, y1, x2, y2, psf, *, step: float = 0.25) -> np.ndarray:
    """Unit-flux trail from (x1, y1) to (x2, y2) convolved with ``psf``, on a ``shape`` grid.

    The segment is sampled every ``step`` px and the samples spread bilinearly on the
    grid, then convolved (FFT) with the PSF stamp (odd size, centred; normalised here).
    Flux falling outside the grid is lost, so the model of a trail crossing the edge sums
    to less than 1.

    Parameters
    ----------
    shape : (ny, nx)
    x1, y1, x2, y2 : float
        Endpoints, 0-based pixel coordinates of the grid.
    psf : 2-D array
    step : float
        Sampling of the segment, px.
    """
    ny, nx = shape
    n = max(int(np.ceil(np.hypot(x2 - x1, y2 - y1) / step)) + 1, 2)
    t = (np.arange(n) + 0.5) / n
    xs, ys = x1 + t * (x2 - x1), y1 + t * (y2 - y1)
    ix, iy = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - ix, ys - iy
    grid = np.zeros((ny + 2, nx + 2))
    for ox, oy, wgt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                        (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        gx, gy = ix + ox + 1, iy + oy + 1
        ok = (gx >= 0) & (gx < nx + 2) & (gy >= 0) & (gy < ny + 2)
        np.add.at(grid, (gy[ok], gx[ok]), wgt[ok] / n)
    p = np.asarray(psf, np.float64)
    return fftconvolve(grid, p / p.sum(), mode="same")[1:-1, 1:-1]


def _stamp_data(image, variance, bad, x1, y1, x2, y2, psf, half_width):
    """Slices, data, variance and usable-pixel mask of the stamp around a segment."""
    ny, nx = image.shape
    reach = int(np.ceil(half_width * 2.3548 * psf_sigma(psf))) + 1
    xa = int(max(np.floor(min(x1, x2)) - reach, 0))
    xb = int(min(np.ceil(max(x1, x2)) + reach + 1, nx))
    ya = int(max(np.floor(min(y1, y2)) - reach, 0))
    yb = int(min(np.ceil(max(y1, y2)) + reach + 1, ny))
    if xb <= xa or yb <= ya:
        return None
    sl = (slice(ya, yb), slice(xa, xb))
    d = np.asarray(np.asarray(image)[sl], np.float64)  # cut, then converted
    var = np.asarray(np.broadcast_to(np.asarray(variance), image.shape)[sl], np.float64)
    use = np.isfinite(d) & np.isfinite(var) & (var > 0)
    if bad is not None:
        use &= ~np.asarray(bad, bool)[sl]
    return xa, ya, d, var, use


def section_amplitudes(image, variance, bad, x1, y1, x2, y2, psf, n: int, *,
                       half_width: float = 3.0):
    """Fluxes of `n` equal consecutive sections of a trail, fitted jointly (optimal weights).

    Returns
    -------
    amp, err : ndarray, shape (n,)
        Flux of each section and its error (NaN when the fit is singular).
    """
    nan = np.full(n, np.nan)
    got = _stamp_data(image, variance, bad, x1, y1, x2, y2, psf, half_width)
    if got is None:
        return nan, nan
    xa, ya, d, var, use = got
    ends = np.linspace(0.0, 1.0, n + 1)
    models = [line_model(d.shape, x1 + a * (x2 - x1) - xa, y1 + a * (y2 - y1) - ya,
                         x1 + b * (x2 - x1) - xa, y1 + b * (y2 - y1) - ya, psf)
              for a, b in zip(ends[:-1], ends[1:])]
    support = np.sum(models, axis=0)
    use = use & (support > 1e-3 * support.max())
    if use.sum() <= n:
        return nan, nan
    w = 1.0 / var[use]
    M = np.stack([m[use] for m in models], axis=1)
    normal = M.T @ (M * w[:, None])
    try:
        cov = np.linalg.inv(normal)
    except np.linalg.LinAlgError:
        return nan, nan
    amp = cov @ (M.T @ (w * d[use]))
    return amp, np.sqrt(np.clip(np.diag(cov), 0, None))


def trail_photometry(image, variance, bad, x1, y1, x2, y2, psf, *, half_width: float = 3.0):
    """Optimal (PSF-weighted) flux of a trail of known endpoints.

    Parameters
    ----------
    image : 2-D array
        Background-free image (e.g. ``D_flux``), the trail's sign positive.
    variance : float or 2-D array
        Per-pixel variance of `image`.
    bad : 2-D bool array or None
        Pixels left out.
    x1, y1, x2, y2 : float
        Endpoints, 0-based.
    psf : 2-D array
        PSF of `image`.
    half_width : float
        The fit uses the pixels within ``half_width`` PSF-FWHM of the segment.

    Returns
    -------
    flux, flux_err : float
        Amplitude of :func:`line_model` (the trail's total flux) and its error; NaN when
        no usable pixel.
    chi2 : float
        Reduced chi-square of the fit.
    """
    got = _stamp_data(image, variance, bad, x1, y1, x2, y2, psf, half_width)
    if got is None:
        return np.nan, np.nan, np.nan
    xa, ya, d, var, use = got
    m = line_model(d.shape, x1 - xa, y1 - ya, x2 - xa, y2 - ya, psf)
    use = use & (m > 1e-3 * m.max())
    if not use.any():
        return np.nan, np.nan, np.nan
    w = 1.0 / var[use]
    mm, dd = m[use], d[use]
    a = float(np.sum(w * mm * mm))
    if a <= 0:
        return np.nan, np.nan, np.nan
    flux = float(np.sum(w * mm * dd) / a)
    chi2 = float(np.sum(w * (dd - flux * mm) ** 2) / max(use.sum() - 1, 1))
    return flux, float(1.0 / np.sqrt(a)), chi2


# ---------------------------------------------------------------------------------------
# geometry fit
# ---------------------------------------------------------------------------------------
def _fit_region(image, variance, bad, region, box, mom, sigma0, params):
    """Trailed-Gaussian fit of one region (bool mask `region` of the slices `box`).

    Returns (params, errors, chi2, npix, success) or None.
    """
    ny, nx = image.shape
    m = params.margin_px
    ys, xs = box
    ya, yb = max(ys.start - m, 0), min(ys.stop + m, ny)
    xa, xb = max(xs.start - m, 0), min(xs.stop + m, nx)
    grown = np.zeros((yb - ya, xb - xa), bool)
    grown[ys.start - ya:ys.stop - ya, xs.start - xa:xs.stop - xa] = region
    use = filters.binary_dilation(grown, m)
    d = np.asarray(image[ya:yb, xa:xb], np.float64)
    var = np.asarray(np.broadcast_to(np.asarray(variance), image.shape)[ya:yb, xa:xb], np.float64)
    use &= np.isfinite(d) & np.isfinite(var) & (var > 0)
    if bad is not None:
        use &= ~np.asarray(bad[ya:yb, xa:xb], bool)
    if use.sum() < 12:
        return None
    gy, gx = np.nonzero(use)
    dd, sd = d[gy, gx], 1.0 / np.sqrt(var[gy, gx])
    gx, gy = gx + xa, gy + ya
    L0 = max(float(mom["moment_length"]), 2.0)
    f0 = max(float(np.sum(np.clip(dd, 0, None))), 1e-3)
    p0 = np.array([mom["xc"], mom["yc"], L0, mom["theta_deg"], f0, sigma0])
    lo = [xa - 1.0, ya - 1.0, 0.5, -np.inf, 0.0, 0.4 * sigma0]
    hi = [xb + 1.0, yb + 1.0, 3.0 * L0 + 20.0, np.inf, np.inf, 3.0 * sigma0]
    p0 = np.clip(p0, np.array(lo) + 1e-6, np.array(hi) - 1e-6)

    def resid(p):
        return (trailed_gaussian(gx, gy, *p) - dd) * sd

    def jac(p):
        return _trailed_gaussian_jac(gx, gy, *p) * sd[:, None]

    try:
        res = least_squares(resid, p0, jac=jac, bounds=(lo, hi), x_scale="jac", max_nfev=100,
                            ftol=1e-6, xtol=1e-6)
    except (ValueError, np.linalg.LinAlgError):
        return None
    dof = max(gx.size - p0.size, 1)
    chi2 = float(np.sum(res.fun**2) / dof)
    try:
        cov = np.linalg.inv(res.jac.T @ res.jac) * max(chi2, 1.0)
        err = np.sqrt(np.clip(np.diag(cov), 0, None))
    except np.linalg.LinAlgError:
        err = np.full(p0.size, np.nan)
    return res.x, err, chi2, int(gx.size), bool(res.success)


def collinear_groups(mom: dict, *, max_gap_px: float = 10.0,
                     angle_tol_deg: float = 12.0, min_piece_px: float = 3.0) -> list[np.ndarray]:
    """Groups of regions that are pieces of one trail (cut by masked pixels or noise).

    Two regions join when the line through their centroids runs along the major axis of
    each (within `angle_tol_deg`; ignored for pieces shorter than 6 px, whose axis is
    noise), and the gap between their extents along it (moment lengths) is at most
    `max_gap_px`. Pieces shorter than `min_piece_px` (moment length) take no part.

    Parameters
    ----------
    mom : dict
        :func:`region_moments` output.
    max_gap_px, angle_tol_deg, min_piece_px : float
        See above.

    Returns
    -------
    list of int arrays
        Positions (into the moment arrays) of the members of every group of two or more.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    L = np.asarray(mom["moment_length"], float)
    pool = np.flatnonzero(L >= min_piece_px)
    if pool.size < 2:
        return []
    xy = np.column_stack([mom["xc"][pool], mom["yc"][pool]])
    reach = float(L[pool].max()) + max_gap_px
    pairs = cKDTree(xy).query_pairs(reach, output_type="ndarray")
    if len(pairs) == 0:
        return []
    i, j = pool[pairs[:, 0]], pool[pairs[:, 1]]
    dx, dy = mom["xc"][j] - mom["xc"][i], mom["yc"][j] - mom["yc"][i]
    dist = np.hypot(dx, dy)
    link = np.degrees(np.arctan2(dy, dx)) % 180.0

    def off(theta):
        return np.abs((theta - link + 90.0) % 180.0 - 90.0)

    along = ((off(mom["theta_deg"][i]) <= angle_tol_deg) | (L[i] < 6.0)) & \
        ((off(mom["theta_deg"][j]) <= angle_tol_deg) | (L[j] < 6.0))
    gap = dist - 0.5 * (L[i] + L[j])
    keep = along & (gap <= max_gap_px)
    if not keep.any():
        return []
    n = L.size
    graph = coo_matrix((np.ones(keep.sum()), (i[keep], j[keep])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    groups = []
    for c in np.unique(comp[np.r_[i[keep], j[keep]]]):
        members = np.flatnonzero(comp == c)
        if members.size > 1:
            groups.append(members)
    return groups


def _empty_table() -> Table:
    t = Table({c: np.zeros(0, float) for c in STREAK_COLUMNS})
    t["npix"] = np.zeros(0, int)
    t["isdiffpos"] = np.zeros(0, "U1")
    return t


def _near_bad_fraction(near_bad, x1, y1, x2, y2) -> float:
    """Fraction of the segment's 1-px samples that fall on `near_bad` pixels."""
    if near_bad is None:
        return 0.0
    n = int(np.hypot(x2 - x1, y2 - y1)) + 2
    t = np.linspace(0.0, 1.0, n)
    ny, nx = near_bad.shape
    xs = np.clip(np.rint(x1 + t * (x2 - x1)).astype(int), 0, nx - 1)
    ys = np.clip(np.rint(y1 + t * (y2 - y1)).astype(int), 0, ny - 1)
    return float(near_bad[ys, xs].mean())


def _uniform(image, variance, bad, x1, y1, x2, y2, psf, length, sigma0, params) -> bool:
    """No section of the trail is much fainter than the others (module doc, step 5)."""
    n = int(np.clip(np.round(length / (2.3548 * sigma0)), 3, 12))
    amp, err = section_amplitudes(image, variance, bad, x1, y1, x2, y2, psf, n)
    ok = np.isfinite(amp) & np.isfinite(err)
    if ok.sum() < 2:
        return True
    a = amp[ok]
    ref = float(np.median(np.sort(a)[a.size // 2:]))    # the brighter half: a trail's level
    low = (a < params.min_section_ratio * ref) & (ref - a > 4.0 * err[ok])
    return not low.any()


def _measure(signed, variance, fit_bad, near_bad, region, box, mom, psf, sign, sigma0, apcorr,
             params) -> dict | None:
    """Fit, photometry and acceptance of one region (module doc, steps 3-5)."""
    ny, nx = signed.shape
    fit = _fit_region(signed, variance, fit_bad, region, box, mom, sigma0, params)
    if fit is None:
        return None
    p, err, chi2, npix, ok = fit
    xc, yc, L, theta, _, width = p
    theta = theta % 180.0
    c, s = np.cos(np.radians(theta)), np.sin(np.radians(theta))
    x1, y1, x2, y2 = xc - 0.5 * L * c, yc - 0.5 * L * s, xc + 0.5 * L * c, yc + 0.5 * L * s
    if not (ok and L >= params.min_length_px
            and params.width_range[0] * sigma0 <= width <= params.width_range[1] * sigma0
            and min(x1, x2) >= -0.5 and max(x1, x2) <= nx - 0.5
            and min(y1, y2) >= -0.5 and max(y1, y2) <= ny - 0.5
            and _near_bad_fraction(near_bad, x1, y1, x2, y2) <= params.max_bad_fraction):
        return None
    flux, flux_err, _ = trail_photometry(signed, variance, fit_bad, x1, y1, x2, y2, psf)
    snr_tot = flux / flux_err if np.isfinite(flux_err) and flux_err > 0 else np.nan
    if not (np.isfinite(snr_tot) and snr_tot >= params.min_snr
            and (chi2 <= params.max_chi2 or snr_tot >= params.chi2_snr)
            and _uniform(signed, variance, fit_bad, x1, y1, x2, y2, psf, L, sigma0, params)):
        return None
    return {"x1": x1, "y1": y1, "x2": x2, "y2": y2, "xc": xc, "yc": yc,
            "length_px": L, "length_err_px": err[2], "theta_deg": theta,
            "theta_err_deg": err[3], "width_px": width, "flux": flux * apcorr,
            "flux_err": flux_err * apcorr, "snr": snr_tot, "snr_per_px": snr_tot / np.sqrt(L),
            "peak_snr": float(mom["peak"]), "npix": npix, "chi2": chi2,
            "isdiffpos": "t" if sign > 0 else "f"}


def _group_moments(snr_signed, labels, ids, groups) -> list[dict]:
    """Moments of each group of regions taken as one region."""
    if not groups:
        return []
    relabel = np.zeros(int(labels.max()) + 1, np.int64)
    for g, members in enumerate(groups, start=1):
        relabel[ids[members]] = g
    merged = relabel[labels]
    gm = region_moments(snr_signed, merged, np.arange(1, len(groups) + 1))
    return [{c: v[g] for c, v in gm.items()} for g in range(len(groups))]


def _one_sign(snr, image, variance, bad, near_bad, exclude, psf, sign, sigma0, apcorr, params):
    snr_signed = snr if sign > 0 else -snr
    labels, ids = segment_regions(snr_signed, params.threshold, params.grow_threshold, exclude)
    if ids.size == 0:
        return []
    mom = region_moments(snr_signed, labels, ids)
    groups = collinear_groups(mom, max_gap_px=params.max_gap_px)
    min_len = 0.7 * params.min_length_px
    tries = []          # (moment length, member positions, moments)
    grouped = set()
    for members, gmom in zip(groups, _group_moments(snr_signed, labels, ids, groups)):
        grouped.update(members.tolist())
        if gmom["moment_length"] >= min_len:
            tries.append((gmom["moment_length"], members, gmom))
    for k in np.flatnonzero(mom["moment_length"] >= min_len):
        if k not in grouped:
            one = {c: v[k] for c, v in mom.items()}
            tries.append((mom["moment_length"][k], np.array([k]), one))
    tries.sort(key=lambda t: -t[0])
    if not tries:
        return []
    signed = image if sign > 0 else -image
    fit_bad = near_bad if near_bad is not None else bad
    rows = []

    def measure(members, m):
        box = (slice(int(mom["ymin"][members].min()), int(mom["ymax"][members].max()) + 1),
               slice(int(mom["xmin"][members].min()), int(mom["xmax"][members].max()) + 1))
        region = np.isin(labels[box], ids[members])
        return _measure(signed, variance, fit_bad, near_bad, region, box, m, psf, sign, sigma0,
                        apcorr, params)

    for _, members, m in tries[:params.max_regions]:
        row = measure(members, m)
        if row is None and members.size > 1:      # the pieces on their own
            for k in members[mom["moment_length"][members] >= min_len]:
                one = measure(np.array([k]), {c: v[k] for c, v in mom.items()})
                if one is not None:
                    rows.append(one)
        elif row is not None:
            rows.append(row)
    return rows


def _dedupe(rows: list[dict], sigma0: float) -> list[dict]:
    """Drop a trail whose centre lies on a longer one of the same sign (fragments)."""
    keep = []
    for r in sorted(rows, key=lambda r: -r["length_px"]):
        on = False
        for k in keep:
            if k["isdiffpos"] != r["isdiffpos"]:
                continue
            t = np.radians(k["theta_deg"])
            u = (r["xc"] - k["xc"]) * np.cos(t) + (r["yc"] - k["yc"]) * np.sin(t)
            v = -(r["xc"] - k["xc"]) * np.sin(t) + (r["yc"] - k["yc"]) * np.cos(t)
            if abs(v) < 2.0 * sigma0 + 1.0 and abs(u) < 0.5 * k["length_px"]:
                on = True
                break
        if not on:
            keep.append(r)
    return keep


def detect_streaks(snr, image, variance, psf, *, bad=None, exclude=None, apcorr: float = 1.0,
                   params: StreakParams = StreakParams()) -> Table:
    """Streaks of both signs in a difference image (module doc).

    Parameters
    ----------
    snr : 2-D array
        PSF-matched S/N image of the difference (ZOGY ``S_corr``): unit noise, positive
        for new flux.
    image : 2-D array
        The difference image in flux units (ZOGY ``D_flux``).
    variance : float or 2-D array
        Per-pixel variance of `image`.
    psf : 2-D array
        PSF of `image` (odd stamp, centred).
    bad : 2-D bool array, optional
        Pixels left out of the fits (masked in either input image).
    exclude : 2-D bool array, optional
        Pixels where nothing is detected (``bad`` is added to it).
    apcorr : float
        Multiplies the PSF-fit flux (total-flux correction of `psf`).
    params : StreakParams

    Returns
    -------
    astropy.table.Table
        One row per streak, :data:`STREAK_COLUMNS`: endpoints ``x1, y1, x2, y2`` and centre
        ``xc, yc`` (0-based px), ``length_px`` and its error, ``theta_deg`` (pixel frame,
        CCW from +x, [0, 180)) and its error, ``width_px`` (fitted Gaussian sigma),
        ``flux``, ``flux_err`` (units of `image`, times `apcorr`; positive for both
        signs), ``snr``, ``snr_per_px``, ``peak_snr`` (largest ``|S/N|`` in the region),
        ``npix`` (pixels fitted), ``chi2`` (reduced, geometry fit), ``isdiffpos``
        ('t' positive, 'f' negative). Sorted by (y1, x1).
    """
    snr = np.asarray(snr)  # float32 stays: thresholds compare the same values
    if snr.shape != np.shape(image):
        raise ValueError(f"snr {snr.shape} and image {np.shape(image)} differ in shape")
    excl = np.zeros(snr.shape, bool) if exclude is None else np.asarray(exclude, bool).copy()
    if bad is not None:
        excl |= np.asarray(bad, bool)
    sigma0 = psf_sigma(psf)
    image = np.asarray(image)         # stamps are cut from the images, then made float64
    variance = np.asarray(variance)
    near_bad = None
    if bad is not None and np.any(bad):
        near_bad = filters.binary_dilation(bad, params.bad_reach_px) \
            if params.bad_reach_px > 0 else np.asarray(bad, bool)
    rows = []
    for sign in (1, -1):
        rows += _one_sign(snr, image, variance, bad, near_bad, excl, psf, sign, sigma0, apcorr,
                          params)
    rows = _dedupe(rows, sigma0)
    if not rows:
        return _empty_table()
    t = Table(rows=[[r[c] for c in STREAK_COLUMNS] for r in rows], names=STREAK_COLUMNS)
    t.sort(["y1", "x1"])
    return t
