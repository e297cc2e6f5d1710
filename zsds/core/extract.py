"""Source extraction and the aperture catalogue (``sexcat`` content).

Detection is on a PSF-matched S/N image: the background-subtracted image is convolved with a
unit-sum Gaussian of the seeing FWHM (or a given PSF stamp) and divided by the background RMS,
so that, as in SExtractor, ``thresh`` is in units of the *unfiltered* per-pixel noise applied
to the filtered image (the matched-filter S/N of the threshold is ``thresh / sqrt(sum k^2)``,
about 4.5 sigma at 1.5 for a 2 px FWHM). sep thresholds and deblends that image; every
measurement is then made on the unfiltered background-subtracted image, the isophotal ones
over each object's segmentation pixels (vectorised with ``bincount``), the aperture ones with
sep.

Conventions: numpy ``[y, x]``; output positions are **0-based** pixel coordinates (pixel
centres at integers); the FITS writer adds 1. Fluxes in DN of the input image. Angles in
degrees from +x towards +y. Every column is documented in :data:`COLUMNS`.
"""

from __future__ import annotations

import numpy as np
import sep
from astropy.table import Table
from scipy import signal, special

from ..errors import AlgorithmError
from . import filters

__all__ = ["COLUMNS", "APER_RADII", "FLAGS", "extract_sources", "star_galaxy",
           "add_sky_coordinates", "detection_image"]

#: Radii of the aperture (curve-of-growth) series, pixels. 7 and 9 px are ZTF's 14 and
#: 18 px diameter apertures (``magap``, ``magapbig``).
APER_RADII = (1.0, 1.41, 2.0, 2.83, 4.0, 5.66, 7.0, 8.0, 9.0, 11.3, 16.0)

#: Error bits of the ``flags`` column: sep's (1-128) and ours (256 and up).
FLAGS = {
    "OBJ_MERGED": 1, "OBJ_TRUNC": 2, "OBJ_DOVERFLOW": 4, "OBJ_SINGU": 8, "APER_TRUNC": 16,
    "APER_HASMASKED": 32, "APER_ALLMASKED": 64, "APER_NONPOSITIVE": 128,
    "NEAR_EDGE": 256, "SATURATED": 512, "NEAR_BAD": 1024, "NO_PETROSIAN": 2048,
}

_NAREAL = 8

#: (name, unit, description) of every catalogue column, for TUNIT/TCOMM.
COLUMNS = [
    ("number", "", "running object number, 1-based"),
    ("x", "pix", "isophotal barycentre, x, 0-based (FITS adds 1)"),
    ("y", "pix", "isophotal barycentre, y, 0-based (FITS adds 1)"),
    ("x_err", "pix", "1-sigma error of x"),
    ("y_err", "pix", "1-sigma error of y"),
    ("x2", "pix2", "second central moment <dx^2> over the isophote"),
    ("y2", "pix2", "second central moment <dy^2> over the isophote"),
    ("xy", "pix2", "second central moment <dx dy> over the isophote"),
    ("a", "pix", "major-axis sigma from the second moments"),
    ("b", "pix", "minor-axis sigma from the second moments"),
    ("theta", "deg", "position angle of the major axis, from +x towards +y, (-90, 90]"),
    ("ellipticity", "", "1 - b/a"),
    ("flux_iso", "DN", "isophotal flux: sum over the segmentation pixels"),
    ("flux_iso_err", "DN", "1-sigma error of flux_iso"),
    ("isoarea", "pix", "number of pixels of the segmentation (isophotal area)"),
    ("iso_thresh", "DN", "isophotal threshold T = thresh x background RMS at the centre"),
    ("areal", "pix", "8 areal profiles: pixels above T, 2T, 4T, ... 128T"),
    ("peak", "DN", "highest background-subtracted pixel of the object"),
    ("snr_det", "", "peak PSF-matched-filter S/N of the detection"),
    ("flux_aper", "DN", "fluxes in circular apertures of radii APER_RADII"),
    ("flux_aper_err", "DN", "1-sigma errors of flux_aper (sky and source noise)"),
    ("kron_radius", "", "Kron radius in units of a and b (SExtractor KRON_RADIUS)"),
    ("flux_auto", "DN", "flux in the elliptical Kron aperture of 2.5 kron_radius (min r 3.5 px)"),
    ("flux_auto_err", "DN", "1-sigma error of flux_auto"),
    ("flux_radius", "pix", "half-light radius: circle holding half of flux_auto"),
    ("petro_radius", "pix", "Petrosian radius at eta = 0.2, from the aperture series"),
    ("flux_petro", "DN", "flux in a circle of 2 petro_radius"),
    ("flux_petro_err", "DN", "1-sigma error of flux_petro"),
    ("sky", "DN", "local background level at the centre (background map)"),
    ("sky_var", "DN2", "local background variance per pixel at the centre"),
    ("stellarity", "", "concentration F(FWHM)/F(3 FWHM) over that of the PSF: stars ~1, galaxies < 1"),
    ("stellarity_err", "", "1-sigma error of stellarity"),
    ("class_star", "", "probability-like star class: ~1 stars, ~0 galaxies, 0.5 undecided"),
    ("flags", "", "error bits, see FLAGS"),
]


def _gaussian_kernel_sum2(fwhm):
    """sum(k^2) of a unit-sum Gaussian of ``fwhm`` pixels (continuous approximation)."""
    sigma = fwhm / 2.3548
    return 1.0 / (4 * np.pi * sigma**2)


def detection_image(sub, rms, bad, *, psf_fwhm=2.0, kernel=None):
    """PSF-filtered image in units of the unfiltered background RMS.

    Parameters
    ----------
    sub : float32 array
        Background-subtracted image, DN.
    rms : float32 array
        Background RMS, DN.
    bad : bool array
        Pixels set to zero before filtering.
    psf_fwhm : float
        FWHM of the Gaussian filter, pixels (used when ``kernel`` is None).
    kernel : 2-D array, optional
        PSF stamp to filter with (normalised to unit sum here).

    Returns
    -------
    det : float32 array
        ``(sub * k) / rms``.
    sum_k2 : float
        ``sum(k^2)`` of the unit-sum kernel (matched S/N = det / sqrt(sum_k2)).
    """
    clean = np.where(bad, np.float32(0), sub)
    if kernel is None:
        filt = filters.gaussian_filter(clean, psf_fwhm / 2.3548, mode="nearest", truncate=3.0)
        sum_k2 = _gaussian_kernel_sum2(psf_fwhm)
    else:
        k = np.asarray(kernel, np.float64) / np.sum(kernel)
        filt = signal.fftconvolve(clean, k.astype(np.float32), mode="same")
        sum_k2 = float(np.sum(k**2))
    return np.ascontiguousarray(filt / rms, dtype=np.float32), sum_k2


def _pixel_table(seg, sub, rms, gain):
    """Pixels of all segments: label (0-based), x, y, value, variance, background RMS."""
    idx = np.flatnonzero(seg)
    lab = seg.ravel()[idx].astype(np.int64) - 1
    yy, xx = np.divmod(idx, seg.shape[1])
    val = sub.ravel()[idx].astype(np.float64)
    r = rms.ravel()[idx].astype(np.float64)
    var = r**2 + (np.clip(val, 0, None) / gain if gain else 0.0)
    return lab, xx.astype(np.float64), yy.astype(np.float64), val, var, r


def _isophotal(lab, xx, yy, val, var, r, n, thresh):
    """Isophotal flux, barycentre, moments, areal profiles and peak of every segment."""
    def s(w):
        return np.bincount(lab, weights=w, minlength=n)
    npix = np.bincount(lab, minlength=n)
    w = np.clip(val, 0, None)
    sw = s(w)
    ok = sw > 0
    swd = np.where(ok, sw, 1.0)
    xc = s(w * xx) / swd
    yc = s(w * yy) / swd
    dx, dy = xx - xc[lab], yy - yc[lab]
    x2, y2, xy = s(w * dx * dx) / swd, s(w * dy * dy) / swd, s(w * dx * dy) / swd
    singular = x2 * y2 - xy**2 < 1.0 / 144
    x2, y2 = x2 + singular / 12.0, y2 + singular / 12.0
    areal = np.stack([s((val > 2**k * thresh * r).astype(float)) for k in range(_NAREAL)], axis=1)
    order = np.argsort(lab, kind="stable")
    starts = np.searchsorted(lab[order], np.arange(n))
    peak = np.maximum.reduceat(val[order], np.minimum(starts, len(order) - 1)) if len(order) else np.zeros(n)
    return {
        "x": xc, "y": yc, "x_err": np.sqrt(s(var * dx * dx)) / swd, "y_err": np.sqrt(s(var * dy * dy)) / swd,
        "x2": x2, "y2": y2, "xy": xy, "flux_iso": s(val), "flux_iso_err": np.sqrt(s(var)),
        "isoarea": npix, "areal": areal.astype(np.int32), "peak": np.where(npix > 0, peak, 0.0),
        "_ok": ok, "_singular": singular,
    }


def _shape(x2, y2, xy):
    """Sigma along the axes (a >= b), position angle (deg) and ellipticity from the moments."""
    mean, diff = (x2 + y2) / 2, np.sqrt(((x2 - y2) / 2) ** 2 + xy**2)
    a = np.sqrt(mean + diff)
    b = np.sqrt(np.clip(mean - diff, 0, None))
    theta = np.degrees(0.5 * np.arctan2(2 * xy, x2 - y2))
    return a, b, theta, 1 - b / np.where(a > 0, a, 1)


def _apertures(sub, x, y, rms, bad, gain):
    """Fluxes, errors and sep flags in the APER_RADII series, shape (n, len(APER_RADII))."""
    out = [sep.sum_circle(sub, x, y, r, err=rms, gain=gain, mask=bad) for r in APER_RADII]
    return (np.stack([o[0] for o in out], 1), np.stack([o[1] for o in out], 1),
            np.bitwise_or.reduce(np.stack([o[2] for o in out], 1), axis=1))


def _kron(sub, x, y, a, b, theta_deg, rms, bad, gain):
    """Kron radius (units of a, b), AUTO flux and error, half-light radius, flags."""
    th = np.radians(theta_deg)
    a, b = np.maximum(a, 0.5), np.maximum(b, 0.5)
    kr, f1 = sep.kron_radius(sub, x, y, a, b, th, 6.0, mask=bad)
    kr = np.where(np.isfinite(kr) & (kr > 0), kr, 0.0)
    circ = kr * np.sqrt(a * b) < 1.75
    fe, fee, f2 = sep.sum_ellipse(sub, x, y, a, b, th, np.maximum(2.5 * kr, 1e-3), err=rms,
                                  gain=gain, mask=bad, subpix=1)
    fc, fce, f3 = sep.sum_circle(sub, x, y, 3.5, err=rms, gain=gain, mask=bad)
    flux, err = np.where(circ, fc, fe), np.where(circ, fce, fee)
    rh, f4 = sep.flux_radius(sub, x, y, np.maximum(6.0 * a, 5.0), 0.5,
                             normflux=np.where(flux > 0, flux, 1.0), mask=bad, subpix=5)
    return kr, flux, err, np.where(flux > 0, rh, np.nan), f1 | np.where(circ, f3, f2) | f4


def _petrosian(flux_aper, eta=0.2):
    """Petrosian radius (pix) where the annular over mean surface brightness falls to ``eta``.

    Uses the aperture series: the annulus between consecutive radii over the mean inside the
    outer one; linear interpolation in radius; NaN if never reached.
    """
    r = np.asarray(APER_RADII)
    f = flux_aper
    ann = np.diff(f, axis=1) / (np.pi * np.diff(r**2))
    mean = f[:, 1:] / (np.pi * r[1:] ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        e = np.where(mean > 0, ann / mean, np.nan)
    below = e < eta
    found = below.any(axis=1)
    i = np.argmax(below, axis=1)
    rows = np.arange(len(f))
    e_hi = e[rows, i]
    e_lo = np.where(i > 0, e[rows, np.maximum(i - 1, 0)], 1.0)
    r_lo, r_hi = np.where(i > 0, r[1:][np.maximum(i - 1, 0)], r[0]), r[1:][i]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.clip((e_lo - eta) / (e_lo - e_hi), 0, 1)
    return np.where(found, r_lo + t * (r_hi - r_lo), np.nan)


def star_galaxy(f_in, f_in_err, f_out, f_out_err, reference=None, *, tolerance=0.08,
                min_snr=50.0):
    """Star/galaxy statistic and class from the concentration ``F(r_in) / F(r_out)``.

    Parameters
    ----------
    f_in, f_in_err, f_out, f_out_err : arrays
        Fluxes (DN) in apertures of radii 1 and 3 FWHM, and their errors.
    reference : float, optional
        Concentration of the PSF. If None, the stellar locus of the catalogue: the clipped
        median over objects with ``f_out/err > min_snr`` (stars dominate ZTF fields).
    tolerance : float
        Fractional drop of the concentration below the PSF's that separates stars from
        galaxies.

    Returns
    -------
    stellarity, stellarity_err, class_star : arrays
        ``c / c_psf`` (1 for point sources, lower for extended ones, higher for cosmic rays),
        its error, and ``Phi((stellarity - 1 + tolerance) / err)`` in [0, 1].
    reference : float
        The concentration of the PSF used.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        c = f_in / f_out
        c_err = np.abs(c) * np.hypot(f_in_err / f_in, f_out_err / f_out)
    if reference is None:
        bright = np.isfinite(c) & (f_out > min_snr * f_out_err) & (c > 0)
        if bright.sum() < 5:
            # Too few bright objects to locate the stellar locus: undecided, not a failure.
            nan = np.full(np.shape(c), np.nan)
            return nan, nan, np.full(np.shape(c), 0.5), float("nan")
        reference = float(np.median(c[bright]))
        for _ in range(3):
            near = bright & (np.abs(c - reference) < 0.1 * reference)
            reference = float(np.median(c[near])) if near.sum() >= 5 else reference
    stat, err = c / reference, c_err / reference
    err = np.hypot(err, 0.02)
    cls = 0.5 * (1 + special.erf((stat - 1 + tolerance) / (np.sqrt(2) * err)))
    return stat, err, np.where(np.isfinite(cls), cls, 0.5), reference


def _own_flags(x, y, shape, bad, saturated, lab, idx_sat, n, edge):
    ny, nx = shape
    flags = np.zeros(n, np.int32)
    near_edge = (x < edge) | (y < edge) | (x > nx - 1 - edge) | (y > ny - 1 - edge)
    flags |= np.where(near_edge, FLAGS["NEAR_EDGE"], 0)
    if saturated is not None:
        flags |= np.where(np.bincount(lab, weights=idx_sat, minlength=n) > 0, FLAGS["SATURATED"], 0)
    if bad.any():
        near = filters.binary_dilation(bad, 3)
        xi = np.clip(np.rint(x).astype(int), 0, nx - 1)
        yi = np.clip(np.rint(y).astype(int), 0, ny - 1)
        flags |= np.where(near[yi, xi], FLAGS["NEAR_BAD"], 0)
    return flags


def _sep_extract(det, thresh, bad, minarea, deblend_nthresh, deblend_cont):
    """sep.extract with room for dense fields; sep's bare Exceptions become AlgorithmError."""
    sep.set_sub_object_limit(max(sep.get_sub_object_limit(), 8192))
    sep.set_extract_pixstack(max(sep.get_extract_pixstack(), 3_000_000))
    try:
        return sep.extract(det, thresh, mask=bad, minarea=minarea, filter_kernel=None,
                           deblend_nthresh=deblend_nthresh, deblend_cont=deblend_cont,
                           segmentation_map=True)
    except Exception as exc:  # noqa: BLE001 - sep raises bare Exception
        raise AlgorithmError(f"source extraction failed: {exc}", thresh=thresh,
                             minarea=minarea) from None


def extract_sources(image, background, background_rms, mask=None, *, thresh: float = 1.5,
                    minarea: int = 5, gain: float | None = None, psf_fwhm: float = 2.0,
                    kernel=None, saturated=None, deblend_nthresh: int = 32,
                    deblend_cont: float = 0.005, edge: int = 16,
                    psf_concentration: float | None = None) -> Table:
    """Detect sources and measure the aperture catalogue.

    Parameters
    ----------
    image : 2-D array
        Calibrated image (bias-subtracted, flat-fielded), DN, numpy ``[y, x]``.
    background, background_rms : 2-D arrays
        Background level and RMS maps, DN (see :func:`zsds.core.background.background_maps`).
    mask : 2-D bool array, optional
        True for bad pixels (excluded from detection and measurements).
    thresh : float
        Detection and isophotal threshold in units of the per-pixel background RMS, applied
        to the PSF-filtered image (SExtractor's DETECT_THRESH convention).
    minarea : int
        Minimum number of connected pixels above the threshold.
    gain : float, optional
        e-/DN; adds the source Poisson noise to the flux errors when given.
    psf_fwhm : float
        Seeing FWHM, pixels: detection filter and star/galaxy apertures.
    kernel : 2-D array, optional
        PSF stamp to use as detection filter instead of a Gaussian.
    saturated : 2-D bool array, optional
        Saturated pixels (flag SATURATED for objects that contain one).
    deblend_nthresh, deblend_cont : int, float
        sep deblending parameters.
    edge : int
        Objects whose centre is closer than ``edge`` pixels to the border get NEAR_EDGE.
    psf_concentration : float, optional
        Concentration of the PSF for the star/galaxy statistic (default: stellar locus).

    Returns
    -------
    astropy.table.Table
        One row per object, columns as in :data:`COLUMNS` (0-based positions). ``meta`` holds
        ``APER_RADII``, ``THRESH``, ``PSF_FWHM``, ``PSF_CONC``.

    Raises
    ------
    AlgorithmError
        If nothing is detected.
    """
    img = np.ascontiguousarray(image, dtype=np.float32)
    rms = np.ascontiguousarray(background_rms, dtype=np.float32)
    bad = ~np.isfinite(img) if mask is None else (np.asarray(mask, bool) | ~np.isfinite(img))
    sub = np.ascontiguousarray(np.where(bad, 0, img - background), dtype=np.float32)
    det, sum_k2 = detection_image(sub, rms, bad, psf_fwhm=psf_fwhm, kernel=kernel)
    objs, seg = _sep_extract(det, thresh, bad, minarea, deblend_nthresh, deblend_cont)
    n = len(objs)
    if n == 0:
        raise AlgorithmError("no sources detected", thresh=thresh, minarea=minarea)
    lab, xx, yy, val, var, r = _pixel_table(seg, sub, rms, gain)
    iso = _isophotal(lab, xx, yy, val, var, r, n, thresh)
    x = np.where(iso["_ok"], iso["x"], objs["x"])
    y = np.where(iso["_ok"], iso["y"], objs["y"])
    a, b, theta, ell = _shape(iso["x2"], iso["y2"], iso["xy"])
    fap, fap_err, fl_ap = _apertures(sub, x, y, rms, bad, gain)
    kr, fauto, fauto_err, rh, fl_k = _kron(sub, x, y, a, b, theta, rms, bad, gain)
    rp = _petrosian(fap)
    fp, fp_err, fl_p = sep.sum_circle(sub, x, y, np.where(np.isfinite(rp), 2 * rp, 16.0),
                                      err=rms, gain=gain, mask=bad)
    fin = sep.sum_circle(sub, x, y, psf_fwhm, err=rms, gain=gain, mask=bad)
    fout = sep.sum_circle(sub, x, y, 3 * psf_fwhm, err=rms, gain=gain, mask=bad)
    stat, stat_err, cls, conc = star_galaxy(fin[0], fin[1], fout[0], fout[1], psf_concentration)
    xi = np.clip(np.rint(x).astype(int), 0, img.shape[1] - 1)
    yi = np.clip(np.rint(y).astype(int), 0, img.shape[0] - 1)
    sat_pix = None if saturated is None else np.asarray(saturated, bool).ravel()[np.flatnonzero(seg)]
    flags = (objs["flag"].astype(np.int32) | fl_ap | fl_k | fl_p
             | _own_flags(x, y, img.shape, bad, saturated, lab, sat_pix, n, edge)
             | np.where(np.isfinite(rp), 0, FLAGS["NO_PETROSIAN"]))
    cols = {
        "number": np.arange(1, n + 1, dtype=np.int32), "x": x, "y": y,
        "x_err": iso["x_err"], "y_err": iso["y_err"], "x2": iso["x2"], "y2": iso["y2"], "xy": iso["xy"],
        "a": a, "b": b, "theta": theta, "ellipticity": ell,
        "flux_iso": iso["flux_iso"], "flux_iso_err": iso["flux_iso_err"], "isoarea": iso["isoarea"],
        "iso_thresh": thresh * rms[yi, xi], "areal": iso["areal"], "peak": iso["peak"],
        "snr_det": objs["peak"] / np.sqrt(sum_k2), "flux_aper": fap, "flux_aper_err": fap_err,
        "kron_radius": kr, "flux_auto": fauto, "flux_auto_err": fauto_err, "flux_radius": rh,
        "petro_radius": rp, "flux_petro": fp, "flux_petro_err": fp_err,
        "sky": np.asarray(background, np.float32)[yi, xi], "sky_var": rms[yi, xi].astype(np.float64) ** 2,
        "stellarity": stat, "stellarity_err": stat_err, "class_star": cls, "flags": flags,
    }
    table = Table([cols[name] for name, _, _ in COLUMNS], names=[c[0] for c in COLUMNS],
                  units=[u or None for _, u, _ in COLUMNS],
                  descriptions=[d for _, _, d in COLUMNS])
    table.meta.update(APER_RADII=list(APER_RADII), THRESH=thresh, PSF_FWHM=psf_fwhm, PSF_CONC=conc)
    return table


def add_sky_coordinates(cat: Table, wcs) -> Table:
    """Add ``ra``, ``dec`` (deg, ICRS) from the 0-based ``x``, ``y`` with an astropy WCS.

    Returns a new table; ``wcs`` uses the 0-based (numpy) pixel convention of
    ``pixel_to_world_values``.
    """
    out = cat.copy(copy_data=False)
    ra, dec = wcs.pixel_to_world_values(np.asarray(cat["x"]), np.asarray(cat["y"]))
    out["ra"] = np.asarray(ra, np.float64) % 360.0
    out["dec"] = np.asarray(dec, np.float64)
    out["ra"].unit, out["dec"].unit = "deg", "deg"
    return out
