"""Forced PSF photometry on difference images at given positions.

The model of a point source of flux ``f`` at sub-pixel position ``(x, y)`` in a difference
image ``D_flux`` (:attr:`zsds.core.zogy.ZogyResult.D_flux`, DN of the science image) is
``f P_D(. - x, . - y)``. ``P_D`` (odd stamp, centre on its middle pixel, unit sum) is shifted to
the sub-pixel offset by a Fourier phase ramp (exact for a band-limited PSF), then the flux is the
weighted linear least-squares fit over the stamp::

    f     = sum(P D / V) / sum(P^2 / V)
    err   = 1 / sqrt(sum(P^2 / V))
    chi2  = sum((D - f P)^2 / V) / (n - 1)          (reduced, over the n valid pixels)

``V`` is the per-pixel variance of ``D_flux`` (a scalar for ZOGY's white background noise, or a
map including source noise). Masked, non-finite and off-image pixels are left out of the sums
and flagged. The same kernel measures candidates (``magpsf``) and the forced-photometry
histories of alerts (``fp_hists``). Conventions: numpy ``[y, x]``, 0-based positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FORCED_FLAGS", "ForcedPhotometry", "shifted_psf", "forced_photometry"]

#: Bits of the ``flags`` output.
FORCED_FLAGS = {"OFF_IMAGE": 1, "PARTIAL": 2, "MASKED": 4, "NONFINITE": 8, "NO_DATA": 16}


@dataclass(frozen=True)
class ForcedPhotometry:
    """Per-position outputs of :func:`forced_photometry` (arrays of length n).

    Attributes
    ----------
    flux, err : float64
        Fitted flux and its 1-sigma error, units of the image (DN); NaN without data.
    snr : float64
        ``flux / err``.
    chi2 : float64
        Reduced chi-square of the fit.
    flags : int32
        Bits of :data:`FORCED_FLAGS`.
    npix : int32
        Pixels used.
    """

    flux: np.ndarray
    err: np.ndarray
    snr: np.ndarray
    chi2: np.ndarray
    flags: np.ndarray
    npix: np.ndarray


def _unit_stamp(psf) -> np.ndarray:
    p = np.asarray(psf, np.float64)
    if p.ndim != 2 or p.shape[0] % 2 == 0 or p.shape[1] % 2 == 0:
        raise ValueError(f"P_D must be a 2-D stamp of odd sizes, got shape {p.shape}")
    total = p.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError("P_D must have a positive finite sum")
    return p / total


def shifted_psf(psf, dx, dy) -> np.ndarray:
    """Stamps of ``psf`` shifted by sub-pixel offsets (Fourier phase ramp), shape (n, ky, kx).

    Parameters
    ----------
    psf : 2-D array
        Odd-sized stamp centred on its middle pixel (normalised to unit sum here).
    dx, dy : arrays of length n
        Offsets of the source from the stamp's centre pixel, pixels (|offset| <= ~1).
    """
    p = _unit_stamp(psf)
    dx, dy = np.atleast_1d(np.asarray(dx, float)), np.atleast_1d(np.asarray(dy, float))
    ky, kx = p.shape
    fy = np.fft.fftfreq(ky)[None, :, None]
    fx = np.fft.rfftfreq(kx)[None, None, :]
    ramp = np.exp(-2j * np.pi * (fx * dx[:, None, None] + fy * dy[:, None, None]))
    hat = np.fft.rfft2(np.fft.ifftshift(p))
    out = np.fft.irfft2(hat[None] * ramp, s=(ky, kx), axes=(1, 2))
    return np.fft.fftshift(out, axes=(1, 2))


def _stamp_index(shape, xi, yi, ky, kx):
    """Pixel indices (n, ky, kx) of stamps centred on (yi, xi) and their in-image flags."""
    gy = yi[:, None, None] + np.arange(ky)[None, :, None] - ky // 2
    gx = xi[:, None, None] + np.arange(kx)[None, None, :] - kx // 2
    inside = (gy >= 0) & (gy < shape[0]) & (gx >= 0) & (gx < shape[1])
    return np.clip(gy, 0, shape[0] - 1), np.clip(gx, 0, shape[1] - 1), inside


def _gather(a, gy, gx, ky, kx):
    if a is None:
        return None
    if np.ndim(a) == 0:
        return np.full(gy.shape, float(a))
    return np.asarray(a)[gy, gx].astype(np.float64)


def forced_photometry(D_flux, P_D, variance, positions, *, mask=None,
                      radius: float | None = None) -> ForcedPhotometry:
    """PSF-fit fluxes at fixed positions on a difference image.

    Parameters
    ----------
    D_flux : 2-D array
        Difference image in flux units of the science image (DN).
    P_D : 2-D array
        PSF of the difference image (odd stamp, centred); fits use the whole stamp, or a disc
        of ``radius`` pixels.
    variance : float or 2-D array
        Per-pixel variance of ``D_flux``, DN^2.
    positions : (n, 2) array-like
        0-based ``(x, y)`` pixel positions.
    mask : 2-D bool array, optional
        Pixels to leave out (bad or unreliable).
    radius : float, optional
        Fit only pixels within this distance of the position.

    Returns
    -------
    ForcedPhotometry
    """
    img = np.asarray(D_flux)
    pos = np.atleast_2d(np.asarray(positions, float))
    if img.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"D_flux must be 2-D and positions (n, 2); got {img.shape}, {pos.shape}")
    x, y = pos[:, 0], pos[:, 1]
    xi, yi = np.rint(x).astype(int), np.rint(y).astype(int)
    p = _unit_stamp(P_D)
    ky, kx = p.shape
    model = shifted_psf(p, x - xi, y - yi)
    gy, gx, inside = _stamp_index(img.shape, xi, yi, ky, kx)
    data = img[gy, gx].astype(np.float64)
    var = _gather(variance, gy, gx, ky, kx)
    ok = inside & np.isfinite(data) & np.isfinite(var) & (var > 0)
    masked = np.zeros_like(ok) if mask is None else (np.asarray(mask, bool)[gy, gx] & inside)
    if radius is not None:
        ry = np.arange(ky)[:, None] - ky // 2
        rx = np.arange(kx)[None, :] - kx // 2
        disc = (ry - (y - yi)[:, None, None]) ** 2 + (rx - (x - xi)[:, None, None]) ** 2 <= radius**2
        ok &= disc
        masked &= disc
    ok &= ~masked
    return _fit(data, var, model, ok, masked, inside, x, y, img.shape)


def _fit(data, var, model, ok, masked, inside, x, y, shape) -> ForcedPhotometry:
    w = np.where(ok, 1.0 / np.where(ok, var, 1.0), 0.0)
    d = np.where(ok, data, 0.0)
    spp = np.sum(w * model**2, axis=(1, 2))
    spd = np.sum(w * model * d, axis=(1, 2))
    npix = ok.sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        flux = np.where(spp > 0, spd / spp, np.nan)
        err = np.where(spp > 0, 1.0 / np.sqrt(spp), np.nan)
        resid = np.sum(w * (d - flux[:, None, None] * model) ** 2, axis=(1, 2))
        chi2 = np.where(npix > 1, resid / (npix - 1), np.nan)
        snr = flux / err
    off = (x < -0.5) | (y < -0.5) | (x > shape[1] - 0.5) | (y > shape[0] - 0.5)
    flags = (np.where(off, FORCED_FLAGS["OFF_IMAGE"], 0)
             | np.where(~inside.all(axis=(1, 2)), FORCED_FLAGS["PARTIAL"], 0)
             | np.where(masked.any(axis=(1, 2)), FORCED_FLAGS["MASKED"], 0)
             | np.where(~np.isfinite(data).all(axis=(1, 2)), FORCED_FLAGS["NONFINITE"], 0)
             | np.where(npix == 0, FORCED_FLAGS["NO_DATA"], 0))
    return ForcedPhotometry(flux, err, snr, chi2, flags.astype(np.int32), npix.astype(np.int32))
