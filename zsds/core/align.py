"""Resampling a reference image (with its variance and mask) onto a science image's pixel grid.

The pixel-to-pixel mapping (science pixel -> sky -> reference pixel, through both WCSs with
their SIP distortions) is smooth, so it is evaluated exactly only on a coarse grid (every
``step`` pixels, ~10^4 points for a quadrant) and interpolated to every pixel with a bicubic
spline; the maximum error of the interpolated mapping, measured against exact evaluations at
the centres of the coarse cells (where interpolation is worst), is returned with the result.
Evaluating the WCS at every pixel is what makes ``reproject_interp`` slow.

Interpolation of the image is bilinear (order 1), as SWarp's and reproject's bilinear modes:
it needs no prefilter (a cubic spline prefilter rings around stars, spreading a bad pixel's
influence over its neighbours) and it is what ZOGY's PSF model of the reference assumes when
the reference PSF is measured on the resampled image. The variance is interpolated with the
same weights (``sum w V``, as SWarp resamples weight maps): bilinear smoothing correlates the
noise but keeps its power at the PSF scale, which is what ZOGY's score kernels see, whereas
``sum w^2 V`` would be the (smaller) single-pixel variance. The mask is the bitwise OR of the
(up to four) reference pixels with a non-zero weight: a bad reference pixel contaminates every
science pixel it touches.

Footprint: science pixels whose mapped position lies within the reference array,
``-0.5 <= x <= n - 0.5`` (within half a pixel of the edge the nearest edge pixel is used, as
reproject does). Outside the footprint the image and variance are NaN and the mask is
:data:`OUTSIDE`. Conventions: numpy ``[y, x]``, 0-based pixels, float32 outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from scipy.interpolate import RectBivariateSpline

__all__ = ["OUTSIDE", "PixelMap", "Resampled", "pixel_map", "resample_to_grid"]

#: Mask value of science pixels outside the reference footprint (all bits set).
OUTSIDE = -1


@dataclass(frozen=True)
class PixelMap:
    """Reference-pixel coordinates of every science pixel.

    Attributes
    ----------
    x, y : 2-D float64 arrays
        Reference pixel coordinates (0-based) of science pixel ``[j, i]``.
    max_error : float
        Largest distance (pixels) between the interpolated and the exact mapping at the
        centres of the coarse cells.
    """

    x: np.ndarray
    y: np.ndarray
    max_error: float


@dataclass(frozen=True)
class Resampled:
    """A reference resampled onto a science grid.

    Attributes
    ----------
    image, variance : 2-D float32 arrays
        Bilinear resampling; NaN outside the footprint (``variance`` None if not given).
    mask : 2-D integer array or None
        OR of the contributing reference mask pixels; :data:`OUTSIDE` outside the footprint.
    footprint : 2-D bool array
        Science pixels covered by the reference.
    max_map_error : float
        See :attr:`PixelMap.max_error`.
    """

    image: np.ndarray
    variance: np.ndarray | None
    mask: np.ndarray | None
    footprint: np.ndarray
    max_map_error: float


def _exact_map(wcs_sci, wcs_ref, x, y):
    """Exact reference pixels of science pixels (x, y) through the sky."""
    ra, dec = wcs_sci.all_pix2world(x, y, 0)
    rx, ry = wcs_ref.all_world2pix(ra, dec, 0, tolerance=1e-8, maxiter=50, quiet=True)
    return rx, ry


def _coarse_nodes(n, step):
    nodes = np.arange(0, n - 1, step, dtype=float)
    return np.append(nodes, n - 1.0)


def pixel_map(wcs_sci, wcs_ref, shape, *, step: int = 64) -> PixelMap:
    """Interpolated science -> reference pixel mapping over a science grid of ``shape``.

    Parameters
    ----------
    wcs_sci, wcs_ref : astropy.wcs.WCS
        Celestial WCSs (SIP distortion allowed) of the science and reference images.
    shape : (int, int)
        Science image shape.
    step : int
        Spacing of the exact evaluations, pixels (smaller is more accurate; 64 gives errors
        of ~1e-5 px for ZTF-like distortion).

    Returns
    -------
    PixelMap
    """
    ny, nx = shape
    gy, gx = _coarse_nodes(ny, step), _coarse_nodes(nx, step)
    cx, cy = np.meshgrid(gx, gy)
    rx, ry = _exact_map(wcs_sci, wcs_ref, cx.ravel(), cy.ravel())
    kx, ky = min(3, len(gx) - 1), min(3, len(gy) - 1)
    sx = RectBivariateSpline(gy, gx, rx.reshape(cy.shape), kx=ky, ky=kx)
    sy = RectBivariateSpline(gy, gx, ry.reshape(cy.shape), kx=ky, ky=kx)
    mx, my = np.meshgrid((gx[:-1] + gx[1:]) / 2, (gy[:-1] + gy[1:]) / 2)
    ex, ey = _exact_map(wcs_sci, wcs_ref, mx.ravel(), my.ravel())
    err = np.hypot(sx.ev(my.ravel(), mx.ravel()) - ex, sy.ev(my.ravel(), mx.ravel()) - ey)
    yy, xx = np.arange(ny, dtype=float), np.arange(nx, dtype=float)
    return PixelMap(x=sx(yy, xx), y=sy(yy, xx), max_error=float(err.max()))


@numba.njit(cache=True)
def _bilinear(src, var, msk, mx, my, out, out_var, out_msk, foot, has_var, has_msk):
    """Bilinear resampling of image and variance, OR of touched mask pixels (in place)."""
    ny, nx = src.shape
    for j in range(mx.shape[0]):
        for i in range(mx.shape[1]):
            x = mx[j, i]
            y = my[j, i]
            if not (-0.5 <= x <= nx - 0.5 and -0.5 <= y <= ny - 0.5):
                foot[j, i] = False
                out[j, i] = np.nan
                if has_var:
                    out_var[j, i] = np.nan
                if has_msk:
                    out_msk[j, i] = -1
                continue
            foot[j, i] = True
            x = min(max(x, 0.0), nx - 1.0)
            y = min(max(y, 0.0), ny - 1.0)
            x0 = min(int(x), nx - 2) if nx > 1 else 0
            y0 = min(int(y), ny - 2) if ny > 1 else 0
            fx = x - x0
            fy = y - y0
            w00 = (1 - fx) * (1 - fy)
            w01 = fx * (1 - fy)
            w10 = (1 - fx) * fy
            w11 = fx * fy
            out[j, i] = (w00 * src[y0, x0] + w01 * src[y0, x0 + 1]
                         + w10 * src[y0 + 1, x0] + w11 * src[y0 + 1, x0 + 1])
            if has_var:
                out_var[j, i] = (w00 * var[y0, x0] + w01 * var[y0, x0 + 1]
                                 + w10 * var[y0 + 1, x0] + w11 * var[y0 + 1, x0 + 1])
            if has_msk:
                m = 0
                if w00 > 0:
                    m |= msk[y0, x0]
                if w01 > 0:
                    m |= msk[y0, x0 + 1]
                if w10 > 0:
                    m |= msk[y0 + 1, x0]
                if w11 > 0:
                    m |= msk[y0 + 1, x0 + 1]
                out_msk[j, i] = m


def resample_to_grid(ref, wcs_ref, wcs_sci, shape_sci, *, variance=None, mask=None,
                     step: int = 64) -> Resampled:
    """Bilinear resampling of a reference (and its variance and mask) onto a science grid.

    Parameters
    ----------
    ref : 2-D array
        Reference image.
    wcs_ref, wcs_sci : astropy.wcs.WCS
        WCSs of the reference and of the science image.
    shape_sci : (int, int)
        Science image shape.
    variance : 2-D array, optional
        Reference variance map (same shape as ``ref``).
    mask : 2-D integer or bool array, optional
        Reference bit mask (bool is treated as one bit).
    step : int
        Coarse-grid spacing of the exact WCS evaluations (:func:`pixel_map`).

    Returns
    -------
    Resampled
    """
    src = np.ascontiguousarray(ref, dtype=np.float32)
    if src.ndim != 2:
        raise ValueError(f"ref must be 2-D, got shape {src.shape}")
    for name, a in (("variance", variance), ("mask", mask)):
        if a is not None and np.shape(a) != src.shape:
            raise ValueError(f"{name} must have the shape of ref {src.shape}, got {np.shape(a)}")
    pm = pixel_map(wcs_sci, wcs_ref, shape_sci, step=step)
    var = np.ascontiguousarray(variance if variance is not None else np.zeros((1, 1)), np.float32)
    msk_dtype = np.int32 if mask is None or np.asarray(mask).dtype == bool else np.asarray(mask).dtype
    msk = np.ascontiguousarray(mask if mask is not None else np.zeros((1, 1)), msk_dtype)
    out = np.empty(shape_sci, np.float32)
    out_var = np.empty(shape_sci if variance is not None else (1, 1), np.float32)
    out_msk = np.empty(shape_sci if mask is not None else (1, 1), msk.dtype)
    foot = np.empty(shape_sci, bool)
    _bilinear(src, var, msk, pm.x, pm.y, out, out_var, out_msk, foot, variance is not None,
              mask is not None)
    if mask is not None and np.asarray(mask).dtype == bool:
        out_msk = out_msk != 0
    return Resampled(image=out, variance=out_var if variance is not None else None,
                     mask=out_msk if mask is not None else None, footprint=foot,
                     max_map_error=pm.max_error)
