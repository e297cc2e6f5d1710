"""Calibration kernels: master bias, high-frequency flat, bad-pixel mask.

Pure functions of arrays (numpy ``[frame, y, x]`` stacks of prepared quadrants, DN).

Mask bits (uint16), following the ZTF ``mskimg`` definitions (``ztf-facts.md`` §5) where one
fits, and using two bits ZTF leaves reserved for defects it has no bit for:

=====  =======  ===============================================================
bit    value    meaning
=====  =======  ===============================================================
2      4        low responsivity (hi-freq flat below ``1 - low_threshold``)
3      8        high responsivity (hi-freq flat above ``1 + high_threshold``)
4      16       noisy (bias-stack scatter far above the quadrant's typical)
6      64       hot: master bias far above its neighbourhood (zsds; ZTF reserved)
9      512      dead (hi-freq flat below ``dead_threshold``)
13     8192     bad column: pixel in a column with a long run of defects (zsds)
=====  =======  ===============================================================
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage
from scipy.interpolate import RectBivariateSpline

__all__ = ["StackResult", "combine_bias", "combine_flat", "large_scale", "bad_pixel_mask",
           "robust_sigma", "MASK_LOW_RESP", "MASK_HIGH_RESP", "MASK_NOISY", "MASK_HOT",
           "MASK_DEAD", "MASK_BADCOL", "MASK_BITS"]

MASK_LOW_RESP = np.uint16(1 << 2)
MASK_HIGH_RESP = np.uint16(1 << 3)
MASK_NOISY = np.uint16(1 << 4)
MASK_HOT = np.uint16(1 << 6)
MASK_DEAD = np.uint16(1 << 9)
MASK_BADCOL = np.uint16(1 << 13)
#: Name -> value of every bit this module sets.
MASK_BITS = {"LOWRESP": 4, "HIGHRESP": 8, "NOISY": 16, "HOT": 64, "DEAD": 512,
             "BADCOL": 8192}

_MAD = 1.482602218505602
#: Fewest blocks per axis in :func:`large_scale`.
MIN_BLOCKS = 8


class StackResult(NamedTuple):
    """A combined calibration image.

    Attributes
    ----------
    image : ndarray of float32
        The combined image (DN for a bias; dimensionless for a flat).
    unc : ndarray of float32
        1-sigma uncertainty of ``image`` per pixel (same units).
    std : ndarray of float32
        Scatter of the kept frame values per pixel (one frame's noise).
    nused : ndarray of int16
        Frames kept per pixel.
    """

    image: np.ndarray
    unc: np.ndarray
    std: np.ndarray
    nused: np.ndarray


def robust_sigma(values: np.ndarray) -> float:
    """Gaussian-equivalent RMS from the median absolute deviation (finite values only)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    return _MAD * float(np.median(np.abs(v - np.median(v))))


def _clipped_stack(stack: np.ndarray, sigma: np.ndarray | float, nsigma: float,
                   iterations: int = 2) -> StackResult:
    """Per-pixel outlier-rejected mean along axis 0, clipping about the median first."""
    stack = np.asarray(stack, dtype=np.float32)
    n = stack.shape[0]
    center = np.median(stack, axis=0)
    sigma = np.asarray(sigma, dtype=np.float32)
    keep = np.ones(stack.shape, bool)
    for _ in range(iterations):
        keep = np.abs(stack - center) <= nsigma * sigma
        nk = keep.sum(axis=0)
        total = np.where(keep, stack, 0).sum(axis=0, dtype=np.float64)
        center = np.where(nk > 0, total / np.maximum(nk, 1), center).astype(np.float32)
    nk = keep.sum(axis=0)
    dev2 = np.where(keep, (stack - center) ** 2, 0).sum(axis=0, dtype=np.float64)
    std = np.sqrt(dev2 / np.maximum(nk - 1, 1)).astype(np.float32)
    if n == 1:
        std = np.broadcast_to(sigma, center.shape).astype(np.float32)
    unc = (std / np.sqrt(np.maximum(nk, 1))).astype(np.float32)
    return StackResult(center.astype(np.float32), unc, std, nk.astype(np.int16))


def _stack_noise(stack: np.ndarray) -> float:
    """Robust single-frame pixel noise of a stack, from deviations about the per-pixel median.

    The median of ``n`` values scatters by ~1.25 sigma/sqrt(n); the deviations are corrected
    for it.
    """
    n = stack.shape[0]
    dev = stack - np.median(stack, axis=0)
    sig = robust_sigma(dev[:, ::3, ::3]) if dev[:, ::3, ::3].size > 1000 else robust_sigma(dev)
    if n > 1:  # Var(x_i - median) = sigma^2 (1 - (2 - pi/2)/n) for large n; 1 - 1/n for n=2
        sig /= np.sqrt(1.0 - (1.0 if n == 2 else 2.0 - np.pi / 2) / n)
    return sig


def combine_bias(frames: np.ndarray, *, nsigma: float = 3.0) -> StackResult:
    """Master bias: outlier-rejected mean of overscan-subtracted bias frames.

    Parameters
    ----------
    frames : ndarray, shape (n, ny, nx)
        Prepared bias quadrants, DN (overscan subtracted).
    nsigma : float
        Rejection threshold about the per-pixel median, in units of the larger of the
        stack's robust frame noise and the pixel's own robust scatter (so noisy pixels are
        not over-rejected).

    Returns
    -------
    StackResult
        ``image`` the master bias (DN), ``unc`` its uncertainty (DN), ``std`` the per-pixel
        single-frame scatter (DN).
    """
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must be a (n, ny, nx) stack, not shape {frames.shape}")
    sigma = _stack_noise(frames) if frames.shape[0] > 1 else 1.0
    if frames.shape[0] >= 5:
        own = _MAD * np.median(np.abs(frames - np.median(frames, axis=0)), axis=0)
        sigma = np.maximum(sigma, own)
    return _clipped_stack(frames, sigma, nsigma)


def large_scale(image: np.ndarray, mask: np.ndarray | None = None, *, block: int = 128
                ) -> np.ndarray:
    """Large-scale structure of an image: block medians interpolated by a bicubic spline.

    The spline is fitted to the block medians (at the block centres) with a smoothing
    condition set by their block-to-block noise, and continued to the image edges.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
    mask : ndarray of bool, optional
        Pixels to ignore.
    block : int
        Block size, pixels; reduced so that there are at least :data:`MIN_BLOCKS` blocks
        per axis (so that the smoothing spline has more nodes than coefficients).

    Returns
    -------
    ndarray of float32
        Same shape; smooth on scales of ``block``.
    """
    ny, nx = image.shape
    by = max(8, min(block, ny // MIN_BLOCKS))
    bx = max(8, min(block, nx // MIN_BLOCKS))
    nby, nbx = max(1, ny // by), max(1, nx // bx)
    data = np.where(mask, np.nan, image) if mask is not None else image.astype(np.float64)
    ey = np.linspace(0, ny, nby + 1).astype(int)
    ex = np.linspace(0, nx, nbx + 1).astype(int)
    grid = np.empty((nby, nbx))
    for i in range(nby):
        for j in range(nbx):
            grid[i, j] = np.nanmedian(data[ey[i]:ey[i + 1], ex[j]:ex[j + 1]])
    if np.isnan(grid).any():
        grid = np.where(np.isnan(grid), np.nanmedian(grid), grid)
    cy = 0.5 * (ey[:-1] + ey[1:]) - 0.5
    cx = 0.5 * (ex[:-1] + ex[1:]) - 0.5
    if nby < 2 or nbx < 2:
        return np.full(image.shape, float(np.median(grid)), np.float32)
    spline = RectBivariateSpline(cy, cx, grid, kx=min(3, nby - 1), ky=min(3, nbx - 1),
                                 s=grid.size * _grid_noise(grid) ** 2,
                                 bbox=[-0.5, ny - 0.5, -0.5, nx - 0.5])
    return spline(np.arange(ny), np.arange(nx)).astype(np.float32)


def _grid_noise(grid: np.ndarray) -> float:
    """Robust RMS of the block-to-block noise of a grid: residuals from the mean of the
    8 neighbours (interior nodes), corrected by sqrt(1 + 1/8)."""
    if grid.shape[0] < 3 or grid.shape[1] < 3:
        return 0.0
    kernel = np.ones((3, 3)) / 8.0
    kernel[1, 1] = 0.0
    resid = (grid - ndimage.convolve(grid, kernel, mode="nearest"))[1:-1, 1:-1]
    return robust_sigma(resid) / np.sqrt(1.0 + 1.0 / 8.0)


def combine_flat(frames: np.ndarray, *, nsigma: float = 3.0, block: int = 128,
                 iterations: int = 2) -> StackResult:
    """High-frequency flat from bias-subtracted, linearised dome flats.

    Each frame is normalised by its median; the frames are combined with an
    outlier-rejected mean; the large-scale structure (the dome lamp does not light the
    camera as the sky does) is divided out with :func:`large_scale` (masking outliers), and
    the result is normalised to a median of 1.

    Parameters
    ----------
    frames : ndarray, shape (n, ny, nx)
        Bias-subtracted, linearised flat quadrants, DN.
    nsigma : float
        Rejection threshold in units of the robust relative frame noise.
    block : int
        Scale of the large-scale structure removed, pixels.
    iterations : int
        Times the large-scale fit is redone with outlying pixels masked.

    Returns
    -------
    StackResult
        ``image`` the hi-freq flat (median 1), ``unc`` its uncertainty, ``std`` the
        per-pixel relative scatter of one frame.
    """
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must be a (n, ny, nx) stack, not shape {frames.shape}")
    levels = np.median(frames.reshape(frames.shape[0], -1), axis=1)
    if np.any(levels <= 0):
        raise ValueError(f"flat frame medians must be positive, got {levels.tolist()}")
    norm = frames / levels[:, None, None].astype(np.float32)
    sigma = _stack_noise(norm) if norm.shape[0] > 1 else 1.0
    comb = _clipped_stack(norm, sigma, nsigma)
    mask = np.zeros(comb.image.shape, bool)
    for _ in range(iterations + 1):
        smooth = large_scale(comb.image, mask, block=block)
        hf = comb.image / smooth
        resid = hf - np.median(hf[~mask])
        mask = np.abs(resid) > max(5 * robust_sigma(resid), 0.02)
    scale = np.median(hf[~mask])
    hf = hf / scale
    factor = smooth * scale
    return StackResult(hf.astype(np.float32), (comb.unc / factor).astype(np.float32),
                       (comb.std / factor).astype(np.float32), comb.nused)


def _local_residual(image: np.ndarray, size: int = 5) -> np.ndarray:
    return image - ndimage.median_filter(image, size=size, mode="nearest")


def bad_pixel_mask(master_bias: np.ndarray, bias_noise: np.ndarray, flat: np.ndarray, *,
                   hot_nsigma: float = 8.0, hot_min_adu: float = 5.0,
                   noisy_factor: float = 4.0, resp_nsigma: float = 6.0,
                   resp_min: float = 0.05, dead_threshold: float = 0.3,
                   badcol_min_run: int = 20) -> np.ndarray:
    """Bad-pixel mask from a master bias and a high-frequency flat.

    Parameters
    ----------
    master_bias : ndarray, shape (ny, nx)
        Master bias, DN.
    bias_noise : ndarray, shape (ny, nx)
        Per-pixel noise of the bias stack (its std or its uncertainty: only the ratio to
        its median is used).
    flat : ndarray, shape (ny, nx)
        High-frequency flat, median 1.
    hot_nsigma, hot_min_adu : float
        Hot: master bias above its 5x5 running median by more than
        ``max(hot_nsigma * sigma, hot_min_adu)`` (sigma: robust RMS of that residual).
    noisy_factor : float
        Noisy: ``bias_noise > noisy_factor * median(bias_noise)``.
    resp_nsigma, resp_min : float
        Low / high responsivity: flat below / above ``1 -/+ max(resp_nsigma * sigma,
        resp_min)`` (sigma: robust RMS of the flat).
    dead_threshold : float
        Dead: flat below this.
    badcol_min_run : int
        A column with at least this many flagged pixels is a bad column: its flagged pixels
        get the bad-column bit, and gaps of up to 3 pixels between them are filled.

    Returns
    -------
    ndarray of uint16
        Bits as in the module docstring (0 = good).
    """
    if not (master_bias.shape == bias_noise.shape == flat.shape):
        raise ValueError(f"shapes differ: bias {master_bias.shape}, noise {bias_noise.shape},"
                         f" flat {flat.shape}")
    mask = np.zeros(flat.shape, np.uint16)
    res = _local_residual(np.asarray(master_bias, np.float32))
    hot_cut = max(hot_nsigma * robust_sigma(res[::2, ::2]), hot_min_adu)
    mask[res > hot_cut] |= MASK_HOT
    mask[bias_noise > noisy_factor * np.median(bias_noise)] |= MASK_NOISY
    f = np.nan_to_num(np.asarray(flat, np.float32), nan=0.0)
    cut = max(resp_nsigma * robust_sigma(f[::2, ::2]), resp_min)
    mask[(f < 1 - cut) & (f >= dead_threshold)] |= MASK_LOW_RESP
    mask[f < dead_threshold] |= MASK_DEAD
    mask[f > 1 + cut] |= MASK_HIGH_RESP
    return _bad_columns(mask, badcol_min_run)


def _bad_columns(mask: np.ndarray, min_run: int) -> np.ndarray:
    bad = mask != 0
    cols = np.flatnonzero(bad.sum(axis=0) >= min_run)
    if cols.size:
        closed = ndimage.binary_closing(bad[:, cols], structure=np.ones((5, 1), bool))
        closed |= bad[:, cols]
        sub = mask[:, cols]
        sub[closed] |= MASK_BADCOL
        mask[:, cols] = sub
    return mask
