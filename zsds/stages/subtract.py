"""Image subtraction and candidate extraction (ZOGY) of a calibrated quadrant.

Public entry points: :func:`subtract_job` (the night runner's ``subtract`` stage: finds the
current reference of the quadrant, writes the ``sci/`` products, registers candidates) and
:func:`subtract_images` (any pair of calibrated images with WCS, for ``zsds subtract``). Steps:

1. read both images; background maps (sep) of both; masks, gains, zero points from headers ...... ``core.background``
2. PSFs: the stored models (``_sciimgpsf.fits``, ``_refpsf.fits``) or estimated ................ ``core.psf``
3. resample the reference onto the science grid (bilinear, with variance and mask) ............. ``core.align``
4. flux zero points from MAGZP (and the PSF models' aperture corrections), residual
   background plane ............................................................................ ``core.fluxmatch``
5. ZOGY with per-pixel variance maps and the astrometric noise term ............................ ``core.zogy``
6. candidates on S_corr >= 5 and <= -5, features, rule filters, real-bogus score ............... ``core.candidates``, ``core.realbogus``
7. products: ``scimrefdiffimg.fits.fz`` (D_flux, RICE, MAGZP = science zero point),
   ``scimrefdiffimgscorr.fits.fz``, ``diffimgpsf.fits`` (P_D), ``diffimcands.fits`` (all
   detections with ``filter_bits`` and ``rb``), ``diffimcutouts.fits`` (63x63 science /
   reference / difference cutouts of the kept candidates), ``diffimlog.txt``.
8. streaks (trails of fast-moving objects) on S_corr / D_flux: ``diffimstreaks.fits``
   (table and cutouts), database table ``streaks`` ....................... ``stages.streaks``

The reference PSF on the science grid: bilinear resampling at sub-pixel phase ``(tx, ty)``
turns the reference PSF ``P`` into ``sum_ab w_a(tx) w_b(ty) P(. - (tx - a), . - (ty - b))``
(``w_0 = 1 - t``, ``w_1 = t``), a slightly broader PSF; it is built from the reference PSF
model at the phase of the evaluation point.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from sqlalchemy import delete, select, update

from ..alerts.ids import make_candid, make_pid
from ..alerts.packet import CUTOUT_SIZE
from ..archive.verify import record_checksums
from ..core import align, background, candidates as cands, diffpsf, filters, fluxmatch, realbogus, zogy
from ..core.psf import PSFModel
from ..db import schema as s
from ..db.ops import set_quadrant_status, utcnow
from ..errors import InputDataError
from ..flags import BAD_PIXEL_BITS
from ..io.paths import ArchiveLayout
from ..io.products import read_table, write_hdulist, write_image, write_table, write_text

__all__ = ["SubtractionResult", "subtract_images", "subtract_job", "read_cutouts",
           "DIFF_SUFFIXES"]

log = logging.getLogger(__name__)

DIFF_SUFFIXES = ("scimrefdiffimg.fits.fz", "scimrefdiffimgscorr.fits.fz", "diffimgpsf.fits",
                 "diffimcands.fits", "diffimcutouts.fits", "diffimlog.txt",
                 "diffimstreaks.fits")
_FID = {"zg": 1, "zr": 2, "zi": 3}
_PIXSCALE = 1.012
_MATCH_ARCSEC = 30.0
#: PSF stack taper (:func:`zsds.core.diffpsf.stacked_psfs`): flat to ``a`` FWHM, cosine over ``b`` FWHM.
_TAPER = (3.0, 3.0)


@dataclass
class _Image:
    """An image with what the subtraction needs (background-subtracted ``data``)."""

    path: Path
    data: np.ndarray
    header: fits.Header
    wcs: WCS
    bad: np.ndarray
    sky_rms: np.ndarray
    variance: np.ndarray
    psf: PSFModel | np.ndarray
    zp: float
    gain: float
    catalogue: Table | None = None  # the science image's own sexcat, if at hand


@dataclass
class SubtractionResult:
    """Outputs of :func:`subtract_images`.

    Attributes
    ----------
    candidates : astropy.table.Table
        Every detection with its features, ``filter_bits`` (0: kept) and ``rb``; pixel
        positions 0-based; ``ra``, ``dec`` (deg); ``index`` = row among the kept ones or -1.
    zogy : zsds.core.zogy.ZogyResult
    diffmaglim : float
        5-sigma limiting magnitude of the difference image.
    footprint : bool array
        Science pixels covered by the reference.
    cutouts : dict
        ``index -> (science, reference, difference)`` 63x63 float32 arrays of kept candidates.
    paths : dict
        Suffix -> written product path.
    qa : dict
        Numbers for the log and the night report (S_corr statistics, counts, timing, n_fft).
    streaks : astropy.table.Table or None
        Streaks (:func:`zsds.stages.streaks.find_streaks`, pixels 0-based).
    streak_cutouts : dict
        ``index -> (science, reference, difference)`` cutouts of the streaks.
    """

    candidates: Table
    zogy: zogy.ZogyResult
    diffmaglim: float
    footprint: np.ndarray
    cutouts: dict = field(default_factory=dict)
    paths: dict = field(default_factory=dict)
    qa: dict = field(default_factory=dict)
    streaks: Table | None = None
    streak_cutouts: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------
def _sibling(path: Path, old: str, new: str) -> Path | None:
    p = path.with_name(path.name.replace(old, new))
    return p if p != path and p.exists() else None


def _read_mask(path: Path, old: str, new: str, shape) -> np.ndarray:
    mpath = _sibling(path, old, new)
    if mpath is None:
        return np.zeros(shape, bool)
    with fits.open(mpath, memmap=False) as h:
        m = np.asarray(h[0].data if h[0].data is not None else h[1].data)
    return (m.astype(np.int64) & BAD_PIXEL_BITS) > 0


def _header_float(header, keys, path, default=None) -> float:
    for k in keys:
        if k in header:
            return float(header[k])
    if default is None:
        raise InputDataError(str(path), f"header has none of {', '.join(keys)}")
    return float(default)


def _estimate_psf(data, rms, bad, gain):
    """A PSF model from the image's own stars (aperture catalogue + fit)."""
    from ..core.extract import extract_sources
    from ..core.psf import fit_psf_model

    cat = extract_sources(data, np.zeros_like(data), rms, bad, thresh=5.0, gain=gain)
    return fit_psf_model(data, rms, cat, bad, gain=gain)


def _load_psf(psf_path, image_path: Path, old: str, new: str, data, rms, bad, gain):
    p = Path(psf_path) if psf_path is not None else _sibling(image_path, old, new)
    if p is None:
        return _estimate_psf(data, rms, bad, gain)
    with fits.open(p, memmap=False) as h:
        if "NODES" in h:
            return PSFModel.from_fits(h)
        stamp = np.asarray(h[0].data, np.float64)
    return stamp / stamp.sum()


_NAMES = {"sci": ("_sciimg.fits", "_mskimg.fits", "_sciimgpsf.fits"),
          "ref": ("_refimg.fits", "_refmsk.fits", "_refpsf.fits")}


def _load_image(path, psf_path, kind: str) -> _Image:
    """Science (``kind='sci'``) or reference image, background-subtracted, with its extras."""
    path = Path(path)
    if not path.exists():
        raise InputDataError(str(path), "file not found")
    with fits.open(path, memmap=False) as h:
        hdu = h[0] if h[0].data is not None else h[1]
        raw, header = np.asarray(hdu.data, np.float32), hdu.header.copy()
    image, msk, _ = _NAMES[kind]
    sky = _reference_background(path, raw.shape) if kind == "ref" else None
    return _assemble(path, raw, header, _read_mask(path, image, msk, raw.shape), kind,
                     psf_path=psf_path, sky=sky)


def _reference_background(path: Path, shape):
    """The reference's background and RMS maps (DN) written with it (``_refbkg.fits``,
    measured on the co-add before it was written), or None (then they are re-estimated)."""
    p = _sibling(path, "_refimg.fits", "_refbkg.fits")
    if p is None:
        return None
    try:
        with fits.open(p, memmap=False) as h:
            sky, rms = (np.asarray(h[name].data, np.float32) for name in ("SKY", "RMS"))
    except (OSError, KeyError, TypeError, ValueError) as exc:
        log.warning("%s: unreadable reference background (%s); re-estimating it", p, exc)
        return None
    if sky.shape != tuple(shape) or rms.shape != tuple(shape):
        log.warning("%s: background shape %s differs from the reference %s; re-estimating it",
                    p, sky.shape, tuple(shape))
        return None
    return sky, rms


def _science_in_memory(path, calibrated) -> _Image:
    """The science ``_Image`` of a quadrant just calibrated in this process, without reading
    its products back or re-estimating its background: bit for bit what :func:`_load_image`
    makes of the written files (the header and PSF model go through their FITS form, the
    background maps are the calibration's, made from the same pixels and mask)."""
    import io

    from ..io.products import fit_comments

    header = fits.Header.fromstring(fit_comments(calibrated.header.copy()).tostring())
    buf = io.BytesIO()
    calibrated.psf_model.to_fits().writeto(buf)
    buf.seek(0)
    with fits.open(buf, memmap=False) as h:
        psf = PSFModel.from_fits(h)
    bad = (np.asarray(calibrated.mask).astype(np.int64) & BAD_PIXEL_BITS) > 0
    image = _assemble(Path(path), np.asarray(calibrated.image, np.float32), header, bad, "sci",
                      sky=(calibrated.background, calibrated.background_rms), psf=psf)
    cat = getattr(calibrated, "sexcat", None)
    if cat is not None and all(c in cat.colnames for c in _STAR_COLUMNS):
        image.catalogue = Table({c: cat[c] for c in _STAR_COLUMNS})
        for c in ("x", "y"):  # 1-based on disk and back, to the bit
            image.catalogue[c] = (np.asarray(cat[c], float) + 1.0) - 1.0
    return image


def _assemble(path: Path, raw, header, bad, kind: str, *, sky=None, psf=None,
              psf_path=None) -> _Image:
    """An ``_Image`` from its pixels, header and bad-pixel mask: the background maps
    (``sky = (map, rms map)`` if already made from the same pixels and mask), variance, gain,
    zero point and PSF (``psf`` given, else read from ``psf_path`` or the sibling product)."""
    image, _, psf_name = _NAMES[kind]
    bad = bad | ~np.isfinite(raw)
    raw = np.where(bad, np.float32(0), raw).astype(np.float32, copy=False)
    if sky is None:
        bkg = background.background_maps(raw, mask=bad)
        sky = (bkg.sky, bkg.rms)
    back, rms = (np.asarray(a, np.float32) for a in sky)
    data = raw - back
    gain = _header_float(header, ("GAIN",), path, default=1.0)
    zp = _header_float(header, ("MAGZP",), path)
    variance = _variance(path, image, data, rms, gain, kind)
    if psf is None:
        psf = _load_psf(psf_path, path, image, psf_name, data, rms, bad, gain)
    return _Image(path, data, header, WCS(header), bad, rms, variance, psf, zp, gain)


def _variance(path, old, data, rms, gain, kind):
    """Per-pixel variance: the reference's ``refunc`` squared, else sky + Poisson from GAIN."""
    if kind == "ref":
        unc = _sibling(path, old, "_refunc.fits")
        if unc is not None:
            with fits.open(unc, memmap=False) as h:
                u = np.asarray(h[0].data, np.float32)
            if u.shape == data.shape and np.isfinite(u).any():
                return np.where(np.isfinite(u), u * u, np.nanmax(u) ** 2).astype(np.float32)
    var = np.clip(data, 0, None)  # rms^2 + max(data, 0) / gain, in place (the same float32 sums)
    var /= gain
    var += rms * rms
    return var.astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------
# PSFs on the science grid
# ---------------------------------------------------------------------------------------
def _stamp(model, x, y, half):
    if isinstance(model, PSFModel):
        return model.evaluate(x, y, half)[0]
    p = np.asarray(model)
    h0 = p.shape[0] // 2
    if h0 >= half:
        return p[h0 - half:h0 + half + 1, h0 - half:h0 + half + 1]
    return np.pad(p, half - h0)


def _resampled_ref_stamp(model, u, v, half):
    """Reference PSF after bilinear resampling at reference position (u, v) (module doc)."""
    if not isinstance(model, PSFModel):
        return _stamp(model, u, v, half)
    iu, iv = np.floor(u), np.floor(v)
    tx, ty = u - iu, v - iv
    out = 0.0
    for a, wa in ((0, 1 - tx), (1, tx)):
        for b, wb in ((0, 1 - ty), (1, ty)):
            out = out + wa * wb * model.evaluate(iu + tx - a, iv + ty - b, half, xi=iu, yi=iv)[0]
    return out


def _psf_pair(sci: _Image, ref: _Image, x, y, half):
    """(science, reference-on-science-grid) PSF stamps at science pixel (x, y)."""
    ra, dec = sci.wcs.pixel_to_world_values(x, y)
    u, v = ref.wcs.world_to_pixel_values(ra, dec)
    return _stamp(sci.psf, x, y, half), _resampled_ref_stamp(ref.psf, float(u), float(v), half)


def _apcorr(model) -> float:
    return float(model.apcorr) if isinstance(model, PSFModel) else 1.0


def _half(model) -> int:
    return int(model.half) if isinstance(model, PSFModel) else np.asarray(model).shape[0] // 2


# ---------------------------------------------------------------------------------------
# subtraction
# ---------------------------------------------------------------------------------------
def _align(sci: _Image, ref: _Image) -> align.Resampled:
    return align.resample_to_grid(ref.data, ref.wcs, sci.wcs, sci.data.shape,
                                  variance=ref.variance, mask=ref.bad)


def _astrometric_sigma(header) -> tuple[float, float]:
    sx = float(header.get("ASTRRMS1", 0.0)) / _PIXSCALE
    sy = float(header.get("ASTRRMS2", 0.0)) / _PIXSCALE
    return sx, sy


def _fft_plans(shape, threads: int, fft_wisdom):
    """Measured plans shared through the wisdom file ``fft_wisdom``; None: estimated plans."""
    if fft_wisdom is None:
        return None
    from ..core.fft import padded_shape
    from ..io.fftwisdom import measured_plans
    return measured_plans(padded_shape(shape), threads, fft_wisdom)


def _run_zogy(sci: _Image, ref: _Image, res: align.Resampled, threads: int, fft_wisdom=None):
    """Background- and flux-matched ZOGY of the science image and the resampled reference.

    Flux convention: ``F_n = 1`` (unit of the science PSF stamp); ``F_r`` is the reference's
    DN per unit science flux, measured from the fluxes of the PSF stars in both images with
    the stacked PSFs (:func:`_flux_calibration`; the zero points' ratio and the PSF models'
    aperture corrections when there are too few stars). The returned ``cal['apcorr']``
    converts PSF fits on ``D_flux`` with ``P_D`` to the science PSF catalogue's total flux, so
    difference fluxes are science DN at the science zero point ``MAGZP``.
    """
    foot = res.footprint
    bad_ref = ~foot | (res.mask.astype(bool) if res.mask is not None else False)
    ref_img = np.where(foot, res.image, 0).astype(np.float32)
    scale = fluxmatch.flux_scale(sci.zp, ref.zp)
    sources = _source_mask(sci.data, ref_img * scale, sci.bad | bad_ref, grow=_mask_growth(sci.header))
    plane = fluxmatch.match_background(sci.data, ref_img * scale, mask=sources | sci.bad | bad_ref)
    new = sci.data - plane
    psf_n, psf_r, n_psf, xs, ys = _psfs(sci, ref, new, ref_img, bad_ref)
    cal = _flux_calibration(sci, ref, new, ref_img, psf_n, psf_r, xs, ys, scale, bad_ref)
    if abs(cal["scale"] / scale - 1) > 1e-4:  # re-match the background on the measured scale
        new = sci.data - fluxmatch.match_background(sci.data, ref_img * cal["scale"],
                                                    mask=sources | sci.bad | bad_ref)
    if res.variance is not None:
        median_var_r = np.nanmedian(res.variance[foot])  # = the median of var_r over foot
        var_r = np.where(foot, res.variance, median_var_r)
        sigma_r = float(np.sqrt(median_var_r))
    else:
        var_r, sigma_r = None, background.map_median(ref.sky_rms)
    z = zogy.zogy_subtract(new, ref_img, psf_n, psf_r, sigma_new=background.map_median(sci.sky_rms),
                           sigma_ref=sigma_r, flux_zp_new=1.0,
                           flux_zp_ref=1.0 / cal["scale"], var_new=sci.variance,
                           var_ref=var_r, astrometric_sigma=_astrometric_sigma(sci.header),
                           mask_new=sci.bad, mask_ref=bad_ref, threads=threads,
                           fft=_fft_plans(new.shape, threads, fft_wisdom))
    cal["n_psf_stars"] = n_psf
    return z, ref_img * cal["scale"], bad_ref, cal


def _flux_calibration(sci: _Image, ref: _Image, new, ref_img, psf_n, psf_r, xs, ys, scale,
                      bad_ref) -> dict:
    """Relative flux scale and aperture correction of the subtraction from its PSF stars.

    ``scale``: science DN per reference DN, the median ratio of the stars' PSF-fit fluxes
    (science stamp ``psf_n`` on the science image, ``psf_r`` on the resampled reference), so
    that constant stars cancel in D whatever the zero points' and the PSF models' errors.
    ``apcorr``: science PSF catalogue flux (``_psfcat.fits``: total flux at ``MAGZP``) per
    ``psf_n``-fit flux, median over the same stars. Fall-backs (fewer than 5 stars):
    ``scale`` from the zero points (``flux_scale(zp_sci, zp_ref) * apcorr_ref / apcorr_sci``)
    and the science PSF model's ``apcorr``.
    """
    from ..core.forcedphot import forced_photometry

    fallback_scale = scale * _apcorr(ref.psf) / _apcorr(sci.psf)
    out = {"scale": fallback_scale, "apcorr": _apcorr(sci.psf), "n_scale": 0, "n_apcorr": 0}
    if psf_n is None or len(xs) < 5:
        return out
    pos = np.c_[xs, ys]
    fn = forced_photometry(new, psf_n, 1.0, pos, mask=sci.bad).flux
    fr = forced_photometry(ref_img, psf_r, 1.0, pos, mask=bad_ref).flux
    ok = np.isfinite(fn) & np.isfinite(fr) & (fn > 0) & (fr > 0)
    if ok.sum() >= 5:
        ratio = float(np.median(fn[ok] / fr[ok]))
        if 0.5 < ratio / fallback_scale < 2.0:
            out.update(scale=ratio, n_scale=int(ok.sum()))
    p = _sibling(sci.path, "_sciimg.fits", "_psfcat.fits")
    if p is not None:
        cat = read_table(p)
        if {"x", "y", "flux"} <= set(cat.colnames) and len(cat):
            idx, _ = cands.match_reference(xs, ys, np.asarray(cat["x"], float) - 1.0,
                                           np.asarray(cat["y"], float) - 1.0, max_dist=1.0)
            idx0, _ = cands.match_reference(xs, ys, np.asarray(cat["x"], float),
                                            np.asarray(cat["y"], float), max_dist=1.0)
            if (idx0 >= 0).sum() > (idx >= 0).sum():  # 0-based catalogue positions
                idx = idx0
            good = (idx >= 0) & np.isfinite(fn) & (fn > 0)
            if good.sum() >= 5:
                a = float(np.median(np.asarray(cat["flux"], float)[idx[good]] / fn[good]))
                if 0.8 < a < 1.25:
                    out.update(apcorr=a, n_apcorr=int(good.sum()))
    return out


def _fwhm_px(header, default: float) -> float:
    """Science PSF FWHM, pixels: ``FWHMPIX``, else ``SEEING`` (arcsec), else ``default`` (px)."""
    if "FWHMPIX" in header:
        return float(header["FWHMPIX"])
    return float(header["SEEING"]) / _PIXSCALE if "SEEING" in header else float(default)


def _mask_growth(header) -> int:
    """Pixels by which the background-matching source mask is grown: the science FWHM, at
    least 2. Broad wings left unmasked in bad seeing bias the fitted plane (an S_corr offset
    of -0.1 at 4.5" seeing with 2 px)."""
    return max(2, int(_fwhm_px(header, 2.0) + 0.5))


def _source_mask(new, ref_scaled, bad, *, nsigma: float = 3.0, grow: int = 2):
    """Pixels of sources of either image (for background matching).

    Sources are detected on both images smoothed with a Gaussian of 1 px (``nsigma`` times
    the robust standard deviation of the smoothed image), so the faint sources of the deep
    reference are found too, and grown by ``grow`` pixels. Masking only the science pixels
    above 3 sigma leaves the wings of sources and the faint sources in the fit, whose
    PSF-mismatch residuals bias the fitted plane by ~0.05 sigma (an S_corr offset of ~0.1).
    """
    out = np.zeros(new.shape, bool)
    for img in (new, ref_scaled):
        sm = filters.gaussian_filter(np.where(bad, np.float32(0), img), 1.0)
        v = sm[::3, ::3][~bad[::3, ::3]]  # statistics from every 9th pixel (1 million)
        med = float(np.median(v))
        std = 1.4826 * float(np.median(np.abs(v - med)))
        out |= sm - med > nsigma * std
    return filters.binary_dilation(out, grow)


_STAR_COLUMNS = ("x", "y", "flux_auto", "flux_auto_err", "peak", "flags")


def _science_catalogue(path: Path) -> Table | None:
    """The science image's aperture catalogue (``_sexcat.fits`` beside ``_sciimg.fits``) with
    the columns star selection needs, or None."""
    p = _sibling(Path(path), "_sciimg.fits", "_sexcat.fits")
    if p is None:
        return None
    try:
        t = read_table(p)
    except (OSError, KeyError, TypeError, ValueError) as exc:
        log.warning("%s: unreadable catalogue (%s); extracting the PSF stars again", p, exc)
        return None
    return t if all(c in t.colnames for c in _STAR_COLUMNS) else None


def _psfs(sci: _Image, ref: _Image, new, ref_img, bad_ref):
    """PSF stamps of both images on the science grid: stacked from common stars, else models.

    Returns ``(psf_n, psf_r, n_stars, x, y)`` (the stars' science positions).
    """
    half = max(_half(sci.psf), _half(ref.psf), 10)
    saturate = float(sci.header.get("SATURATE", np.inf)) - float(sci.header.get("SKYBKG", 0.0))
    cat = sci.catalogue if sci.catalogue is not None else _science_catalogue(sci.path)
    if cat is not None:
        flux, err = np.asarray(cat["flux_auto"], float), np.asarray(cat["flux_auto_err"], float)
        with np.errstate(invalid="ignore", divide="ignore"):
            snr = flux / err
        x, y = diffpsf.select_catalogue_stars(cat["x"], cat["y"], flux, snr, cat["peak"],
                                              cat["flags"], sci.bad | bad_ref,
                                              peak_max=0.8 * saturate, edge=half + 8)
    else:  # no catalogue of the science image: extract its stars here
        x, y = diffpsf.select_stars(new, sci.sky_rms, sci.bad | bad_ref, peak_max=0.8 * saturate,
                                    edge=half + 8)
    fwhm = _fwhm_px(sci.header, 2.5)
    r0 = min(max(_TAPER[0] * fwhm, 4.0), half - 2.0)
    psf_n, psf_r, n = diffpsf.stacked_psfs(new, ref_img, x, y, half,
                                           taper=(r0, min(r0 + _TAPER[1] * fwhm, half)))
    if psf_n is None:
        ny, nx = new.shape
        psf_n, psf_r = _psf_pair(sci, ref, (nx - 1) / 2, (ny - 1) / 2, half)
        x, y = np.empty(0), np.empty(0)
    return psf_n, psf_r, n, x, y


def _search_margin(P_D) -> int:
    """Margin (pixels) kept free of candidates along the image border and the edge of the
    reference footprint: the candidates' EDGE rule (10 px), at most the P_D stamp's reach."""
    return min(int(cands.FilterRules().edge), P_D.shape[0] // 2)


def _exclusion(footprint, reach):
    """Pixels where no candidate is searched: outside the reference footprint or the border."""
    out = filters.binary_dilation(~footprint, reach)
    out[:reach], out[-reach:], out[:, :reach], out[:, -reach:] = True, True, True, True
    return out


# ---------------------------------------------------------------------------------------
# candidates
# ---------------------------------------------------------------------------------------
def _median_s_var(z) -> float:
    """Median of ZOGY's S variance (a scalar where it is one), NaN ignored."""
    return float(np.nanmedian(z.S_var)) if np.ndim(z.S_var) else float(z.S_var)


def _diff_images(z, sci: _Image, bad, apcorr: float,
                 s_var_median: float) -> cands.DifferenceImages:
    var_bg = float((z.flux_zp_new / z.F_D) ** 2)
    s_var = np.asarray(z.S_var) if np.ndim(z.S_var) else z.S_var
    var_flux = var_bg * s_var / s_var_median if np.ndim(s_var) else var_bg
    return cands.DifferenceImages(D=z.D, S=z.S, S_corr=z.S_corr, S_var=z.S_var, D_flux=z.D_flux,
                                  var_flux=var_flux, P_D=z.P_D, s_to_flux=z.s_to_flux, bad=bad,
                                  zp=sci.zp, apcorr=apcorr)


def _reference_catalogue(ref: _Image, sci: _Image) -> Table | None:
    """The reference PSF catalogue (``_refpsfcat.fits``) with science-grid positions."""
    p = _sibling(ref.path, "_refimg.fits", "_refpsfcat.fits")
    if p is None:
        return None
    t = read_table(p)
    if "ra" not in t.colnames or len(t) == 0:
        return None
    t["x_sci"], t["y_sci"] = sci.wcs.world_to_pixel_values(np.asarray(t["ra"]), np.asarray(t["dec"]))
    return t


def _add_nearest(t: Table, refcat: Table | None, sci: _Image):
    names = ("distnr", "magnr", "sigmagnr", "chinr", "sharpnr", "ranr", "decnr")
    for n in names:
        t[n] = np.full(len(t), np.nan)
    if refcat is None or len(t) == 0:
        return
    idx, dist = cands.match_reference(t["xpos"], t["ypos"], refcat["x_sci"], refcat["y_sci"],
                                      max_dist=_MATCH_ARCSEC / _PIXSCALE)
    ok = idx >= 0
    j = idx[ok]
    t["distnr"][ok] = dist[ok]
    for out, col in (("magnr", "mag"), ("sigmagnr", "mag_err"), ("sharpnr", "sharpness"),
                     ("ranr", "ra"), ("decnr", "dec")):
        if col in refcat.colnames:
            t[out][ok] = np.asarray(refcat[col], float)[j]
    if "chi2" in refcat.colnames:
        t["chinr"][ok] = np.sqrt(np.clip(np.asarray(refcat["chi2"], float)[j], 0, None))


def _bright_star_halo(t: Table, refcat: Table | None) -> np.ndarray:
    """:func:`zsds.core.candidates.bright_star_halo` against the reference catalogue
    (sources with masked pixels in their fit, ``HAS_MASKED``, count as saturated)."""
    from ..core.psfphot import PSFPHOT_FLAGS

    if refcat is None or "mag" not in refcat.colnames or len(t) == 0:
        return np.zeros(len(t))
    masked = (np.asarray(refcat["flags"], int) & PSFPHOT_FLAGS["HAS_MASKED"]) > 0 \
        if "flags" in refcat.colnames else None
    return cands.bright_star_halo(t["xpos"], t["ypos"], refcat["x_sci"], refcat["y_sci"],
                                  refcat["mag"], masked)


def _extract(im: cands.DifferenceImages, z, sci: _Image, ref: _Image, excl, model_path,
             s_var_median: float) -> tuple[Table, float]:
    lim = cands.diffmaglim(s_var_median, z.s_to_flux, sci.zp, im.apcorr)
    t = cands.find_candidates(im, exclude=excl, diffmaglim_value=lim)
    ra, dec = sci.wcs.pixel_to_world_values(np.asarray(t["xpos"]), np.asarray(t["ypos"]))
    t["ra"], t["dec"] = np.asarray(ra, float), np.asarray(dec, float)
    refcat = _reference_catalogue(ref, sci)
    _add_nearest(t, refcat, sci)
    t["brightstar"] = _bright_star_halo(t, refcat)
    fwhm_pd = cands._psf_fwhm(z.P_D)
    t["filter_bits"] = cands.filter_candidates(t, fwhm_pd)
    t["rb"] = realbogus.predict(realbogus.load_model(model_path), t) if len(t) else np.zeros(0)
    kept = np.asarray(t["filter_bits"]) == 0
    t["index"] = np.where(kept, np.cumsum(kept) - 1, -1)
    return t, lim


def _cutout(a, x, y):
    h = CUTOUT_SIZE // 2
    xi, yi = int(round(x)), int(round(y))
    out = np.full((CUTOUT_SIZE, CUTOUT_SIZE), np.nan, np.float32)
    ny, nx = a.shape
    y0, y1, x0, x1 = max(0, yi - h), min(ny, yi + h + 1), max(0, xi - h), min(nx, xi + h + 1)
    out[y0 - (yi - h):y1 - (yi - h), x0 - (xi - h):x1 - (xi - h)] = a[y0:y1, x0:x1]
    return out


def _cutouts(t: Table, sci_raw, ref_img, d_flux) -> dict:
    out = {}
    for row in t[np.asarray(t["index"]) >= 0]:
        out[int(row["index"])] = tuple(_cutout(a, row["xpos"], row["ypos"])
                                       for a in (sci_raw, ref_img, d_flux))
    return out


# ---------------------------------------------------------------------------------------
# products
# ---------------------------------------------------------------------------------------
def _diff_header(sci: _Image, z, lim) -> fits.Header:
    h = sci.wcs.to_header(relax=True)
    for k in ("FIELDID", "FILTER", "FILTERID", "CCD_ID", "QID", "RCID", "OBSJD", "EXPID",
              "PROGRMID", "EXPTIME"):
        if k in sci.header:
            h[k] = sci.header[k]
    h["BUNIT"] = "DN"
    h["MAGZP"] = (sci.zp, "science zero point (difference in science DN)")
    h["DIFMGLIM"] = (round(lim, 4), "5-sigma limit of the difference image [mag]")
    h["ZOGYFD"] = (float(z.F_D), "flux zero point of D (ZOGY16 eq. 15)")
    h["NFFT"] = (int(z.n_fft), "full-size FFTs of the subtraction")
    return h


def _cutout_hdu(cutouts: dict, t: Table) -> fits.HDUList:
    keys = sorted(cutouts)
    cube = np.stack([np.stack(cutouts[k]) for k in keys]).astype(np.float32) if keys else \
        np.zeros((0, 3, CUTOUT_SIZE, CUTOUT_SIZE), np.float32)
    hdu = fits.ImageHDU(cube, name="CUTOUTS")
    hdu.header["COMMENT"] = "axis 4: kept candidate (INDEX table), axis 3: science, reference, difference"
    idx = fits.BinTableHDU(Table({"index": np.asarray(keys, np.int64)}), name="INDEX")
    return fits.HDUList([fits.PrimaryHDU(), hdu, idx])


def _write_products(paths: dict, sci: _Image, z, t: Table, cutouts, lim, qa) -> None:
    h = _diff_header(sci, z, lim)
    # quantised to 1/16 of the background noise: sqrt(var_bg) DN for D_flux, 1 for S_corr
    write_image(paths["scimrefdiffimg.fits.fz"], z.D_flux.astype(np.float32), h, compress=True,
                noise=float(abs(z.flux_zp_new / z.F_D)))
    write_image(paths["scimrefdiffimgscorr.fits.fz"], z.S_corr.astype(np.float32), h, compress=True,
                noise=1.0)
    write_image(paths["diffimgpsf.fits"], z.P_D.astype(np.float32))
    tab = t.copy()
    tab.meta.update(DIFMGLIM=lim, MAGZP=sci.zp)
    write_table(paths["diffimcands.fits"], tab, header=h)
    write_hdulist(paths["diffimcutouts.fits"], _cutout_hdu(cutouts, t))
    lines = [f"zsds subtraction {sci.path.name}"] + [f"{k}: {v}" for k, v in sorted(qa.items())]
    write_text(paths["diffimlog.txt"], "\n".join(lines) + "\n")


def read_cutouts(path) -> dict:
    """``index -> (science, reference, difference)`` arrays from a ``diffimcutouts.fits``."""
    with fits.open(path, memmap=False) as h:
        cube = np.asarray(h["CUTOUTS"].data, np.float32)
        keys = np.asarray(h["INDEX"].data["index"], int)
    return {int(k): tuple(cube[i]) for i, k in enumerate(keys)}


def _scorr_stats(z, footprint, excl) -> dict:
    """Mean and std of S_corr over source-free pixels (|S_corr| < 5 and away from detections)."""
    strong = filters.binary_dilation(np.abs(z.S_corr) > 5, 6)
    sel = footprint & ~excl & ~strong & ~z.mask
    v = z.S_corr[sel]
    return {"scorr_mean": float(np.mean(v)), "scorr_std": float(np.std(v)),
            "scorr_npix": int(v.size)}


# ---------------------------------------------------------------------------------------
# streaks (zsds.stages.streaks)
# ---------------------------------------------------------------------------------------
def _add_streaks(out: SubtractionResult, sci: _Image, ref_scaled, im: cands.DifferenceImages,
                 excl) -> None:
    """Detect the streaks of the difference image; fill ``out.streaks`` and its cutouts."""
    from .streaks import find_streaks, streak_cutouts

    z = out.zogy
    out.streaks = find_streaks(z.S_corr, z.D_flux, im.var_flux, z.P_D, im.bad, excl, sci.wcs,
                               sci.zp, im.apcorr)
    out.streak_cutouts = streak_cutouts(out.streaks, sci.data, ref_scaled, z.D_flux)
    out.qa["n_streaks"] = len(out.streaks)


def _write_streak_product(out: SubtractionResult, sci: _Image, lim) -> None:
    from .streaks import write_streaks

    write_streaks(out.paths["diffimstreaks.fits"], out.streaks, out.streak_cutouts,
                  _diff_header(sci, out.zogy, lim))


def _register_streaks(engine, job, pid, streaks) -> None:
    from .streaks import register_streaks, streak_records

    register_streaks(engine, job, streak_records(streaks, job, pid, _FID.get(job.filter_code))
                     if streaks is not None else [])


# ---------------------------------------------------------------------------------------
# public
# ---------------------------------------------------------------------------------------
def subtract_images(sci_path, ref_path, *, sci_psf=None, ref_psf=None, out_dir=None,
                    threads: int = 1, model_path=None, prefix: str | None = None,
                    calibrated=None, fft_wisdom=None) -> SubtractionResult:
    """ZOGY subtraction and candidate extraction of a calibrated science/reference pair.

    Parameters
    ----------
    sci_path, ref_path : path
        Calibrated images with WCS and MAGZP (``GAIN`` used if present). Sibling products
        are used when they exist: science ``_mskimg.fits`` and ``_sciimgpsf.fits``; reference
        ``_refunc.fits``, ``_refpsf.fits``, ``_refpsfcat.fits``.
    sci_psf, ref_psf : path, optional
        PSF files: a :meth:`PSFModel.to_fits` model or a centred 2-D stamp. Default: the
        sibling products, else a model estimated from the image's stars.
    out_dir : path, optional
        Write the products there (names: ``prefix`` + ZTF suffixes).
    threads : int
        FFTW threads.
    model_path : path, optional
        Real-bogus model (default: the packaged one).
    prefix : str, optional
        Product name prefix (default: the science file name without ``sciimg.fits``).
    calibrated : zsds.stages.calibrate.CalibratedQuadrant, optional
        The science quadrant as just calibrated in this process (the products at
        ``sci_path`` are its): used instead of reading them back, with the same result.
    fft_wisdom : path, optional
        Use measured FFTW plans shared through this wisdom file
        (``config.processing.wisdom_file()``; see :mod:`zsds.io.fftwisdom`). Default:
        estimated plans.

    Returns
    -------
    SubtractionResult
    """
    t0 = time.perf_counter()
    if calibrated is not None and calibrated.psf_model is not None and sci_psf is None:
        sci = _science_in_memory(sci_path, calibrated)
    else:
        sci = _load_image(sci_path, sci_psf, "sci")
    ref = _load_image(ref_path, ref_psf, "ref")
    t_load = time.perf_counter()
    res = _align(sci, ref)
    z, ref_scaled, bad_ref, cal = _run_zogy(sci, ref, res, threads, fft_wisdom)
    t_zogy = time.perf_counter()
    bad = sci.bad | (bad_ref & res.footprint)
    excl = _exclusion(res.footprint, _search_margin(z.P_D))
    s_var_median = _median_s_var(z)
    im = _diff_images(z, sci, bad, cal["apcorr"], s_var_median)
    t, lim = _extract(im, z, sci, ref, excl, model_path, s_var_median)
    t_ext = time.perf_counter()
    qa = {"n_detections": len(t), "n_candidates": int(np.sum(np.asarray(t["index"]) >= 0)),
          "diffmaglim": lim, "n_fft": int(z.n_fft), "seconds_load": t_load - t0,
          "seconds_zogy": t_zogy - t_load, "seconds_extract": t_ext - t_zogy,
          "n_psf_stars": cal["n_psf_stars"], "flux_scale": cal["scale"], "apcorr": cal["apcorr"],
          "footprint_fraction": float(res.footprint.mean()), "map_error": res.max_map_error,
          **_scorr_stats(z, res.footprint, excl)}
    cut = _cutouts(t, sci.data, ref_scaled, z.D_flux)
    out = SubtractionResult(t, z, lim, res.footprint, cut, {}, qa)
    _add_streaks(out, sci, ref_scaled, im, excl)
    if out_dir is not None:
        stem = prefix or Path(sci_path).name.replace("sciimg.fits", "")
        out.paths = {sfx: Path(out_dir) / f"{stem}{sfx}" for sfx in DIFF_SUFFIXES}
        _write_products(out.paths, sci, z, t, cut, lim, qa)
        _write_streak_product(out, sci, lim)
    qa["seconds"] = time.perf_counter() - t0
    return out


def _current_reference(engine, job) -> dict | None:
    c = s.reference_images.c
    where = ((c.field_id == job.field_id) & (c.filter_code == job.filter_code)
             & (c.ccd_id == job.ccd_id) & (c.qid == job.qid) & (c.status == "valid"))
    with engine.connect() as conn:
        row = conn.execute(select(s.reference_images).where(where).order_by(c.version.desc())).first()
    return None if row is None else dict(row._mapping)


def _records(t: Table, job, pid, lim, refrow, sci: dict) -> list[dict]:
    """Candidate records (ZTF ``candidate`` field names + zsds extras) of the kept rows."""
    rcid = 4 * (job.ccd_id - 1) + job.qid - 1
    skip = {"flux", "flux_err", "filter_bits", "psfflags", "index"}
    out = []
    for row in t[np.asarray(t["index"]) >= 0]:
        rec = {k: _value(row[k]) for k in t.colnames if k not in skip}
        rec["xpos"], rec["ypos"] = rec["xpos"] + 1.0, rec["ypos"] + 1.0  # FITS convention
        idx = int(row["index"])
        rec.update(candid=make_candid(pid, idx), index=idx, pid=pid, jd=job.obsjd,
                   fid=_FID.get(job.filter_code), programid=job.programid, rcid=rcid,
                   field=job.field_id, expid=job.expid, ccd_id=job.ccd_id, qid=job.qid,
                   diffmaglim=lim, rfid=int(refrow["id"]), nframesref=int(refrow["n_frames"]),
                   jdstartref=refrow["jd_start"], jdendref=refrow["jd_end"],
                   rbversion=realbogus.MODEL_VERSION, magzpsci=sci.get("magzp"),
                   magzpsciunc=sci.get("magzpunc"), magzpscirms=sci.get("magzprms"),
                   clrcoeff=sci.get("clrcoeff"), clrcounc=sci.get("clrcounc"), exptime=30.0,
                   tblid=idx, nid=pid // 10**8)
        out.append(rec)
    return out


def _value(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return None if not np.isfinite(v) else float(v)
    return str(v) if isinstance(v, (np.str_, str)) else v


def _register(engine, job, pid, records, lim, footprint_json):
    """Replace the quadrant's candidate rows and record its limit and footprint."""
    from ..alerts.objects import assign_object_ids

    c = s.candidates.c
    key = (c.expid == job.expid) & (c.ccd_id == job.ccd_id) & (c.qid == job.qid)
    with engine.begin() as conn:
        conn.execute(delete(s.alerts).where(s.alerts.c.candid.in_(select(c.candid).where(key))))
        conn.execute(delete(s.candidates).where(key))
    object_ids = assign_object_ids(engine, records) if records else []
    q = s.quadrant_images.c
    qkey = (q.expid == job.expid) & (q.ccd_id == job.ccd_id) & (q.qid == job.qid)
    fp = json.loads(footprint_json) if footprint_json else None
    values = dict(pid=pid, diffmaglim=lim, footprint=footprint_json, updated_at=utcnow())
    if fp:
        ra, dec = np.array(fp).T
        values.update(ra_center=float(np.mean(ra)), dec_center=float(np.mean(dec)),
                      footprint_radius=float(np.max(np.hypot((ra - ra.mean()) * np.cos(np.radians(dec.mean())),
                                                             dec - dec.mean()))))
    with engine.begin() as conn:
        conn.execute(update(s.quadrant_images).where(qkey).values(**values))
    set_quadrant_status(engine, job.expid, job.ccd_id, job.qid, "subtracted", None)
    return object_ids


def _science_row(engine, job) -> dict:
    c = s.science_images.c
    with engine.connect() as conn:
        row = conn.execute(select(s.science_images).where(
            (c.expid == job.expid) & (c.ccd_id == job.ccd_id) & (c.qid == job.qid))).first()
    return {} if row is None else dict(row._mapping)


def subtract_job(config, job, engine, calibrated=None) -> dict:
    """Subtract the current reference from a calibrated quadrant; write and register the results.

    Parameters
    ----------
    config : ZsdsConfig
    job : zsds.pipeline.night.QuadrantJob
    engine : sqlalchemy.Engine
    calibrated : zsds.stages.calibrate.CalibratedQuadrant, optional
        The quadrant's calibration, if it was just made in this process (saves reading it
        back and re-estimating its background; same result).

    Returns
    -------
    dict
        ``subtracted`` (False with ``reason`` when there is no reference: not an error), QA
        numbers, ``candidates`` (records with ZTF candidate field names, ``candid``,
        ``objectId``; ready for :func:`zsds.alerts.packet.make_alert`) and ``cutouts_path``
        (read with :func:`read_cutouts`, keyed by the record's ``index``).
    """
    refrow = _current_reference(engine, job)
    if refrow is None:
        return {"subtracted": False, "reason": "no reference"}
    layout = ArchiveLayout(config.archive.root)
    sci_row = _science_row(engine, job)
    sci_path = layout.sci_path(job.filefracday, job.field_id, job.filter_code, job.ccd_id, job.qid,
                               "sciimg.fits")
    out_dir = sci_path.parent
    r = subtract_images(sci_path, layout.root / refrow["path"], out_dir=out_dir,
                        threads=config.processing.fft_threads, calibrated=calibrated,
                        fft_wisdom=config.processing.wisdom_file())
    record_checksums(engine, layout.root, r.paths.values())
    pid = make_pid(job.filefracday, 4 * (job.ccd_id - 1) + job.qid - 1)
    records = _records(r.candidates, job, pid, r.diffmaglim, refrow, sci_row)
    object_ids = _register(engine, job, pid, records, r.diffmaglim, sci_row.get("footprint"))
    _register_streaks(engine, job, pid, r.streaks)
    for rec, oid in zip(records, object_ids):
        rec["objectId"] = oid
    qa = {k: v for k, v in r.qa.items() if isinstance(v, (int, float))}
    return {"subtracted": True, **qa, "candidates": records,
            "cutouts_path": str(r.paths["diffimcutouts.fits"])}
