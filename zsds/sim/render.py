"""Rendering of one readout quadrant: sources, sky, detector effects and readout.

The point-spread function is an elliptical Moffat profile sampled at pixel centres and
truncated at an elliptical radius of :data:`PSF_RADIUS` pixels (renormalised), i.e. the
*effective* (pixel-convolved) PSF. Its core (a box of half-width :data:`CORE_HALF`) is
evaluated for each source at its sub-pixel position; the faint wings beyond the box are added
by one FFT convolution of a nearest-pixel flux image with the wing of the PSF at the quadrant
centre. Flux is conserved to better than 0.1%.

Conventions: numpy ``[y, x]``, 0-based pixel centres at integers, electrons until readout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft

from ..camera import delinearize

__all__ = ["SourceList", "ReadoutParams", "moffat_alpha", "render_sources", "read_out",
           "psf_stamp", "add_cosmic_rays", "bleed_columns", "PSF_RADIUS", "CORE_HALF"]

#: Elliptical truncation radius of the PSF, pixels.
PSF_RADIUS = 30.0
#: Half-width of the per-source core stamp, pixels.
CORE_HALF = 6


@dataclass
class SourceList:
    """Sources to render on one quadrant (all arrays of equal length).

    Attributes
    ----------
    x, y : float arrays
        0-based pixel positions.
    flux_e : float array
        Total flux, electrons, before the detector response.
    fwhm : float array
        FWHM of the profile (geometric mean of the axes), pixels.
    beta : float array
        Moffat index.
    ellip : float array
        Ellipticity ``1 - b/a``.
    theta : float array
        Position angle of the major axis, radians from +x towards +y.
    extended : bool array
        True for galaxies (rendered in larger stamps without the separate wing term).
    """

    x: np.ndarray
    y: np.ndarray
    flux_e: np.ndarray
    fwhm: np.ndarray
    beta: np.ndarray
    ellip: np.ndarray
    theta: np.ndarray
    extended: np.ndarray

    def __len__(self):
        return len(self.x)

    def subset(self, mask) -> "SourceList":
        return SourceList(*(getattr(self, f)[mask] for f in self.__dataclass_fields__))


@dataclass(frozen=True)
class ReadoutParams:
    """Detector and readout values of one quadrant in one exposure.

    Attributes
    ----------
    gain : float
        e-/ADU.
    read_noise_e : float
        e- RMS.
    exptime : float
        Seconds (dark current integrates over it).
    saturate_adu : float
        Raw ADU (bias included) at which pixels saturate.
    nl_a, nl_b : float
        Non-linearity coefficients (see :func:`zsds.camera.linearize`).
    qid : int
        Quadrant 1..4 (sets the readout direction of the overscan).
    n_overscan : int
        Overscan columns.
    cti_trail : float
        Fraction of the last data column's signal left in the first overscan column read.
    """

    gain: float
    read_noise_e: float
    exptime: float
    saturate_adu: float
    nl_a: float
    nl_b: float
    qid: int
    n_overscan: int = 30
    cti_trail: float = 2e-3


def moffat_alpha(fwhm, beta):
    """Moffat scale ``alpha`` for a FWHM (same units)."""
    return np.asarray(fwhm) / (2.0 * np.sqrt(2.0 ** (1.0 / np.asarray(beta)) - 1.0))


def _quadform(dx, dy, alpha, ellip, theta):
    """Elliptical radius squared over alpha squared (area-preserving axes)."""
    q = 1.0 - ellip
    c, s = np.cos(theta), np.sin(theta)
    u = dx * c + dy * s
    v = -dx * s + dy * c
    return (u * u * q + v * v / q) / (alpha * alpha)


def _moffat_norm(alpha, beta, radius):
    """Inverse integral of the truncated Moffat ``(1+r^2/a^2)^-b`` inside ``radius`` (area-preserving)."""
    inner = 1.0 - (1.0 + (radius / alpha) ** 2) ** (1.0 - beta)
    return (beta - 1.0) / (np.pi * alpha**2 * inner)


def psf_stamp(fwhm, beta, ellip, theta, half: int, dx: float = 0.0, dy: float = 0.0):
    """The effective PSF on a ``(2 half + 1)^2`` grid, centred at offset (dx, dy) pixels.

    Values are fractions of the total flux per pixel (the full truncated PSF sums to 1).
    """
    alpha = moffat_alpha(fwhm, beta)
    g = np.arange(-half, half + 1, dtype=np.float64)
    q2 = _quadform(g[None, :] - dx, g[:, None] - dy, alpha, ellip, theta)
    prof = (1.0 + q2) ** (-beta) * (q2 * alpha**2 <= PSF_RADIUS**2)
    return prof * _moffat_norm(alpha, beta, PSF_RADIUS)


def _splat(image, xs, ys, values):
    """Add values at integer pixel indices (bounds-checked) to a float image."""
    ny, nx = image.shape
    xs, ys, values = (np.concatenate(v) if isinstance(v, list) else v for v in (xs, ys, values))
    ok = (xs >= 0) & (xs < nx) & (ys >= 0) & (ys < ny)
    if not ok.any():
        return
    idx = ys[ok] * nx + xs[ok]
    lo, hi = int(idx.min()), int(idx.max()) + 1
    flat = image.reshape(-1)
    flat[lo:hi] += np.bincount(idx - lo, weights=values[ok], minlength=hi - lo).astype(image.dtype)


def _render_stamps(image, src: SourceList, half: int, truncate: bool, batch: int = 4000):
    g = np.arange(-half, half + 1, dtype=np.float32)
    acc_x, acc_y, acc_v = [], [], []
    for start in range(0, len(src), batch):
        s = src.subset(slice(start, start + batch))
        xi = np.rint(s.x).astype(np.int64)
        yi = np.rint(s.y).astype(np.int64)
        dx = (g[None, None, :] - (s.x - xi)[:, None, None].astype(np.float32))
        dy = (g[None, :, None] - (s.y - yi)[:, None, None].astype(np.float32))
        alpha = moffat_alpha(s.fwhm, s.beta).astype(np.float32)[:, None, None]
        q2 = _quadform(dx, dy, alpha, s.ellip.astype(np.float32)[:, None, None],
                       s.theta.astype(np.float32)[:, None, None])
        prof = np.power(1.0 + q2, -s.beta.astype(np.float32)[:, None, None])
        if truncate:
            norm = _moffat_norm(alpha[:, 0, 0], s.beta, PSF_RADIUS)
            prof *= (s.flux_e * norm).astype(np.float32)[:, None, None]
        else:
            prof *= (s.flux_e / prof.sum(axis=(1, 2))).astype(np.float32)[:, None, None]
        xs = (xi[:, None, None] + g.astype(np.int64)[None, None, :]).repeat(len(g), axis=1)
        ys = (yi[:, None, None] + g.astype(np.int64)[None, :, None]).repeat(len(g), axis=2)
        acc_x.append(xs.ravel())
        acc_y.append(ys.ravel())
        acc_v.append(prof.ravel())
    if acc_x:
        _splat(image, acc_x, acc_y, acc_v)


def _wing_kernel(fwhm, beta, ellip, theta):
    half = int(PSF_RADIUS)
    k = psf_stamp(fwhm, beta, ellip, theta, half)
    c = half
    k[c - CORE_HALF: c + CORE_HALF + 1, c - CORE_HALF: c + CORE_HALF + 1] = 0.0
    return k


def _add_wings(image, src: SourceList, centre_psf):
    kernel = _wing_kernel(*centre_psf)
    if kernel.sum() <= 0 or len(src) == 0:
        return
    flux = np.zeros(image.shape, np.float64)
    _splat(flux, np.rint(src.x).astype(np.int64), np.rint(src.y).astype(np.int64), src.flux_e)
    half = kernel.shape[0] // 2
    shape = [scipy.fft.next_fast_len(n + 2 * half, real=True) for n in image.shape]
    conv = scipy.fft.irfft2(scipy.fft.rfft2(flux, shape) * scipy.fft.rfft2(kernel, shape), shape)
    image += conv[half: half + image.shape[0], half: half + image.shape[1]].astype(image.dtype)


def render_sources(image, sources: SourceList, centre_psf: tuple[float, float, float, float]):
    """Add sources (electrons) to an image in place.

    Parameters
    ----------
    image : float32 array
        Image in electrons, numpy ``[y, x]``.
    sources : SourceList
        Point sources (``extended`` False) get the effective PSF (core + wings); galaxies a
        wider stamp normalised to their flux.
    centre_psf : tuple
        (fwhm, beta, ellip, theta) of the PSF at the quadrant centre, for the wings.
    """
    points = sources.subset(~sources.extended)
    _render_stamps(image, points, CORE_HALF, truncate=True)
    _add_wings(image, points, centre_psf)
    gals = sources.subset(sources.extended)
    if len(gals):
        halfs = np.clip(np.ceil(2.5 * gals.fwhm), CORE_HALF, 40).astype(int)
        for half in np.unique(halfs):
            _render_stamps(image, gals.subset(halfs == half), int(half), truncate=False)


def add_cosmic_rays(image, rng, rate_per_cm2_s: float, duration_s: float,
                    pixel_cm: float = 15e-4, deposit: bool = True):
    """Add cosmic-ray tracks (electrons) in place; returns their (x0, y0, length, angle, e-/px).

    Tracks are sharp (not convolved with the PSF): 1 to ~15 pixels long. With ``deposit``
    False the tracks are drawn (the generator advances the same way) but not added, and none
    is returned: a twin simulation without cosmic rays keeps every other random number.
    """
    ny, nx = image.shape
    area = ny * nx * pixel_cm**2
    n = rng.poisson(rate_per_cm2_s * area * duration_s)
    x0 = rng.uniform(0, nx, n)
    y0 = rng.uniform(0, ny, n)
    length = 1.0 + rng.exponential(3.0, n)
    angle = rng.uniform(0, np.pi, n)
    dep = rng.lognormal(np.log(1500.0), 0.6, n)
    steps = [np.arange(0.0, length[i], 0.5) for i in range(n)]
    if not deposit:
        return np.zeros((0, 5))
    if n:
        idx = np.repeat(np.arange(n), [t.size for t in steps])
        t = np.concatenate(steps)
        xs = np.rint(x0[idx] + t * np.cos(angle[idx])).astype(np.int64)
        ys = np.rint(y0[idx] + t * np.sin(angle[idx])).astype(np.int64)
        _splat(image, xs, ys, dep[idx] * 0.5)
    return np.column_stack([x0, y0, length, angle, dep])


def bleed_columns(image, full_well_e: float):
    """Move charge above the full well along columns (both directions), conserving it.

    Returns the boolean map of pixels at the full well (saturated or bled into).
    """
    over = image > full_well_e
    cols = np.flatnonzero(over.any(axis=0))
    ny = image.shape[0]
    for c in cols:
        col = image[:, c].astype(np.float64)
        excess = np.clip(col - full_well_e, 0, None)
        col = np.minimum(col, full_well_e)
        rows = np.flatnonzero(excess > 0)
        for r in rows:
            q = excess[r] / 2.0
            for step in (-1, 1):
                k = r + step
                left = q
                while left > 0 and 0 <= k < ny:
                    room = full_well_e - col[k]
                    take = min(room, left)
                    col[k] += take
                    left -= take
                    k += step
        image[:, c] = col
    return image >= full_well_e * 0.999


def read_out(electrons, params: ReadoutParams, bias_rows, bias_pattern, rng):
    """Convert an electron image to raw ADU with bias, non-linearity, noise and overscan.

    Parameters
    ----------
    electrons : float32 array
        Charge per pixel (noise already included), e-.
    params : ReadoutParams
    bias_rows : float array, shape (ny,)
        Raw bias level per row (floating bias), ADU; the overscan follows it.
    bias_pattern : float32 array
        Fixed 2-D bias structure, ADU.
    rng : numpy.random.Generator

    Returns
    -------
    data, overscan : uint16 arrays
        Image (ny, nx) and overscan (ny, n_overscan) as read out.
    """
    rn_adu = params.read_noise_e / params.gain
    dn = electrons / np.float32(params.gain)
    raw = delinearize(dn, params.nl_a, params.nl_b).astype(np.float32)
    raw += bias_pattern
    raw += np.asarray(bias_rows, np.float32)[:, None]
    raw += rng.standard_normal(raw.shape, dtype=np.float32) * np.float32(rn_adu)
    ny = raw.shape[0]
    over = (np.asarray(bias_rows, np.float32)[:, None]
            + rng.standard_normal((ny, params.n_overscan), dtype=np.float32) * np.float32(rn_adu))
    first_read_left = params.qid in (1, 4)
    last_col = raw[:, -1] if first_read_left else raw[:, 0]
    trail = (last_col - np.asarray(bias_rows, np.float32)) * np.float32(params.cti_trail)
    first = 0 if first_read_left else params.n_overscan - 1
    second = 1 if first_read_left else params.n_overscan - 2
    over[:, first] += trail
    over[:, second] += trail * np.float32(0.2)
    data = np.clip(np.rint(raw), 0, 65535).astype(np.uint16)
    overscan = np.clip(np.rint(over), 0, 65535).astype(np.uint16)
    return data, overscan
