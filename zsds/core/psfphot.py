"""Vectorised PSF-fit photometry of all detections (``psfcat`` content).

All sources are fitted at once on ``(n, k, k)`` stamp stacks: a weighted linear flux fit plus
Gauss-Newton steps on the position (PSF gradients from the model), then a second pass in
which the fitted models of all *other* sources are subtracted from each stamp (neighbours).

Local sky: the background map (a mode of cells between the detections) misses the light of
faint unresolved sources and wings; each source gets a local sky, the clipped mean in an
annulus of the image minus the models of all fitted sources, subtracted before the refit (the
model's aperture correction is measured on its stars with the same definition).

Masked pixels: a source with masked pixels in its fit disc (a bad column, a cosmic-ray
mask on a star's core) may have a catalogue centroid 1-3 px off, or be one of two detections
of the same star split by the mask; such sources start from the best of a grid of trial
positions, and of two that then fit onto the same star the fainter is flagged ``DUPLICATE``
and measured (forced, ~0) at its catalogue position with the other subtracted.

Noise model: the fit weights are ``1 / sky_variance`` (independent of the data, so bright
sources are not biased by data-dependent weights); the flux error propagates the full
``variance`` map (sky + source Poisson noise) through those weights:
``var(F) = sum(w^2 P^2 V) / (sum(w P^2))^2`` (with fitted positions, the flux variance of
the joint flux-position fit when larger, as where masked pixels break the symmetry), plus the
local sky's error and the PSF-model error ``(k F)^2`` (``k`` from the model's meta, measured
on stars left out of the model). Fluxes are total fluxes: the model flux times
the model's aperture correction (:attr:`zsds.core.psf.PSFModel.apcorr`; "total" = within
``psf_model.meta['total_radius']``, 30 px).

Conventions: numpy ``[y, x]``, 0-based positions in and out.
"""

from __future__ import annotations

import numba
import numpy as np
from astropy.table import Table
from scipy.spatial import cKDTree

from .psf import PSFModel, cutouts, disc, fit_flux_position, ring_sky

__all__ = ["PSFPHOT_COLUMNS", "PSFPHOT_FLAGS", "psf_photometry"]

#: Bits of the ``flags`` column.
PSFPHOT_FLAGS = {"NOT_CONVERGED": 1, "POSITION_FIXED": 2, "NEAR_EDGE": 4, "HAS_MASKED": 8,
                 "NONPOSITIVE": 16, "DUPLICATE": 32}

#: (name, unit, description) of the output columns.
PSFPHOT_COLUMNS = [
    ("x", "pix", "fitted x, 0-based"),
    ("y", "pix", "fitted y, 0-based"),
    ("x_err", "pix", "1-sigma error of x"),
    ("y_err", "pix", "1-sigma error of y"),
    ("flux", "DN", "total flux (PSF fit x aperture correction)"),
    ("flux_err", "DN", "1-sigma error of flux (sky, source noise, local sky, PSF model)"),
    ("snr", "", "flux / flux_err"),
    ("sky", "DN", "local sky subtracted under the source (on top of the background map)"),
    ("chi2", "", "reduced chi-square of the fit over the fitted pixels"),
    ("sharpness", "", "excess second moment of the residual (0 star, >0 extended, <0 sharp)"),
    ("npix", "pix", "number of pixels used in the fit"),
    ("flags", "", "bits, see PSFPHOT_FLAGS"),
]


def _stamps(image, variance, sky_variance, mask, x, y, half, radius):
    data, inside, xi, yi = cutouts(image, x, y, half)
    var = cutouts(variance, x, y, half, fill=np.inf)[0].astype(np.float64)
    skyv = var if sky_variance is None else cutouts(sky_variance, x, y, half, fill=np.inf)[0]
    g = np.arange(-half, half + 1)
    disk = (g[None, :] ** 2 + g[:, None] ** 2) <= radius**2
    good = inside & disk[None] & np.isfinite(var) & (var > 0)
    masked = np.zeros_like(good) if mask is None else cutouts(mask, x, y, half, fill=True)[0] & inside & disk
    good &= ~masked
    weight = np.where(good, 1.0 / np.where(good, skyv, 1.0), 0.0)
    return data.astype(np.float64), np.where(good, var, 0.0), weight, xi, yi, masked.any((1, 2)), ~inside.all((1, 2))


def _fit(psf, data, weight, x, y, xi, yi, half, fit_positions, n_iter, max_shift):
    x0, y0 = x.copy(), y.copy()
    for _ in range(n_iter if fit_positions is not False else 1):
        m, gx, gy = psf.evaluate(x, y, half, gradient=True, xi=xi, yi=yi)
        flux, ddx, ddy = fit_flux_position(data, weight, m, gx, gy, fit_positions)
        x, y = x + np.clip(ddx, -0.5, 0.5), y + np.clip(ddy, -0.5, 0.5)
    far = np.hypot(x - x0, y - y0) > max_shift
    x, y = np.where(far, x0, x), np.where(far, y0, y)
    m, gx, gy = psf.evaluate(x, y, half, gradient=True, xi=xi, yi=yi)
    flux = fit_flux_position(data, weight, m, gx, gy, False)[0]
    return flux, x, y, m, gx, gy, far | (np.abs(ddx) > 0.05) | (np.abs(ddy) > 0.05)


def _restart_masked(image, variance, sky_variance, mask, psf, x0, y0, sel, stamps, half, radius):
    """New start positions for the sources ``sel`` (positions fitted, masked pixels in the
    fit disc), whose catalogue centroids masked pixels may have biased (:func:`_search_start`).

    Only a search whose best trial is a local peak inside the trial grid moves a source (one
    on the grid's border is the wing of something farther away); the stamps (the tuple of
    :func:`_stamps`) are re-cut in place around the moved starts.

    Returns
    -------
    x0, y0 : (n,) arrays
        Start positions.
    """
    if not sel.any():
        return x0, y0
    skyv = sky_variance if sky_variance is not None else variance
    idx = np.flatnonzero(sel)
    xs, ys = _search_start(image, skyv, mask, psf, x0[idx], y0[idx], half, radius)
    move = np.zeros(len(x0), bool)
    move[idx] = (xs != x0[idx]) | (ys != y0[idx])
    x0, y0 = x0.copy(), y0.copy()
    x0[idx], y0[idx] = xs, ys
    if move.any():
        new = _stamps(image, variance, sky_variance, mask, x0[move], y0[move], half, radius)
        for arr, vals in zip(stamps, new):
            arr[move] = vals
    return x0, y0


def _duplicates(x, y, flux, searched, merge_radius):
    """Sources that fitted onto another source: one detection split in two by a masked
    column or a falsely flagged cosmic ray, both halves finding the same star.

    Of a pair closer than ``merge_radius`` pixels of which one was ``searched``
    (:func:`_restart_masked`), the fainter is the duplicate; a source that was not searched
    is never one.
    """
    dup = np.zeros(len(x), bool)
    if not searched.any():
        return dup
    rank = np.where(searched, flux, np.inf)
    for a, b in cKDTree(np.c_[x, y]).query_pairs(merge_radius, output_type="ndarray"):
        if searched[a] or searched[b]:
            dup[a if rank[a] < rank[b] else b] = True
    return dup


def _search_start(image, sky_variance, mask, psf, x, y, half, radius, reach=3):
    """Start positions for sources with masked pixels near them: the best of a grid of trial
    positions, half a pixel apart, within ``reach`` (+0.5) pixels of (x, y).

    A catalogue centroid computed without the masked pixels can be off by 1-3 pixels when
    they cover the core (a bad column, a falsely flagged cosmic ray), beyond the reach of
    the Gauss-Newton steps. Every trial position is scored on the same pixels (the
    unmasked ones within ``radius + reach`` of the nearest pixel to (x, y), weights
    ``1 / sky_variance``) by the chi-square decrease of its flux-only fit,
    ``(sum w P d)^2 / sum w P^2`` (positive fluxes only); the best trial wins. The trials
    are integer shifts of the PSF at the four half-pixel phases (a correlation; the model's
    spatial variation over a few pixels is neglected).

    Returns
    -------
    xs, ys : (n,) arrays
        0-based start positions: the best trial, or (x, y) if it lies on the border of the
        trial grid or no trial has a positive flux.
    """
    big = half + reach
    data, _, weight, xi, yi = _stamps(image, sky_variance, sky_variance, mask, x, y, big, radius + reach)[:5]
    k = 2 * half + 1
    wd = np.lib.stride_tricks.sliding_window_view(weight * data, (k, k), axis=(1, 2))
    ww = np.lib.stride_tricks.sliding_window_view(weight, (k, k), axis=(1, 2))
    best = np.full(len(x), -np.inf)
    xs, ys, inner = x.astype(float), y.astype(float), np.zeros(len(x), bool)
    for px in (0.0, 0.5):
        for py in (0.0, 0.5):
            m = psf.evaluate(xi + px, yi + py, half, xi=xi, yi=yi)
            num = np.einsum("nabij,nij->nab", wd, m)
            den = np.einsum("nabij,nij->nab", ww, m * m)
            score = np.where((num > 0) & (den > 0), num**2 / np.where(den > 0, den, 1.0), -np.inf)
            flat = score.reshape(len(x), -1)
            j = np.argmax(flat, axis=1)
            top = flat[np.arange(len(x)), j]
            win = top > best
            oy, ox = np.divmod(j, score.shape[2])
            xs = np.where(win, xi + ox - reach + px, xs)
            ys = np.where(win, yi + oy - reach + py, ys)
            inner = np.where(win, (oy > 0) & (ox > 0) & (oy < score.shape[1] - 1) & (ox < score.shape[2] - 1), inner)
            best = np.maximum(best, top)
    ok = np.isfinite(best) & inner
    return np.where(ok, xs, x), np.where(ok, ys, y)


def _neighbour_models(shape, psf, flux, x, y, half):
    """Image of all fitted sources (each its model stamp of half-width ``half``)."""
    m = psf.evaluate(x, y, half) * flux[:, None, None]
    img = np.zeros(shape)
    _add_stamps(img, m, np.rint(x).astype(np.int64), np.rint(y).astype(np.int64))
    return img


@numba.njit(cache=True)
def _add_stamps(img, stamps, xi, yi):
    """Add stamps (n, k, k) centred on pixels (xi, yi) into ``img`` in place (parts outside
    the image dropped); sources in order, as ``np.bincount`` would sum them."""
    n, k = stamps.shape[0], stamps.shape[1]
    h = k // 2
    ny, nx = img.shape
    for i in range(n):
        for a in range(k):
            row = yi[i] + a - h
            if row < 0 or row >= ny:
                continue
            for b in range(k):
                col = xi[i] + b - h
                if 0 <= col < nx:
                    img[row, col] += stamps[i, a, b]


def _errors(weight, var, m, gx, gy, flux, sky_err, model_error, fitp):
    """Flux and position errors from the weighted normal matrix and the full variance.

    Where the position was fitted (``fitp``) the flux variance is that of the joint
    flux-position fit (it grows where masked pixels correlate flux and position; for a
    symmetric, unmasked PSF it equals the flux-only variance). The flux error adds the local
    sky's error (``sky_err``, DN/px, propagated through the weights) and the PSF-model error
    ``model_error * flux`` in quadrature.
    """
    jx, jy = flux[:, None, None] * gx, flux[:, None, None] * gy
    basis = (m, jx, jy)
    A = np.stack([np.stack([np.einsum("nij,nij->n", weight * u, v) for v in basis], -1) for u in basis], -2)
    B = np.stack([np.stack([np.einsum("nij,nij->n", weight**2 * var * u, v) for v in basis], -1)
                  for u in basis], -2)
    good = np.linalg.det(A) > 0
    A[~good] = np.eye(3)
    Ai = np.linalg.inv(A)
    cov = Ai @ B @ Ai
    spp = np.einsum("nij,nij->n", weight * m, m)
    sp = np.einsum("nij->n", weight * m)
    spp = np.where(spp > 0, spp, np.nan)
    fvar = np.einsum("nij,nij->n", weight**2 * var * m, m) / spp**2
    fvar = np.where(fitp & good, np.maximum(cov[:, 0, 0], fvar), fvar)
    fvar = fvar + (sky_err * sp / spp) ** 2 + (model_error * flux) ** 2
    with np.errstate(invalid="ignore"):
        xerr, yerr = np.sqrt(cov[:, 1, 1]), np.sqrt(cov[:, 2, 2])
    return np.sqrt(fvar), np.where(good, xerr, np.nan), np.where(good, yerr, np.nan)


def _local_sky(image, nb, mask, x, y, annulus):
    """Sky left under each source: clipped mean in an annulus of the image minus all models
    (:func:`zsds.core.psf.annulus_sky` of those stamps, the annulus pixels gathered directly)."""
    half = int(np.ceil(annulus[1]))
    dy, dx = np.nonzero(disc(half, annulus[1], annulus[0]))
    xi, yi = np.rint(np.asarray(x)).astype(np.int64), np.rint(np.asarray(y)).astype(np.int64)
    has_mask = mask is not None
    m = np.asarray(mask, bool) if has_mask else np.zeros((1, 1), bool)
    v, ok = _ring_samples(image, nb, m, has_mask, xi, yi, dy - half, dx - half)
    return ring_sky(v, ok)


@numba.njit(cache=True)
def _ring_samples(image, nb, mask, has_mask, xi, yi, dy, dx):
    """``image - nb`` at pixels (xi + dx, yi + dy) of every source (0 outside the image) and
    whether each is inside and unmasked: (n, len(dy)) float64 and bool."""
    ny, nx = image.shape
    n, m = xi.size, dy.size
    v = np.zeros((m, n)).T  # the memory layouts of numpy's stamps[:, ring] and its flags'
    ok = np.zeros((n, m), np.bool_)  # copy: the clipped sums then add in the same order
    for i in range(n):
        for k in range(m):
            row, col = yi[i] + dy[k], xi[i] + dx[k]
            if 0 <= row < ny and 0 <= col < nx:
                v[i, k] = image[row, col] - nb[row, col]
                ok[i, k] = not (has_mask and mask[row, col])
    return v, ok


def _quality(data, weight, var, m, flux, half):
    """Reduced chi-square, sharpness and number of pixels."""
    resid = data - flux[:, None, None] * m
    npix = (weight > 0).sum((1, 2))
    chi2 = np.einsum("nij,nij->n", np.where(weight > 0, resid**2 / np.where(var > 0, var, 1), 0),
                     np.ones_like(m)) / np.maximum(npix - 3, 1)
    g = np.arange(-half, half + 1)
    r2 = (g[None, :] ** 2 + g[:, None] ** 2)[None]
    num = np.einsum("nij,nij->n", weight * m * r2, resid)
    den = np.einsum("nij,nij->n", weight * m * r2, m) * flux
    with np.errstate(invalid="ignore", divide="ignore"):
        sharp = num / den
    return chi2, sharp, npix


def psf_photometry(image, variance, psf_model: PSFModel, x0, y0, *, fit_positions=True,
                   mask=None, sky_variance=None, fit_radius: float | None = None,
                   n_iter: int = 3, max_shift: float = 1.5, neighbour_passes: int = 1,
                   neighbour_half: int = 8, local_sky: bool = True, sky_annulus=None,
                   model_error: float | None = None, merge_radius: float = 1.0) -> Table:
    """PSF-fit photometry of sources at initial positions (x0, y0).

    Parameters
    ----------
    image : 2-D array
        **Background-subtracted** calibrated image, DN.
    variance : 2-D array
        Per-pixel variance including the source Poisson noise, DN^2.
    psf_model : PSFModel
    x0, y0 : arrays
        Initial 0-based positions (e.g. the aperture catalogue's).
    fit_positions : bool or bool array
        Fit positions (Gauss-Newton, ``n_iter`` steps); otherwise forced photometry.
    mask : 2-D bool array, optional
        Pixels to ignore.
    sky_variance : 2-D array, optional
        Variance of the sky alone, DN^2, for the fit weights (recommended); default the
        ``variance`` map (then bright sources are biased low by data-dependent weights).
    fit_radius : float, optional
        Radius of the fitted disc, pixels (default :meth:`PSFModel.fit_radius`, the radius
        at which the model's aperture correction was measured).
    max_shift : float
        Positions moving further than this (pixels) are reset and flagged.
    neighbour_passes : int
        Passes refitting each source with all the others' fitted models subtracted.
    neighbour_half : int
        Half-width of the neighbour model stamps, pixels.
    local_sky : bool
        Subtract a local sky per source: the sigma-clipped mean, in the annulus
        ``sky_annulus``, of the image minus the models of all fitted sources (the background
        map misses the light of faint unresolved sources); its error enters ``flux_err``.
    sky_annulus : (float, float), optional
        Inner and outer radii, pixels; default the model's ``meta['sky_annulus']`` (the
        annulus with which its aperture correction was measured).
    model_error : float, optional
        Relative PSF-model error added in quadrature to the flux errors; default the
        model's ``meta['model_error']`` (measured on stars left out of the model).
    merge_radius : float
        A source with masked pixels in its fit disc, whose start position was searched
        afresh, that fits within this many pixels of another source is a duplicate (flag
        ``DUPLICATE``): its flux is fitted at its catalogue position with the other
        subtracted (~0: the light is counted once).

    Returns
    -------
    astropy.table.Table
        Columns of :data:`PSFPHOT_COLUMNS`, one row per input position, same order.
        ``meta['APCORR']`` is the aperture correction applied.
    """
    img = np.asarray(image, np.float64)
    x0, y0 = np.atleast_1d(np.asarray(x0, float)), np.atleast_1d(np.asarray(y0, float))
    radius = fit_radius or psf_model.fit_radius()
    half = int(np.ceil(radius))
    annulus = sky_annulus or (psf_model.meta.get("sky_r_in", 6.0), psf_model.meta.get("sky_r_out", 12.0))
    k = psf_model.meta.get("model_error", 0.0) if model_error is None else model_error
    data, var, weight, xi, yi, has_mask, edge = _stamps(img, variance, sky_variance, mask, x0, y0, half, radius)
    fitp = np.broadcast_to(np.asarray(fit_positions), x0.shape).copy()
    searched = fitp & has_mask
    stamps = (data, var, weight, xi, yi, has_mask, edge)
    x_cat, y_cat = x0, y0
    x0, y0 = _restart_masked(img, variance, sky_variance, mask, psf_model, x0, y0, searched, stamps, half, radius)
    flux, x, y, m, gx, gy, notconv = _fit(psf_model, data, weight, x0, y0, xi, yi, half,
                                          fitp, n_iter, max_shift)
    dup = _duplicates(x, y, flux, searched, merge_radius)
    if dup.any():  # back to the catalogue position, forced
        fitp &= ~dup
        x0, y0 = np.where(dup, x_cat, x0), np.where(dup, y_cat, y0)
        x, y = np.where(dup, x_cat, x), np.where(dup, y_cat, y)
        for arr, vals in zip(stamps, _stamps(img, variance, sky_variance, mask, x[dup], y[dup], half, radius)):
            arr[dup] = vals
    sky = sky_err = np.zeros_like(flux)
    data_fit = data
    for _ in range(max(neighbour_passes, int(local_sky))):
        counted = np.where(dup, 0.0, flux)  # a duplicate's light is its twin's
        nb = _neighbour_models(img.shape, psf_model, counted, x, y, neighbour_half)
        own = psf_model.evaluate(x, y, half, xi=xi, yi=yi) * counted[:, None, None]
        others = cutouts(nb, x0, y0, half)[0] - own if neighbour_passes else 0.0
        if local_sky:
            sky, sky_err = _local_sky(img, nb, mask, x, y, annulus)
        data_fit = data - others - sky[:, None, None]
        flux, x, y, m, gx, gy, notconv = _fit(psf_model, data_fit, weight, x, y, xi, yi, half,
                                              fitp, n_iter, max_shift)
    ferr, xerr, yerr = _errors(weight, var, m, gx, gy, flux, sky_err, k, fitp & (flux > 0))
    chi2, sharp, npix = _quality(data_fit, weight, var, m, flux, half)
    flags = (np.where(notconv, PSFPHOT_FLAGS["NOT_CONVERGED"], 0)
             | np.where(fitp | dup, 0, PSFPHOT_FLAGS["POSITION_FIXED"])
             | np.where(dup, PSFPHOT_FLAGS["DUPLICATE"], 0)
             | np.where(edge, PSFPHOT_FLAGS["NEAR_EDGE"], 0) | np.where(has_mask, PSFPHOT_FLAGS["HAS_MASKED"], 0)
             | np.where(flux > 0, 0, PSFPHOT_FLAGS["NONPOSITIVE"]))
    ap = psf_model.apcorr
    cols = [x, y, xerr, yerr, flux * ap, ferr * ap, flux / ferr, sky, chi2, sharp, npix, flags.astype(np.int32)]
    out = Table(cols, names=[c[0] for c in PSFPHOT_COLUMNS], units=[u or None for _, u, _ in PSFPHOT_COLUMNS],
                descriptions=[d for _, _, d in PSFPHOT_COLUMNS])
    out.meta.update(APCORR=ap, FITRAD=radius, MODELERR=k)
    return out
