"""Photometric calibration kernels: zero point and colour term, aperture corrections, depth.

Conventions (``reference-catalog.md``, ZTF ESUP eq. 2):

* Magnitudes are AB, on the PS1 system of the reference catalogue.
* Instrumental magnitudes are ``m_inst = -2.5 log10(flux)`` with ``flux`` in **DN** of the
  bias-subtracted, linearised, flat-fielded image of the exposure (no exposure-time scaling).
* The calibration is ``m_ref = MAGZP + m_inst + CLRCOEFF * colour`` with ``colour`` the PS1
  ``g - r`` (filters zg, zr) or ``r - i`` (zi), named by ``PCOLOR``. ``MAGZP`` is the zero point of
  a source of colour 0.
* Pixel positions are 0-based ``(x, y)`` = (column, row) of the numpy ``[y, x]`` image.

All functions are pure functions of arrays; none does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from ..errors import AlgorithmError

__all__ = [
    "ZeroPointFit",
    "fit_zero_point",
    "select_calibrators",
    "isolation_mask",
    "ApertureCorrection",
    "aperture_correction",
    "curve_of_growth",
    "gaussian_nea",
    "psf_nea",
    "limiting_magnitude",
    "completeness_curve",
    "completeness_magnitude",
]

_MAD_TO_SIGMA = 1.4826


# --------------------------------------------------------------------------- zero point


@dataclass(frozen=True)
class ZeroPointFit:
    """A photometric zero point and colour term (``m_ref = zp + m_inst + clrcoeff * colour``).

    Attributes
    ----------
    zp : float
        Zero point for colour 0, AB mag for 1 DN (``MAGZP``).
    zp_unc : float
        1-sigma uncertainty of ``zp``, mag (``MAGZPUNC``).
    zp_rms : float
        RMS of the residuals of the calibrators used, mag (``MAGZPRMS``).
    clrcoeff : float
        Colour coefficient, mag per mag of colour (``CLRCOEFF``).
    clrcoeff_unc : float
        1-sigma uncertainty of ``clrcoeff`` (``CLRCOUNC``); 0 when the colour term was fixed.
    colour_median : float
        Median colour of the calibrators used, mag (``CLRMED``).
    n_used : int
        Calibrators kept after clipping (``NMATCHES``).
    used : ndarray of bool
        Per-input-star mask of the calibrators kept.
    chi2_reduced : float
        Reduced chi-square of the final fit with the given errors.
    pcolor : str
        The colour used, ``'g-r'`` or ``'r-i'`` (``PCOLOR``).
    """

    zp: float
    zp_unc: float
    zp_rms: float
    clrcoeff: float
    clrcoeff_unc: float
    colour_median: float
    n_used: int
    used: np.ndarray
    chi2_reduced: float
    pcolor: str = "g-r"

    def residuals(self, m_inst, m_ref, colour) -> np.ndarray:
        """``m_ref - (zp + m_inst + clrcoeff * colour)`` for any stars, mag."""
        return np.asarray(m_ref) - self.calibrate(m_inst, colour)

    def calibrate(self, m_inst, colour) -> np.ndarray:
        """Calibrated PS1-system magnitudes ``zp + m_inst + clrcoeff * colour``."""
        return self.zp + np.asarray(m_inst, float) + self.clrcoeff * np.asarray(colour, float)

    def header(self) -> dict[str, tuple]:
        """FITS keywords ``{name: (value, comment)}`` in the ZTF convention."""
        return {
            "MAGZP": (self.zp, "Magnitude zero point for 1 DN, colour 0 [AB mag]"),
            "MAGZPUNC": (self.zp_unc, "Uncertainty of MAGZP [mag]"),
            "MAGZPRMS": (self.zp_rms, "RMS of calibrator residuals [mag]"),
            "CLRCOEFF": (self.clrcoeff, "Colour coefficient: m = MAGZP+m_inst+CLRCOEFF*col"),
            "CLRCOUNC": (self.clrcoeff_unc, "Uncertainty of CLRCOEFF"),
            "CLRMED": (self.colour_median, "Median colour of calibrators [mag]"),
            "PCOLOR": (self.pcolor, "PS1 colour used in the calibration"),
            "NMATCHES": (self.n_used, "Number of calibrators used"),
        }


def _robust_sigma(values: np.ndarray) -> float:
    return float(_MAD_TO_SIGMA * np.median(np.abs(values - np.median(values))))


def _wls(y, colour, weight, fit_colour, clrcoeff):
    """Weighted least squares of ``y = zp + c * colour``; returns (zp, c, covariance 2x2)."""
    if not fit_colour:
        w_sum = weight.sum()
        zp = float(np.sum(weight * (y - clrcoeff * colour)) / w_sum)
        return zp, clrcoeff, np.array([[1.0 / w_sum, 0.0], [0.0, 0.0]])
    design = np.column_stack([np.ones_like(colour), colour])
    normal = design.T @ (design * weight[:, None])
    cov = np.linalg.inv(normal)
    zp, c = cov @ (design.T @ (weight * y))
    return float(zp), float(c), cov


def fit_zero_point(m_inst, m_inst_err, m_ref, ref_err, colour, *, fit_colour: bool = True,
                   clrcoeff: float = 0.0, clip: float = 3.0, floor: float = 0.005,
                   max_iter: int = 10, min_stars: int | None = None,
                   pcolor: str = "g-r") -> ZeroPointFit:
    """Fit ``m_ref - m_inst = zp + clrcoeff * colour`` with iterative sigma clipping.

    The fit is a weighted least squares with weights ``1 / sigma^2``,
    ``sigma^2 = m_inst_err^2 + ref_err^2 + floor^2``. It starts robustly (zero point = the median
    of ``m_ref - m_inst``, a first clip at ``max(clip, 5)`` robust sigmas), then alternates fit
    and clipping of stars whose normalised residual exceeds ``clip`` times the robust scatter of
    the normalised residuals (never less than 1), until the kept set is stable.

    Parameters
    ----------
    m_inst, m_inst_err : array_like
        Instrumental magnitudes ``-2.5 log10(flux_DN)`` (aperture-corrected to total) and their
        1-sigma errors, mag.
    m_ref, ref_err : array_like
        Reference (PS1-system AB) magnitudes in the band and their errors, mag.
    colour : array_like
        Reference colour (``g - r`` or ``r - i``), mag.
    fit_colour : bool
        Fit the colour term; if False, hold it at ``clrcoeff``.
    clrcoeff : float
        The fixed colour term used when ``fit_colour`` is False.
    clip : float
        Clipping threshold, in robust sigmas of the normalised residuals.
    floor : float
        Error floor added in quadrature, mag.
    max_iter : int
        Maximum clipping iterations.
    min_stars : int, optional
        Fewest calibrators accepted (default 5 with a colour term, 3 without).
    pcolor : str
        Name of the colour, stored for the ``PCOLOR`` keyword.

    Returns
    -------
    ZeroPointFit

    Raises
    ------
    AlgorithmError
        Fewer than ``min_stars`` finite calibrators before or after clipping.
    """
    m_inst, m_ref, colour = (np.asarray(a, float) for a in (m_inst, m_ref, colour))
    sigma = np.sqrt(np.asarray(m_inst_err, float) ** 2 + np.asarray(ref_err, float) ** 2 + floor**2)
    min_stars = min_stars if min_stars is not None else (5 if fit_colour else 3)
    y = m_ref - m_inst
    finite = np.isfinite(y) & np.isfinite(colour) & np.isfinite(sigma) & (sigma > 0)
    _require(finite.sum(), min_stars, "finite calibrators")
    resid = y - np.median(y[finite])
    used = finite & (np.abs(resid) <= max(clip, 5.0) * max(_robust_sigma(resid[finite]), 1e-3))
    for _ in range(max_iter):
        _require(used.sum(), min_stars, "calibrators after clipping")
        zp, c, cov = _wls(y[used], colour[used], 1.0 / sigma[used] ** 2, fit_colour, clrcoeff)
        z = (y - zp - c * colour) / sigma
        scale = max(_robust_sigma(z[used]), 1.0)
        new_used = finite & (np.abs(z - np.median(z[used])) <= clip * scale)
        if np.array_equal(new_used, used):
            break
        used = new_used
    _require(used.sum(), min_stars, "calibrators after clipping")
    return _zero_point_result(y, colour, sigma, used, fit_colour, clrcoeff, pcolor)


def _require(n: int, n_required: int, what: str) -> None:
    if n < n_required:
        raise AlgorithmError(f"only {int(n)} {what}, {n_required} required",
                             n_stars=int(n), n_required=int(n_required))


def _zero_point_result(y, colour, sigma, used, fit_colour, clrcoeff, pcolor) -> ZeroPointFit:
    zp, c, cov = _wls(y[used], colour[used], 1.0 / sigma[used] ** 2, fit_colour, clrcoeff)
    resid = y[used] - zp - c * colour[used]
    n_par = 2 if fit_colour else 1
    dof = max(int(used.sum()) - n_par, 1)
    chi2 = float(np.sum((resid / sigma[used]) ** 2) / dof)
    cov = cov * max(chi2, 1.0)  # errors too small for the scatter: scale them up
    return ZeroPointFit(
        zp=zp, zp_unc=float(np.sqrt(cov[0, 0])), zp_rms=float(np.sqrt(np.mean(resid**2))),
        clrcoeff=c, clrcoeff_unc=float(np.sqrt(cov[1, 1])),
        colour_median=float(np.median(colour[used])), n_used=int(used.sum()), used=used,
        chi2_reduced=chi2, pcolor=pcolor)


def isolation_mask(x, y, radius: float, *, others_x=None, others_y=None) -> np.ndarray:
    """True for sources with no other source within ``radius`` pixels.

    Parameters
    ----------
    x, y : array_like
        Positions of the sources judged, 0-based pixels.
    radius : float
        Isolation radius, pixels.
    others_x, others_y : array_like, optional
        All sources that count as neighbours (default: the judged sources themselves). A
        source closer than 1e-3 px to a judged one is taken to be that source.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    ox = x if others_x is None else np.asarray(others_x, float)
    oy = y if others_y is None else np.asarray(others_y, float)
    if x.size == 0:
        return np.zeros(0, bool)
    tree = cKDTree(np.column_stack([ox, oy]))
    counts = tree.query_ball_point(np.column_stack([x, y]), radius, return_length=True)
    self_hits = tree.query_ball_point(np.column_stack([x, y]), 1e-3, return_length=True)
    return (counts - self_hits) == 0


def select_calibrators(m_inst_err, ref_err, colour, *, saturated=None, flagged=None,
                       isolated=None, min_snr: float = 20.0,
                       colour_range: tuple[float, float] = (0.0, 1.5),
                       max_ref_err: float = 0.05) -> np.ndarray:
    """Mask of stars fit to calibrate the zero point.

    A calibrator is unsaturated, not flagged, isolated, has S/N >= ``min_snr`` (judged from its
    magnitude error, ``S/N = 1.0857 / m_inst_err``), a reference error below ``max_ref_err`` and a
    colour strictly inside ``colour_range`` (the stellar locus; ``0 < g-r < 1.5`` by default).

    Parameters
    ----------
    m_inst_err : array_like
        Instrumental magnitude errors, mag.
    ref_err : array_like
        Reference magnitude errors in the band, mag (NaN = no measurement: rejected).
    colour : array_like
        Reference colour, mag.
    saturated, flagged, isolated : array_like of bool, optional
        Per-star masks (default: none saturated, none flagged, all isolated).

    Returns
    -------
    ndarray of bool
    """
    m_inst_err, ref_err, colour = (np.asarray(a, float) for a in (m_inst_err, ref_err, colour))
    n = m_inst_err.size
    ok = np.ones(n, bool)
    for mask, good_when in ((saturated, False), (flagged, False), (isolated, True)):
        if mask is not None:
            ok &= np.asarray(mask, bool) == good_when
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = 2.5 / np.log(10) / m_inst_err
    ok &= np.nan_to_num(snr, nan=0.0) >= min_snr
    ok &= np.nan_to_num(ref_err, nan=np.inf) < max_ref_err
    lo, hi = colour_range
    return ok & (np.nan_to_num(colour, nan=-np.inf) > lo) & (np.nan_to_num(colour, nan=np.inf) < hi)


# --------------------------------------------------------------------------- apertures


@dataclass(frozen=True)
class ApertureCorrection:
    """Correction from a small aperture (or PSF) magnitude to a large/total one.

    ``m_large = m_small + apcor``; ``apcor`` is <= 0 when the large aperture holds more flux.

    Attributes
    ----------
    apcor : float
        The correction, mag.
    apcor_unc : float
        Its 1-sigma uncertainty (error of the clipped weighted mean), mag.
    scatter : float
        Robust star-to-star scatter of the per-star corrections, mag.
    n_used : int
        Stars kept after clipping.
    used : ndarray of bool
    """

    apcor: float
    apcor_unc: float
    scatter: float
    n_used: int
    used: np.ndarray


def aperture_correction(flux_small, flux_large, flux_small_err=None, flux_large_err=None, *,
                        clip: float = 3.0, max_iter: int = 5,
                        min_stars: int = 3) -> ApertureCorrection:
    """Aperture correction (mag) from bright, isolated stars.

    Each star gives ``d = -2.5 log10(flux_large / flux_small)``. The result is their weighted
    mean after iterative clipping at ``clip`` robust sigmas around the median. Choose the stars
    (bright, isolated, unsaturated) before calling.

    Parameters
    ----------
    flux_small, flux_large : array_like
        Fluxes of the same stars in the small aperture (or PSF fit) and the large aperture, DN.
    flux_small_err, flux_large_err : array_like, optional
        Their 1-sigma errors, DN; without them the stars are weighted equally. The two errors
        are treated as independent (conservative: the apertures share pixels).
    clip : float
    max_iter : int
    min_stars : int

    Returns
    -------
    ApertureCorrection

    Raises
    ------
    AlgorithmError
        Fewer than ``min_stars`` stars with positive fluxes.
    """
    fs, fl = np.asarray(flux_small, float), np.asarray(flux_large, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = -2.5 * np.log10(fl / fs)
        var = _mag_var(fs, flux_small_err) + _mag_var(fl, flux_large_err)
    ok = np.isfinite(d) & (fs > 0) & (fl > 0) & np.isfinite(var)
    _require(ok.sum(), min_stars, "stars for the aperture correction")
    weight = ok * 1.0
    if flux_small_err is not None:
        weight = np.where(ok, 1.0 / np.maximum(var, 1e-12), 0.0)
    used = ok
    for _ in range(max_iter):
        scale = max(_robust_sigma(d[used]), 1e-4)
        new_used = ok & (np.abs(d - np.median(d[used])) <= clip * scale)
        if np.array_equal(new_used, used):
            break
        used = new_used
    _require(used.sum(), min_stars, "stars for the aperture correction after clipping")
    w = weight[used]
    mean = float(np.sum(w * d[used]) / np.sum(w))
    scatter = _robust_sigma(d[used])
    unc = float(np.sqrt(np.sum(w**2 * (d[used] - mean) ** 2)) / np.sum(w))
    return ApertureCorrection(mean, unc, scatter, int(used.sum()), used)


def _mag_var(flux, err):
    if err is None:
        return np.zeros_like(flux)
    return (2.5 / np.log(10) * np.asarray(err, float) / flux) ** 2


def curve_of_growth(image, x, y, radii, *,
                    err: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Median normalised curve of growth of stars in a background-subtracted image.

    Parameters
    ----------
    image : 2-D array
        Background-subtracted image, DN.
    x, y : array_like
        Star centres, 0-based pixels (choose bright, isolated, unsaturated stars).
    radii : array_like
        Increasing aperture radii, pixels; the last is the reference ("total") aperture.
    err : float, optional
        Per-pixel noise, DN (passed to sep; does not change the result).

    Returns
    -------
    radii : ndarray
    growth : ndarray
        Median over stars of ``flux(r) / flux(r_max)``; ``-2.5 log10(growth)`` is the aperture
        correction from each radius to the largest.
    """
    import sep

    img = np.ascontiguousarray(image, dtype=np.float64)
    radii = np.asarray(radii, float)
    x, y = np.asarray(x, float), np.asarray(y, float)
    flux = np.stack([sep.sum_circle(img, x, y, r, err=err)[0] for r in radii])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = flux / flux[-1]
    good = np.all(np.isfinite(ratio), axis=0) & (flux[-1] > 0)
    return radii, np.median(ratio[:, good], axis=1)


# --------------------------------------------------------------------------- depth


def gaussian_nea(fwhm_px: float) -> float:
    """Noise-equivalent area ``1 / sum(P^2) = 4 pi sigma^2`` of a Gaussian PSF, pixels."""
    sigma = fwhm_px / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    return float(4.0 * np.pi * sigma**2)


def psf_nea(psf) -> float:
    """Noise-equivalent area ``(sum P)^2 / sum(P^2)`` of a pixelised PSF image, pixels.

    ``psf`` may have any normalisation (e.g. a stack of star stamps); it should be centred,
    background-free and cover the wings (at least +-3 FWHM).
    """
    p = np.asarray(psf, float)
    return float(p.sum() ** 2 / np.sum(p**2))


def limiting_magnitude(zp: float, background_rms: float, *, nea_px: float | None = None,
                       fwhm_px: float | None = None, nsigma: float = 5.0) -> float:
    """Point-source limiting magnitude (``MAGLIM``) of a sky-noise-limited image.

    Definition: the AB magnitude of a point source whose PSF-optimal flux measurement has
    S/N = ``nsigma`` on the background noise alone,
    ``flux_lim = nsigma * background_rms * sqrt(NEA)``, ``MAGLIM = zp - 2.5 log10(flux_lim)``.
    ``NEA = 1 / sum(P^2)`` is the noise-equivalent area of the normalised PSF ``P``; for a
    Gaussian it is ``4 pi sigma^2`` (about 2.27 FWHM^2). A colour-0 source is assumed (the colour
    term is not applied).

    Parameters
    ----------
    zp : float
        Zero point for 1 DN, AB mag.
    background_rms : float
        Per-pixel background noise, DN.
    nea_px : float, optional
        Noise-equivalent area of the PSF, pixels (preferred: from the PSF model).
    fwhm_px : float, optional
        FWHM, pixels, used (Gaussian NEA) when ``nea_px`` is not given.
    nsigma : float
        Detection significance, default 5.

    Returns
    -------
    float
    """
    if nea_px is None:
        if fwhm_px is None:
            raise ValueError("limiting_magnitude needs nea_px or fwhm_px")
        nea_px = gaussian_nea(fwhm_px)
    flux_lim = nsigma * background_rms * np.sqrt(nea_px)
    return float(zp - 2.5 * np.log10(flux_lim))


def completeness_curve(true_mags, detected, bins) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fraction of true sources detected in magnitude bins.

    Parameters
    ----------
    true_mags : array_like
        True magnitudes of the sources that could be detected (e.g. stars inside the image), mag.
    detected : array_like of bool
        Whether each was detected.
    bins : array_like
        Bin edges, mag.

    Returns
    -------
    centres, fraction, n_per_bin : ndarray
        ``fraction`` is NaN in empty bins.
    """
    mags = np.asarray(true_mags, float)
    det = np.asarray(detected, bool)
    bins = np.asarray(bins, float)
    n_all, _ = np.histogram(mags, bins)
    n_det, _ = np.histogram(mags[det], bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where(n_all > 0, n_det / n_all, np.nan)
    return 0.5 * (bins[1:] + bins[:-1]), fraction, n_all


def completeness_magnitude(true_mags, detected, bins, level: float = 0.5) -> float:
    """Magnitude where completeness first falls below ``level``, linearly interpolated.

    Scans the bins of :func:`completeness_curve` from bright to faint and interpolates
    between the last bin at or above ``level`` and the first below it (empty bins skipped).

    Raises
    ------
    AlgorithmError
        The completeness never crosses ``level`` within the bins.
    """
    centres, frac, _ = completeness_curve(true_mags, detected, bins)
    good = np.isfinite(frac)
    centres, frac = centres[good], frac[good]
    below = np.flatnonzero(frac < level)
    if below.size == 0 or below[0] == 0:
        raise AlgorithmError(f"completeness does not cross {level} inside the bins",
                             level=level, first_fraction=float(frac[0]) if frac.size else np.nan)
    i = below[0]
    f0, f1, m0, m1 = frac[i - 1], frac[i], centres[i - 1], centres[i]
    return float(m0 + (f0 - level) / (f0 - f1) * (m1 - m0))
