"""Difference-image candidates: detection on S_corr, features of the ZTF ``candidate`` record, filters.

1. :func:`detect_peaks`: connected regions (8-connected) of ``S_corr >= threshold`` (positive,
   science minus reference, ``isdiffpos = 't'``) and of ``S_corr <= -threshold`` (negative,
   ``'f'``); one candidate per region, at its extreme pixel. Ordered by position (row, then
   column), so re-runs give the same order and the same ``candid``.
2. :func:`measure_candidates`: every feature in one vectorised pass over stamp stacks (the
   definitions below, after the 4.02 schema doc strings). For negative candidates all image
   values are multiplied by -1 first (ZTF measures them on the reference-minus-science image),
   so ``magpsf`` etc. describe the flux that disappeared.
3. :func:`filter_candidates`: rules removing obvious false positives; each rule is a bit of
   :data:`FILTER_BITS`.

Feature definitions (``sD`` = sign x ``D_flux``, the difference image in science DN):

==================  =========================================================================
``xpos, ypos``      the maximum of ``S`` climbed to from the ``S_corr`` peak (:func:`score_peaks`)
                    + its sub-pixel offset (log-parabola, 3x3)
``scorr``           ``|S_corr|`` at the ``S_corr`` peak pixel
``magpsf``          ``zp - 2.5 log10(f * apcorr)``; ``f`` the PSF (``P_D``) fit at (xpos, ypos)
``sigmapsf``        ``1.0857 err / f``, ``err = sqrt(S_var) * s_to_flux`` (source, background
                    and astrometric noise, ZOGY16 eqs. 26-31)
``chipsf``          reduced chi-square of the PSF fit (disc of 1.5 FWHM(P_D), at least 3 px)
``magap``           14 px diameter aperture on ``sD``; ``magapbig`` 18 px; ``sigmagap*`` from
                    the variance map
``sky``             median of ``sD`` in the annulus 10-15 px (DN)
``fwhm``            ``2.3548 sqrt(a b)``: Gaussian-core FWHM from windowed second moments
                    (Gaussian window of the P_D width, corrected for the window)
``aimage bimage``   RMS along the major / minor axis from the same moments (px); ``elong = a/b``
``aimagerat ...``   ``aimage / fwhm``, ``bimage / fwhm``; ``seeratio = fwhm(P_D) / fwhm``
``classtar``        zsds definition (no SExtractor network): correlation coefficient of the
                    9x9 stamp of ``sD`` with ``P_D``, clipped to [0, 1]
``nneg nbad``       negative ``sD`` pixels / bad-mask pixels in the 5x5 stamp
``sumrat``          ``sum / sum |.|`` of the 5x5 stamp after a 3x3 median filter
``mindtoedge``      distance to the nearest image edge (px)
``magdiff``         ``magap - magpsf``; ``magfromlim`` = ``diffmaglim - magap``
``brightstar``      largest halo radius / distance over bright reference stars
                    (:func:`bright_star_halo`; > 1: in a bright star's halo)
``dsnrms ssnrms``   ``sD / std(D)`` and ``sS / std(S)`` at the peak (robust std); ``dsdiff``
==================  =========================================================================

Conventions: numpy ``[y, x]``; positions 0-based in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sep
from astropy.table import Table
from scipy import ndimage

from .forcedphot import forced_photometry, shifted_psf

__all__ = ["FILTER_BITS", "DifferenceImages", "detect_peaks", "subpixel_offsets",
           "measure_candidates", "find_candidates", "score_peaks", "distinct_candidates", "match_reference", "filter_candidates", "diffmaglim",
           "robust_std", "bright_star_halo", "FilterRules"]

#: Bits of the ``filter_bits`` column (0: kept).
FILTER_BITS = {"EDGE": 1, "BAD_PIXELS": 2, "SHAPE": 4, "NEGATIVE_PIXELS": 8, "SUMRAT": 16,
               "NO_FLUX": 32, "PSF_FIT": 64, "BRIGHT_STAR": 128}

_K1085 = 2.5 / np.log(10.0)


@dataclass(frozen=True)
class DifferenceImages:
    """What candidate measurement needs from a ZOGY subtraction.

    Attributes
    ----------
    D, S, S_corr : 2-D float arrays
        ZOGY proper difference (unit variance), score and corrected score.
    S_var : float or 2-D array
        Variance of ``S`` (with source and astrometric noise).
    D_flux : 2-D array
        Difference image in science DN (``D F_n / F_D``).
    var_flux : float or 2-D array
        Variance of ``D_flux`` per pixel, DN^2.
    P_D : 2-D array
        PSF of D (odd stamp, unit sum).
    s_to_flux : float
        Factor from S to the PSF-fit flux on ``D_flux``.
    bad : 2-D bool array
        Prior-tagged bad pixels of either image (for ``nbad``, left out of fits).
    zp : float
        Science zero point (mag of 1 DN).
    apcorr : float
        Total / PSF-fit flux of the science PSF model.
    """

    D: np.ndarray
    S: np.ndarray
    S_corr: np.ndarray
    S_var: np.ndarray | float
    D_flux: np.ndarray
    var_flux: np.ndarray | float
    P_D: np.ndarray
    s_to_flux: float
    bad: np.ndarray
    zp: float
    apcorr: float = 1.0


def robust_std(a, step: int = 3) -> float:
    """1.4826 x MAD of the finite values of a subsample of ``a``."""
    v = np.asarray(a)[::step, ::step]
    v = v[np.isfinite(v)]
    return float(1.4826 * np.median(np.abs(v - np.median(v)))) if v.size else float("nan")


def _peaks(image, threshold, exclude, *, separation: int = 4, min_area: int = 20):
    """Peak pixels of the regions of ``image >= threshold`` (8-connected): the maximum of each
    region, and in regions of at least ``min_area`` pixels every further local maximum
    (``2 separation + 1`` square window) at least ``separation`` px from a brighter peak of
    the region -- two sources a few PSF widths apart (a transient near another one, or near
    a variable star) share one region above the threshold but are separate candidates."""
    above = image >= threshold
    if exclude is not None:
        above &= ~exclude
    lab, n = ndimage.label(above, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.empty(0, int), np.empty(0, int)
    # the maximum of each region (first in raster order among equal values), from the sparse
    # labelled pixels only: one sort instead of scipy's per-label scan of the whole image
    idx = np.flatnonzero(lab)
    order = np.lexsort((idx, -image.ravel()[idx], lab.ravel()[idx]))
    labels = lab.ravel()[idx[order]]
    first = np.r_[True, labels[1:] != labels[:-1]]
    peaks = [idx[order][first]]
    area = np.bincount(labels, minlength=n + 1)
    boxes = ndimage.find_objects(lab)
    for label in np.flatnonzero(area >= min_area):
        peaks.append(_secondary_peaks(image, lab, label, boxes[label - 1], separation))
    flat = np.concatenate(peaks)
    return np.unravel_index(flat, image.shape)


def _secondary_peaks(image, lab, label, box, separation):
    """Flat indices of the local maxima of one region other than its maximum, each at least
    ``separation`` px from every brighter peak kept."""
    ys, xs = box
    sub = np.where(lab[ys, xs] == label, image[ys, xs], -np.inf)
    local = (sub == ndimage.maximum_filter(sub, size=2 * separation + 1, mode="constant",
                                           cval=-np.inf)) & np.isfinite(sub)
    py, px = np.nonzero(local)
    order = np.argsort(-sub[py, px], kind="stable")
    kept: list[tuple[int, int]] = []
    for y, x in zip(py[order], px[order]):
        if all((y - ky) ** 2 + (x - kx) ** 2 >= separation ** 2 for ky, kx in kept):
            kept.append((y, x))
    rest = kept[1:]  # the first is the region's maximum, already counted
    return np.array([(y + ys.start) * image.shape[1] + x + xs.start for y, x in rest], dtype=np.int64)


def detect_peaks(S_corr, *, threshold: float = 5.0, exclude=None):
    """Peaks of positive and negative regions of ``|S_corr| >= threshold``.

    Parameters
    ----------
    S_corr : 2-D array
    threshold : float
    exclude : 2-D bool array, optional
        Pixels where nothing may be detected (outside the reference footprint, borders).

    Returns
    -------
    y, x : int arrays
        Peak pixels, sorted by (y, x).
    sign : int array
        +1 (``isdiffpos`` 't') or -1 ('f').
    """
    s = np.where(np.isfinite(S_corr), S_corr, 0).astype(np.float32)
    yp, xp = _peaks(s, threshold, exclude)
    yn, xn = _peaks(-s, threshold, exclude)
    y, x = np.concatenate([yp, yn]), np.concatenate([xp, xn])
    sign = np.concatenate([np.ones(len(yp), int), -np.ones(len(yn), int)])
    order = np.lexsort((x, y))
    return y[order], x[order], sign[order]


def _stamps(a, y, x, half, fill=0.0):
    """(n, 2 half + 1, 2 half + 1) stamps of ``a`` around integer (y, x); ``fill`` outside."""
    k = np.arange(-half, half + 1)
    gy, gx = y[:, None, None] + k[None, :, None], x[:, None, None] + k[None, None, :]
    inside = (gy >= 0) & (gy < a.shape[0]) & (gx >= 0) & (gx < a.shape[1])
    out = np.asarray(a)[np.clip(gy, 0, a.shape[0] - 1), np.clip(gx, 0, a.shape[1] - 1)]
    return np.where(inside, out, fill)


def score_peaks(S, y, x, sign, half: int = 2, steps: int = 2):
    """Integer extremum of ``sign x S`` climbed to from each S_corr peak (y, x).

    S_corr divides S by a noise that includes the astrometric term of nearby bright stars, so
    beside a star its peak is pushed away from the star; the matched-filter score S peaks at
    the source. Each step moves to the extremum within ``half`` px (at most
    ``steps x half`` px in all).
    """
    for _ in range(steps):
        st = _stamps(S, y, x, half, fill=np.nan) * sign[:, None, None]
        st = np.where(np.isfinite(st), st, -np.inf)  # outside the image or NaN: never the peak
        k = np.argmax(st.reshape(len(y), -1), axis=1)
        dy, dx = np.divmod(k, 2 * half + 1)
        y, x = y + dy - half, x + dx - half
    return y, x


def distinct_candidates(t: Table) -> np.ndarray:
    """True for one of each set of candidates measured at the same position and sign (two
    S_corr peaks beside a bright star can climb to one peak of S): the highest ``scorr``."""
    order = np.argsort(-np.asarray(t["scorr"], float), kind="stable")
    key = np.rec.fromarrays([np.asarray(t[c])[order] for c in ("isdiffpos", "xpos", "ypos")])
    keep = np.zeros(len(t), bool)
    keep[order[np.unique(key, return_index=True)[1]]] = True
    return keep


def find_candidates(im: DifferenceImages, *, exclude=None, diffmaglim_value: float,
                    threshold: float = 5.0) -> Table:
    """:func:`detect_peaks` on S_corr, :func:`measure_candidates`, one row per source
    (:func:`distinct_candidates`), ordered by the S_corr peak position."""
    y, x, sign = detect_peaks(im.S_corr, threshold=threshold, exclude=exclude)
    t = measure_candidates(im, y, x, sign, diffmaglim_value=diffmaglim_value)
    return t[distinct_candidates(t)] if len(t) else t


def subpixel_offsets(S, y, x, sign):
    """Sub-pixel offset (dx, dy) of the extremum of ``S`` around integer peaks (log-parabola).

    Falls back to a plain parabola where the 3-point profile is not positive; offsets are
    clipped to +-0.5 px.
    """
    st = _stamps(S, y, x, 1).astype(np.float64) * sign[:, None, None]

    def vertex(m, c, p):
        lg = (m > 0) & (c > 0) & (p > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            lm, lc, lp = (np.log(np.where(lg, v, 1.0)) for v in (m, c, p))
            num = np.where(lg, lm - lp, m - p)
            den = np.where(lg, lm - 2 * lc + lp, m - 2 * c + p)
            d = np.where(den < 0, 0.5 * num / den, 0.0)
        return np.clip(np.nan_to_num(d), -0.5, 0.5)

    dx = vertex(st[:, 1, 0], st[:, 1, 1], st[:, 1, 2])
    dy = vertex(st[:, 0, 1], st[:, 1, 1], st[:, 2, 1])
    return dx, dy


def diffmaglim(S_var, s_to_flux: float, zp: float, apcorr: float = 1.0, nsigma: float = 5.0) -> float:
    """Expected ``nsigma`` limiting magnitude of the difference image (global noise estimate)."""
    v = float(np.nanmedian(S_var)) if np.ndim(S_var) else float(S_var)
    return float(zp - 2.5 * np.log10(nsigma * np.sqrt(v) * s_to_flux * apcorr))


def _mag(flux, err, zp):
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = flux > 0
        mag = np.where(ok, zp - 2.5 * np.log10(np.where(ok, flux, 1.0)), np.nan)
        sig = np.where(ok, _K1085 * err / np.where(ok, flux, 1.0), np.nan)
    return mag, sig


def _psf_fwhm(P_D) -> float:
    p = np.asarray(P_D, np.float64)
    return float(2 * np.sqrt(np.sum(p > p.max() / 2) / np.pi))


def _photometry(im: DifferenceImages, x, y, sign, fwhm_pd):
    """PSF fit and apertures on sign x D_flux."""
    radius = max(3.0, 1.5 * fwhm_pd)
    fp = forced_photometry(im.D_flux, im.P_D, im.var_flux, np.c_[x, y], mask=im.bad, radius=radius)
    yi, xi = np.rint(y).astype(int), np.rint(x).astype(int)
    var_s = im.S_var if np.ndim(im.S_var) == 0 else np.asarray(im.S_var)[yi, xi]
    err = np.sqrt(var_s) * im.s_to_flux * im.apcorr
    flux = sign * fp.flux * im.apcorr
    data = np.ascontiguousarray(im.D_flux, np.float32)
    var = im.var_flux if np.ndim(im.var_flux) == 0 else np.ascontiguousarray(im.var_flux, np.float32)
    ap = {}
    for name, r in (("ap", 7.0), ("apbig", 9.0)):
        f, fe, _ = sep.sum_circle(data, x, y, r, var=var, mask=im.bad)
        ap[name] = (sign * f, fe)
    return flux, err, fp, ap


def _moments(stamp, sigma_w):
    """Windowed second moments of positive stamps -> (a, b) in px (window-corrected)."""
    h = stamp.shape[1] // 2
    k = np.arange(-h, h + 1, dtype=float)
    yy, xx = np.meshgrid(k, k, indexing="ij")
    w = np.exp(-0.5 * (xx**2 + yy**2) / sigma_w**2)[None] * np.clip(stamp, 0, None)
    tot = w.sum((1, 2))
    tot = np.where(tot > 0, tot, np.nan)
    mx, my = (w * xx).sum((1, 2)) / tot, (w * yy).sum((1, 2)) / tot
    dx, dy = xx[None] - mx[:, None, None], yy[None] - my[:, None, None]
    x2, y2, xy = ((w * dx**2).sum((1, 2)) / tot, (w * dy**2).sum((1, 2)) / tot,
                  (w * dx * dy).sum((1, 2)) / tot)
    t, d = (x2 + y2) / 2, np.sqrt(((x2 - y2) / 2) ** 2 + xy**2)
    lam1, lam2 = t + d, np.clip(t - d, 1e-6, None)
    s2 = sigma_w**2
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = lambda m: np.where(m < 0.95 * s2, m * s2 / (s2 - m), 19.0 * s2)
        return np.sqrt(corr(lam1)), np.sqrt(corr(lam2))


def _ncc(stamp, model):
    a = stamp - stamp.mean((1, 2), keepdims=True)
    b = model - model.mean((1, 2), keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (a * b).sum((1, 2)) / np.sqrt((a**2).sum((1, 2)) * (b**2).sum((1, 2)))
    return np.clip(np.nan_to_num(r), 0.0, 1.0)


def _box_features(im: DifferenceImages, y, x, sign):
    st7 = _stamps(im.D_flux, y, x, 3) * sign[:, None, None]
    st5 = st7[:, 1:-1, 1:-1]
    med = ndimage.median_filter(st7, size=(1, 3, 3), mode="nearest")[:, 1:-1, 1:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        sumrat = med.sum((1, 2)) / np.abs(med).sum((1, 2))
    bad5 = _stamps(im.bad.astype(np.int8), y, x, 2, fill=1)
    return {"nneg": (st5 < 0).sum((1, 2)).astype(np.int32),
            "nbad": bad5.sum((1, 2)).astype(np.int32),
            "sumrat": np.nan_to_num(sumrat, nan=0.0)}


def _shape_features(im: DifferenceImages, y, x, sign, dx, dy, fwhm_pd):
    st = _stamps(im.D_flux, y, x, 4) * sign[:, None, None]
    sigma_w = max(fwhm_pd / 2.3548, 0.7)
    a, b = _moments(st, sigma_w)
    fwhm = 2.3548 * np.sqrt(a * b)
    pd = np.asarray(im.P_D, np.float64)
    c, h = pd.shape[0] // 2, 4
    model = shifted_psf(pd, dx, dy)[:, c - h:c + h + 1, c - h:c + h + 1] if pd.shape[0] > 2 * h \
        else shifted_psf(pd, dx, dy)
    ncc = _ncc(st, model) if model.shape[1:] == st.shape[1:] else np.zeros(len(y))
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"fwhm": fwhm, "aimage": a, "bimage": b, "elong": a / b,
                "aimagerat": a / fwhm, "bimagerat": b / fwhm, "seeratio": fwhm_pd / fwhm,
                "classtar": ncc}


def _sky(im: DifferenceImages, y, x, sign):
    st = _stamps(im.D_flux, y, x, 15, fill=np.nan) * sign[:, None, None]
    k = np.arange(-15, 16)
    r = np.hypot(k[:, None], k[None, :])
    ring = st[:, (r >= 10) & (r <= 15)]
    with np.errstate(all="ignore"):
        return np.nan_to_num(np.nanmedian(ring, axis=1), nan=0.0)


def measure_candidates(im: DifferenceImages, y, x, sign, *, diffmaglim_value: float) -> Table:
    """Features of candidates at peak pixels (y, x) with signs ``sign`` (see module doc).

    Returns
    -------
    astropy.table.Table
        One row per candidate, in input order; ``isdiffpos`` is 't' or 'f'; ``flux``,
        ``flux_err`` (total flux in science DN, sign-corrected) are kept besides the ZTF fields.
    """
    y, x, sign = (np.asarray(a, int) for a in (y, x, sign))
    fwhm_pd = _psf_fwhm(im.P_D)
    scorr = np.abs(np.asarray(im.S_corr)[y, x]).astype(float)
    y, x = score_peaks(im.S, y, x, sign)
    dx, dy = subpixel_offsets(im.S, y, x, sign)
    xp, yp = x + dx, y + dy
    flux, err, fp, ap = _photometry(im, xp, yp, sign, fwhm_pd)
    magpsf, sigmapsf = _mag(flux, err, im.zp)
    magap, sigmagap = _mag(*ap["ap"], im.zp)
    magapbig, sigmagapbig = _mag(*ap["apbig"], im.zp)
    sd, ss = robust_std(im.D), robust_std(im.S)
    t = Table()
    t["xpos"], t["ypos"] = xp, yp
    t["isdiffpos"] = np.where(sign > 0, "t", "f")
    t["scorr"] = scorr
    t["flux"], t["flux_err"] = flux, err
    t["magpsf"], t["sigmapsf"], t["chipsf"] = magpsf, sigmapsf, fp.chi2
    t["magap"], t["sigmagap"] = magap, sigmagap
    t["magapbig"], t["sigmagapbig"] = magapbig, sigmagapbig
    t["sky"] = _sky(im, y, x, sign)
    for k, v in {**_shape_features(im, y, x, sign, dx, dy, fwhm_pd),
                 **_box_features(im, y, x, sign)}.items():
        t[k] = v
    ny, nx = im.D.shape
    t["mindtoedge"] = np.minimum.reduce([xp, yp, nx - 1 - xp, ny - 1 - yp])
    t["magdiff"] = magap - magpsf
    t["magfromlim"] = diffmaglim_value - magap
    t["dsnrms"] = sign * np.asarray(im.D)[y, x] / sd
    t["ssnrms"] = sign * np.asarray(im.S)[y, x] / ss
    t["dsdiff"] = t["dsnrms"] - t["ssnrms"]
    t["psfflags"] = fp.flags
    return t


def match_reference(x, y, ref_x, ref_y, *, max_dist: float):
    """Nearest reference source within ``max_dist`` pixels: (index or -1, distance or NaN).

    All positions on the same (science) pixel grid.
    """
    from scipy.spatial import cKDTree

    x, y = np.atleast_1d(x).astype(float), np.atleast_1d(y).astype(float)
    if len(ref_x) == 0 or len(x) == 0:
        return np.full(len(x), -1), np.full(len(x), np.nan)
    dist, idx = cKDTree(np.c_[ref_x, ref_y]).query(np.c_[x, y], distance_upper_bound=max_dist)
    found = np.isfinite(dist)
    return np.where(found, idx, -1), np.where(found, dist, np.nan)


@dataclass(frozen=True)
class FilterRules:
    """Thresholds of :func:`filter_candidates` (relative to the FWHM of P_D where noted)."""

    edge: float = 10.0
    max_nbad: int = 0
    max_elong: float = 2.0
    min_fwhm_ratio: float = 0.5
    max_fwhm_ratio: float = 2.5
    max_nneg: int = 13
    min_sumrat: float = 0.6
    max_chipsf: float = 20.0
    bright_star_mag: float = 14.0
    bright_star_radius: float = 9.0
    bright_star_radius_mag: float = 13.5
    bright_star_core: float = 2.0


def bright_star_halo(x, y, ref_x, ref_y, ref_mag, ref_masked=None,
                     rules: FilterRules | None = None) -> np.ndarray:
    """Largest ``R(m) / d`` over the reference stars brighter than ``bright_star_mag`` (0 if
    none is near): above 1, a candidate lies in the halo of a bright star, whose wings,
    saturated core and bleed trails leave residuals a PSF-matched subtraction cannot remove.

    The halo radius grows with the star's flux ``F`` as ``F^(1/3)`` (a PSF wing falling as
    ``r^-3`` reaches a given residual level at that radius): ``R(m) = bright_star_radius *
    10^((bright_star_radius_mag - m) / 7.5)`` pixels, 9 px at 13.5 mag, 12 px at 12.5 mag.
    A candidate within ``bright_star_core`` pixels of a bright star whose reference
    measurement had no masked pixel (unsaturated) is the star itself varying: not vetoed.

    Parameters
    ----------
    x, y : arrays
        Candidate positions, pixels.
    ref_x, ref_y, ref_mag : arrays
        Reference-image sources on the same pixel grid and their magnitudes (AB).
    ref_masked : bool array, optional
        Sources measured with masked (saturated) pixels; default: all of them.
    rules : FilterRules, optional
    """
    from scipy.spatial import cKDTree

    r = rules or FilterRules()
    x, y = np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float))
    out = np.zeros(len(x))
    mag = np.asarray(ref_mag, float)
    bright = np.isfinite(mag) & (mag < r.bright_star_mag)
    if not bright.any() or len(x) == 0:
        return out
    bx, by, bm = np.asarray(ref_x, float)[bright], np.asarray(ref_y, float)[bright], mag[bright]
    masked = np.ones(len(mag), bool) if ref_masked is None else np.asarray(ref_masked, bool)
    core = np.where(masked[bright], 0.0, r.bright_star_core)
    radius = r.bright_star_radius * 10 ** ((r.bright_star_radius_mag - bm) / 7.5)
    for i, near in enumerate(cKDTree(np.c_[x, y]).query_ball_point(np.c_[bx, by], radius)):
        if near:
            d = np.hypot(x[near] - bx[i], y[near] - by[i])
            ratio = np.where(d > core[i], radius[i] / np.maximum(d, 1e-3), 0.0)
            out[near] = np.maximum(out[near], ratio)
    return out


def filter_candidates(cands: Table, fwhm_pd: float, rules: FilterRules | None = None) -> np.ndarray:
    """Bits of :data:`FILTER_BITS` for each candidate (0: kept).

    Parameters
    ----------
    cands : Table
        Output of :func:`measure_candidates`; with a ``brightstar`` column
        (:func:`bright_star_halo`) the bright-star halo rule applies.
    fwhm_pd : float
        FWHM of the difference image's PSF, pixels.
    rules : FilterRules, optional
    """
    r = rules or FilterRules()
    c = {k: np.asarray(cands[k], float) for k in ("mindtoedge", "nbad", "elong", "fwhm", "nneg",
                                                 "sumrat", "magpsf", "chipsf")}
    halo = np.asarray(cands["brightstar"], float) if "brightstar" in cands.colnames else \
        np.zeros(len(cands))
    ratio = c["fwhm"] / fwhm_pd
    bits = np.zeros(len(cands), np.int32)
    bits |= np.where(c["mindtoedge"] < r.edge, FILTER_BITS["EDGE"], 0)
    bits |= np.where(c["nbad"] > r.max_nbad, FILTER_BITS["BAD_PIXELS"], 0)
    shape_bad = ~((c["elong"] <= r.max_elong) & (ratio >= r.min_fwhm_ratio) & (ratio <= r.max_fwhm_ratio))
    bits |= np.where(shape_bad, FILTER_BITS["SHAPE"], 0)
    bits |= np.where(c["nneg"] > r.max_nneg, FILTER_BITS["NEGATIVE_PIXELS"], 0)
    bits |= np.where(~(c["sumrat"] >= r.min_sumrat), FILTER_BITS["SUMRAT"], 0)
    bits |= np.where(~np.isfinite(c["magpsf"]), FILTER_BITS["NO_FLUX"], 0)
    bits |= np.where(~(c["chipsf"] <= r.max_chipsf), FILTER_BITS["PSF_FIT"], 0)
    bits |= np.where(halo > 1.0, FILTER_BITS["BRIGHT_STAR"], 0)
    return bits
