"""Flux-scale and background matching of a reference to a science image before ZOGY.

Convention: a zero point ``zp`` maps DN to magnitudes, ``m = zp - 2.5 log10(DN)``. A star of
magnitude ``m`` gives ``10^(0.4 (zp - m))`` DN, so the ZOGY flux zero points (DN per unit true
flux, :mod:`zsds.core.zogy`) are ``F = 10^(0.4 zp)`` up to a common factor, which D, S and
S_corr do not depend on. We fix ``F_n = 1``: then ``F_r = 10^(0.4 (zp_ref - zp_new))`` and
``D_flux`` is in DN of the new image.
"""

from __future__ import annotations

import numpy as np
from astropy.stats import sigma_clip

__all__ = ["flux_scale", "zogy_flux_zps", "match_background"]


def flux_scale(zp_new: float, zp_ref: float) -> float:
    """Factor putting the reference on the new image's flux scale, ``F_n / F_r``.

    ``ref * flux_scale(zp_new, zp_ref)`` has the new image's zero point:
    ``10^(-0.4 (zp_ref - zp_new))``.
    """
    return float(10.0 ** (-0.4 * (zp_ref - zp_new)))


def zogy_flux_zps(zp_new: float, zp_ref: float) -> tuple[float, float]:
    """ZOGY ``(F_n, F_r)`` of two images from their zero points, normalised to ``F_n = 1``."""
    return 1.0, 1.0 / flux_scale(zp_new, zp_ref)


def match_background(new, ref_scaled, *, mask=None, order: int = 1, sigma: float = 3.0):
    """Constant (``order=0``) or plane (``order=1``) fitted to ``new - ref_scaled``.

    Both images should already have their background maps subtracted; this removes what is
    left in common (a residual offset or gradient). Pixels in ``mask`` (sources, bad) and
    sigma-clipped outliers are ignored.

    Parameters
    ----------
    new, ref_scaled : 2-D arrays
        Science image and the reference on the same grid and flux scale, DN.
    mask : 2-D bool array, optional
        True for pixels to ignore (detected sources of either image, bad pixels).
    order : int
        0 for a constant, 1 for a plane ``a + b x + c y``.
    sigma : float
        Clipping threshold.

    Returns
    -------
    2-D float32 array
        The fitted model; subtract it from ``new`` (or add it to the reference).
    """
    if order not in (0, 1):
        raise ValueError(f"order must be 0 or 1, got {order}")
    diff = np.asarray(new, np.float32) - np.asarray(ref_scaled, np.float32)
    good = np.isfinite(diff) if mask is None else np.isfinite(diff) & ~np.asarray(mask, bool)
    step = max(1, int(np.sqrt(good.sum() / 2e5)))  # a subsample of ~2e5 pixels suffices
    yy, xx = np.nonzero(good[::step, ::step])
    yy, xx = yy * step, xx * step
    vals = diff[yy, xx].astype(np.float64)
    keep = ~sigma_clip(vals, sigma=sigma, maxiters=5).mask
    basis = np.ones((1, keep.sum())) if order == 0 else np.vstack(
        [np.ones(keep.sum()), xx[keep], yy[keep]])
    coef = np.linalg.lstsq(basis.T, vals[keep], rcond=None)[0]
    ny, nx = diff.shape
    if order == 0:
        return np.full((ny, nx), coef[0], np.float32)
    # (a + b x) + c y in float64, cast to float32 on output (no float64 image in between)
    return np.add((coef[0] + coef[1] * np.arange(nx))[None, :], (coef[2] * np.arange(ny))[:, None],
                  out=np.empty((ny, nx), np.float32), casting="unsafe")
